# Shared by e2e/controlplane/build.sh and e2e/node/build.sh (sourced, not run):
# a cache folder per version key, one build per machine at a time, progress lines.
#
#   gobuild_begin WHAT DEST BINARY...   (after computing DEST from the pins)
# handles `--print-dir` (in "$GOBUILD_ARG"), sends progress to stderr and the result
# folder to the real stdout, exits at once when every BINARY is in DEST, otherwise
# waits for the machine-wide lock (re-checking afterwards) and returns to build.
#   gobuild_done: moves the BINARIES from $work into $dest and prints the folder.

gobuild_complete() {
    local b
    for b in "${BINARIES[@]}"; do [[ -x "$dest/$b" ]] || return 1; done
}

gobuild_begin() {
    what="$1" dest="$2"
    shift 2
    BINARIES=("$@")
    if [[ "${GOBUILD_ARG:-}" == "--print-dir" ]]; then
        echo "$dest"
        exit 0
    fi
    # Progress to stderr, the result (the folder) to the real stdout (fd 3).
    exec 3>&1 1>&2
    if gobuild_complete; then
        echo "$what $(basename "$dest"): cached in $dest"
        echo "$dest" >&3
        exit 0
    fi
    if ! command -v go >/dev/null 2>&1; then
        echo "$what: 'go' is not installed; install Go >= 1.26 to build it" >&2
        exit 1
    fi
    local parent
    parent="$(dirname "$dest")"
    mkdir -p "$parent"
    # One build at a time per machine (parallel `make test` runs share the cache).
    exec 9>"$parent/.build.lock"
    if ! flock -n 9; then
        echo "$what: another build holds $parent/.build.lock; waiting for it..."
        flock 9
    fi
    if gobuild_complete; then
        echo "$what $(basename "$dest"): built by another process in $dest"
        echo "$dest" >&3
        exit 0
    fi
    gobuild_start=$SECONDS
}

elapsed() {
    printf '%dm%02ds' $(((SECONDS - gobuild_start) / 60)) $(((SECONDS - gobuild_start) % 60))
}

# `go build -v` names each package as it compiles it: report every 100, pass errors on.
gobuild_progress() {
    awk -v b="$1" '/^go: (downloading|finding)/ {next}
                   /^#|\.go:[0-9]|^go: / {print; fflush(); next}
                   {n++; if (n % 100 == 0) {printf "    %s: %d packages compiled\n", b, n; fflush()}}'
}

# The -ldflags that stamp Kubernetes binaries with their version.
k8s_ldflags() {
    local v="$1"
    echo "-s -w \
 -X k8s.io/component-base/version.gitVersion=$v \
 -X k8s.io/component-base/version.gitMajor=$(echo "$v" | cut -d. -f1 | tr -d v) \
 -X k8s.io/component-base/version.gitMinor=$(echo "$v" | cut -d. -f2) \
 -X k8s.io/component-base/version.gitTreeState=clean \
 -X k8s.io/client-go/pkg/version.gitVersion=$v"
}

gobuild_done() {
    local b
    mkdir -p "$dest"
    for b in "${BINARIES[@]}"; do mv -f "$work/$b" "$dest/$b"; done
    rm -rf "$work"
    echo "$what $(basename "$dest"): done in $(elapsed) -> $dest"
    echo "$dest" >&3
}
