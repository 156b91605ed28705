#!/usr/bin/env bash
# The base image of the local node's builds, made from Debian's packages (no registry is
# reachable here): a Debian bookworm root file system with python3, venv and pip (what
# the public python:3.x-slim-bookworm image gives our Dockerfiles), as a tarball under
# $KUBELLAMA_CACHE/node-images/. BuildKit turns it into an image (FROM scratch + the
# tarball; e2e/node/kubellama_node.py). Cached by the package list: a no-op when present.
#   usage: e2e/node/base.sh [--print-path]
set -euo pipefail

cache="${KUBELLAMA_CACHE:-$HOME/.cache/kubellama}"
SUITE=bookworm
PACKAGES=python3,python3-venv,python3-pip,python-is-python3,ca-certificates
MIRROR=http://deb.debian.org/debian
BUILD_REV=1
key="$SUITE-$(echo "$BUILD_REV $SUITE $PACKAGES $MIRROR" | sha256sum | cut -c1-12)"
dest="$cache/node-images/base-$key.tar"

if [[ "${1:-}" == "--print-path" ]]; then
    echo "$dest"
    exit 0
fi
exec 3>&1 1>&2
if [[ -s "$dest" ]]; then
    echo "node base image $key: cached in $dest"
    echo "$dest" >&3
    exit 0
fi
if ! command -v mmdebstrap >/dev/null 2>&1; then
    if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) == 0 ]]; then
        echo "==> installing mmdebstrap (Debian package) to make the node's base image"
        apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q mmdebstrap >/dev/null
    else
        echo "node base image: mmdebstrap is missing (apt-get install mmdebstrap, as root)" >&2
        exit 1
    fi
fi
mkdir -p "$(dirname "$dest")"
echo "node base image $key: Debian $SUITE + $PACKAGES from $MIRROR (once per machine, about a minute)"
tmp="${dest%.tar}.tmp.tar"
rm -f "$tmp"
mmdebstrap --variant=minbase --include="$PACKAGES" --aptopt='Acquire::Retries "3"' \
    --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
    "$SUITE" "$tmp" \
    "deb $MIRROR $SUITE main" "deb $MIRROR $SUITE-updates main" \
    "deb ${MIRROR%/debian}/debian-security $SUITE-security main"
mv -f "$tmp" "$dest"
echo "node base image $key: done ($(du -h "$dest" | cut -f1))"
echo "$dest" >&3
