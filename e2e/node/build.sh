#!/usr/bin/env bash
# Build the binaries of the local node (e2e/node): kubelet and kube-proxy from the
# same k8s.io/kubernetes version as the test control plane (e2e/node/k8s/go.mod),
# containerd 2.x, runc 1.5.x, the CNI plugins, CoreDNS from the Go module proxy and BuildKit (e2e/node/buildkit/go.mod), into $KUBELLAMA_CACHE/node/<version-key>/.
#
# Idempotent: when every binary of this version key is already there it exits at
# once. Progress goes to stderr; stdout gets only the folder.
#   usage: e2e/node/build.sh [--print-dir]   (--print-dir: just say where)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache="${KUBELLAMA_CACHE:-$HOME/.cache/kubellama}"
GOBUILD_ARG="${1:-}"
source "$here/../lib/gobuild.sh"

# Pins (bump here; the cache key follows).
CONTAINERD=github.com/containerd/containerd/v2@v2.4.2
RUNC=github.com/opencontainers/runc@v1.5.3
CNI=github.com/containernetworking/plugins@v1.10.0
COREDNS=github.com/coredns/coredns@v1.15.0
BUILD_REV=1

K8S_VERSION="$(awk '$1=="k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit}' "$here/k8s/go.mod")"
key="$K8S_VERSION-$( (echo "$BUILD_REV $CONTAINERD $RUNC $CNI $COREDNS"; cat "$here/k8s/go.mod" "$here/k8s/go.sum" "$here/buildkit/go.mod" "$here/buildkit/go.sum") | sha256sum | cut -c1-12)"
gobuild_begin node "$cache/node/$key" kubelet kube-proxy containerd containerd-shim-runc-v2 ctr runc \
    bridge host-local loopback portmap coredns buildkitd buildctl
if ! pkg-config --exists libseccomp 2>/dev/null; then
    echo "node: runc needs libseccomp's headers: apt-get install -y libseccomp-dev pkg-config" >&2
    exit 1
fi

work="$cache/node/.tmp-$key"
mkdir -p "$work"   # kept on failure: a rerun skips what is already there
echo "node $key: building ${#BINARIES[@]} binaries from the Go module proxy (once per machine and pinned version; about 20 minutes on 2 idle cores)"

step=0
# build NAME... -- GO-ARGS: skipped when every NAME is already in $work.
build() {
    local names=() b have=1
    while [[ $1 != -- ]]; do names+=("$1"); shift; done
    shift
    for b in "${names[@]}"; do [[ -x "$work/$b" ]] || have=0; done
    step=$((step + 1))
    if ((have)); then return 0; fi
    echo "[$step/9] building ${names[*]} ... elapsed $(elapsed)"
    if ! nice -n 10 "$@" 2>&1 | gobuild_progress "${names[0]}"; then
        echo "node: building ${names[*]} failed (see above)" >&2
        exit 1
    fi
    for b in "${names[@]}"; do
        [[ -x "$work/$b" ]] || { echo "node: $b missing after its build" >&2; exit 1; }
    done
}

export GOFLAGS="-trimpath -buildvcs=false" GOBIN="$work"
ldflags_k8s="$(k8s_ldflags "$K8S_VERSION")"

CGO_ENABLED=0 build kubelet -- go build -C "$here/k8s" -mod=readonly -v -ldflags "$ldflags_k8s" \
    -o "$work/kubelet" k8s.io/kubernetes/cmd/kubelet
CGO_ENABLED=0 build kube-proxy -- go build -C "$here/k8s" -mod=readonly -v -ldflags "$ldflags_k8s" \
    -o "$work/kube-proxy" k8s.io/kubernetes/cmd/kube-proxy
cd "$work"
CGO_ENABLED=1 build runc -- go install -v -tags seccomp -ldflags "-s -w" "$RUNC"
CGO_ENABLED=0 build containerd containerd-shim-runc-v2 ctr -- go install -v -ldflags "-s -w" \
    "${CONTAINERD%@*}/cmd/containerd@${CONTAINERD#*@}" \
    "${CONTAINERD%@*}/cmd/containerd-shim-runc-v2@${CONTAINERD#*@}" \
    "${CONTAINERD%@*}/cmd/ctr@${CONTAINERD#*@}"
CGO_ENABLED=0 build bridge host-local loopback portmap -- go install -v -ldflags "-s -w" \
    "${CNI%@*}/plugins/main/bridge@${CNI#*@}" "${CNI%@*}/plugins/ipam/host-local@${CNI#*@}" \
    "${CNI%@*}/plugins/main/loopback@${CNI#*@}" "${CNI%@*}/plugins/meta/portmap@${CNI#*@}"
CGO_ENABLED=0 build coredns -- go install -v -ldflags "-s -w" "$COREDNS"
# BuildKit's go.mod has exclude directives, so `go install @version` refuses it: built
# from e2e/node/buildkit/go.mod (the same pin and excludes).
CGO_ENABLED=0 build buildkitd -- go build -C "$here/buildkit" -mod=readonly -v -ldflags "-s -w" \
    -o "$work/buildkitd" github.com/moby/buildkit/cmd/buildkitd
CGO_ENABLED=0 build buildctl -- go build -C "$here/buildkit" -mod=readonly -v -ldflags "-s -w" \
    -o "$work/buildctl" github.com/moby/buildkit/cmd/buildctl

gobuild_done
