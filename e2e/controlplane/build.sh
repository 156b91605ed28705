#!/usr/bin/env bash
# Build the test control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, etcd, kwok) from the Go module proxy at the versions pinned in
# go.mod/go.sum, into $KUBELLAMA_CACHE/controlplane/<version-key>/.
#
# Idempotent: when every binary of this version key is already there it exits
# at once. Progress goes to stderr; stdout gets only the folder.
#   usage: e2e/controlplane/build.sh [--print-dir]   (--print-dir: just say where)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${KUBELLAMA_CACHE:-$HOME/.cache/kubellama}"
GOBUILD_ARG="${1:-}"
source "$here/../lib/gobuild.sh"

# The key changes whenever a pinned version (go.mod/go.sum) changes; bump
# BUILD_REV when the way the binaries are built changes.
BUILD_REV=1
K8S_VERSION="$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$here/go.mod")"
key="$K8S_VERSION-$( (echo "$BUILD_REV"; cat "$here/go.mod" "$here/go.sum" "$here/cmd/etcd/main.go") | sha256sum | cut -c1-12)"
gobuild_begin "control plane" "$cache/controlplane/$key" kube-apiserver kube-controller-manager kube-scheduler etcd kwok

work="$cache/controlplane/.tmp-$key"
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

echo "control plane $key: building ${BINARIES[*]} from the Go module proxy (once per machine and pinned version; about 10 minutes on 2 idle cores)"
cd "$here"
# -mod=readonly: build exactly what go.mod/go.sum pin, never re-resolve.
export GOFLAGS="-mod=readonly -trimpath" CGO_ENABLED=0
echo "[0/${#BINARIES[@]}] downloading modules..."
if ! go mod download; then
    echo "control plane: could not download the pinned modules (is the Go module proxy reachable? go env GOPROXY = $(go env GOPROXY))" >&2
    exit 1
fi

version_ldflags="$(k8s_ldflags "$K8S_VERSION")"

i=0
for b in "${BINARIES[@]}"; do
    i=$((i + 1))
    case "$b" in
        etcd) pkg=./cmd/etcd ;;
        kwok) pkg=sigs.k8s.io/kwok/cmd/kwok ;;
        *) pkg="k8s.io/kubernetes/cmd/$b" ;;
    esac
    echo "[$i/${#BINARIES[@]}] building $b ($pkg) ... elapsed $(elapsed)"
    # `go build -v` names each package as it compiles it: report every 50.
    if ! nice -n 10 go build -v -ldflags "$version_ldflags" -o "$work/$b" "$pkg" 2>&1 | gobuild_progress "$b"; then
        echo "control plane: building $b failed (see above)" >&2
        exit 1
    fi
done

gobuild_done
