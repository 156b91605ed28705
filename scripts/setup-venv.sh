#!/usr/bin/env bash
# Create or refresh the project virtualenv.
#
# llama-cpp-python is compiled from source (about 7 minutes on 2 cores), so its
# wheel is cached under $KUBELLAMA_CACHE/wheels, keyed by the pinned version,
# CMAKE_ARGS and the flags of scripts/ggml-cflags.sh; a fresh clone (CI) then installs it in seconds. The venv is stamped
# with a hash of pyproject.toml and only re-synced when that changes.
set -euo pipefail

PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
CACHE=${KUBELLAMA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubellama}
EXTRAS=${EXTRAS:-test,default-model}

pin=$(grep -o '"llama-cpp-python==[^"]*"' pyproject.toml | tr -d '"')
cflags=$(scripts/ggml-cflags.sh)  # -march=native minus what this machine cannot run (see that script)
key=$(printf '%s|%s|%s|%s' "$pin" "${CMAKE_ARGS:-}" "$(uname -m)" "$cflags" | sha256sum | cut -c1-12)
wheels="$CACHE/wheels/$key"
stamp="$VENV/.kubellama-stamp"
want=$( (cat pyproject.toml; echo "$EXTRAS") | sha256sum | cut -d' ' -f1)

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

# One set-up at a time per machine (parallel `make` runs share the wheel cache).
mkdir -p "$CACHE"
if [ -z "${KUBELLAMA_SETUP_LOCKED:-}" ]; then
    exec 9>"$CACHE/setup.lock"
    if ! flock -n 9; then
        echo "==> waiting for another kubellama set-up on this machine to finish"
        flock 9
    fi
    export KUBELLAMA_SETUP_LOCKED=1
fi
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    exit 0
fi

# Show a heartbeat while a long silent command runs; its full log stays in a file.
run_with_progress() {
    local what=$1 log=$2; shift 2
    "$@" >"$log" 2>&1 &
    local pid=$! start=$SECONDS
    while kill -0 "$pid" 2>/dev/null; do
        sleep 15
        kill -0 "$pid" 2>/dev/null || break
        printf '  ... %s: %ds elapsed; last: %s\n' "$what" $((SECONDS - start)) \
            "$(tail -n 1 "$log" | cut -c1-100)"
    done
    if ! wait "$pid"; then
        echo "error: $what failed; last lines of $log:" >&2
        tail -n 40 "$log" >&2
        exit 1
    fi
}

mkdir -p "$wheels"
if ! ls "$wheels"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    echo "==> building $pin from source (once per machine, ~7 min on 2 cores; cached in $wheels)"
    CFLAGS="$cflags ${CFLAGS:-}" CXXFLAGS="$cflags ${CXXFLAGS:-}" \
    run_with_progress "building llama-cpp-python" "$CACHE/llama-cpp-python-build.log" \
        "$PYTHON" -m pip wheel --no-deps --no-cache-dir -v "$pin" -w "$wheels.tmp"
    mv "$wheels".tmp/*.whl "$wheels"/ && rmdir "$wheels.tmp"
fi

if [ ! -x "$VENV/bin/python" ]; then
    echo "==> creating $VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip
fi

echo "==> installing kubellama[$EXTRAS] into $VENV"
"$VENV/bin/python" -m pip install --progress-bar on --find-links "$wheels" -e ".[$EXTRAS]" 2>&1 \
    | { grep -v -E '^Requirement already satisfied' || true; }
"$VENV/bin/python" -c 'import llama_cpp, kubellama_server' \
    || { echo "error: the venv is incomplete (see pip output above)" >&2; exit 1; }
echo "$want" >"$stamp"
echo "==> $VENV ready"
