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
BINARIES=(kube-apiserver kube-controller-manager kube-scheduler etcd kwok)

# The key changes whenever a pinned version (go.mod/go.sum) changes; bump
# BUILD_REV when the way the binaries are built changes.
BUILD_REV=1
K8S_VERSION="$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$here/go.mod")"
key="$K8S_VERSION-$( (echo "$BUILD_REV"; cat "$here/go.mod" "$here/go.sum" "$here/cmd/etcd/main.go") | sha256sum | cut -c1-12)"
dest="$cache/controlplane/$key"

if [[ "${1:-}" == "--print-dir" ]]; then
    echo "$dest"
    exit 0
fi

# Progress to stderr, the result (the folder) to the real stdout (fd 3).
exec 3>&1 1>&2

complete() {
    local b
    for b in "${BINARIES[@]}"; do [[ -x "$dest/$b" ]] || return 1; done
}

if complete; then
    echo "control plane $key: cached in $dest"
    echo "$dest" >&3
    exit 0
fi

if ! command -v go >/dev/null 2>&1; then
    echo "control plane: 'go' is not installed; install Go >= 1.26 (or set KUBEBUILDER_ASSETS to a folder with the binaries) to run the control-plane tests" >&2
    exit 1
fi

mkdir -p "$cache/controlplane"
# One build at a time per machine (parallel `make test` runs share the cache).
exec 9>"$cache/controlplane/.build.lock"
if ! flock -n 9; then
    echo "control plane: another build holds $cache/controlplane/.build.lock; waiting for it..."
    flock 9
fi
if complete; then
    echo "control plane $key: built by another process in $dest"
    echo "$dest" >&3
    exit 0
fi

work="$cache/controlplane/.tmp-$key"
rm -rf "$work"
mkdir -p "$work"
trap 'rm -rf "$work"' EXIT

start=$SECONDS
elapsed() { printf '%dm%02ds' $(((SECONDS - start) / 60)) $(((SECONDS - start) % 60)); }

echo "control plane $key: building ${BINARIES[*]} from the Go module proxy (once per machine and pinned version; about 10 minutes on 2 idle cores)"
cd "$here"
# -mod=readonly: build exactly what go.mod/go.sum pin, never re-resolve.
export GOFLAGS="-mod=readonly -trimpath" CGO_ENABLED=0
echo "[0/${#BINARIES[@]}] downloading modules..."
if ! go mod download; then
    echo "control plane: could not download the pinned modules (is the Go module proxy reachable? go env GOPROXY = $(go env GOPROXY))" >&2
    exit 1
fi

version_ldflags="-s -w \
 -X k8s.io/component-base/version.gitVersion=$K8S_VERSION \
 -X k8s.io/component-base/version.gitMajor=$(echo "$K8S_VERSION" | cut -d. -f1 | tr -d v) \
 -X k8s.io/component-base/version.gitMinor=$(echo "$K8S_VERSION" | cut -d. -f2) \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$K8S_VERSION"

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
    if ! nice -n 10 go build -v -ldflags "$version_ldflags" -o "$work/$b" "$pkg" 2>&1 |
        awk -v b="$b" '/^#|\.go:[0-9]|^go: / {print; fflush(); next}
                       {n++; if (n % 100 == 0) {printf "    %s: %d packages compiled\n", b, n; fflush()}}'; then
        echo "control plane: building $b failed (see above)" >&2
        exit 1
    fi
done

mkdir -p "$dest"
for b in "${BINARIES[@]}"; do mv -f "$work/$b" "$dest/$b"; done
echo "control plane $key: done in $(elapsed) -> $dest"
echo "$dest" >&3
