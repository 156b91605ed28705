#!/usr/bin/env bash
# Set up the Python peers of the benchmark in their own virtualenv, cached under
# $CACHE/bench: llama-cpp-python's built-in server (`python -m llama_cpp.server`)
# and its batched example server (examples/server/server.py of the sdist), plus
# py-spy for profiling. The llama-cpp-python wheel is the one the project's venv
# set-up built and cached (never rebuilt here). Prints the venv path.
set -euo pipefail

CACHE=${KUBELLAMA_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kubellama}
PYTHON=${PYTHON:-python3}
here=$(cd "$(dirname "$0")/.." && pwd)
pin=$(grep -o '"llama-cpp-python==[^"]*"' "$here/pyproject.toml" | tr -d '"')
version=${pin#llama-cpp-python==}
root="$CACHE/bench"
venv="$root/venv-llama-cpp-python-$version"
stamp="$venv/.bench-stamp"
example="$root/llama-cpp-python-$version/examples/server/server.py"

if [ -f "$stamp" ] && [ -f "$example" ]; then
    echo "$venv"
    exit 0
fi
mkdir -p "$root"
exec 9>"$root/.setup-peers.lock"
flock 9
if [ -f "$stamp" ] && [ -f "$example" ]; then echo "$venv"; exit 0; fi

wheel=$(ls "$CACHE"/wheels/*/llama_cpp_python-"$version"-*.whl 2>/dev/null | head -n 1 || true)
if [ -z "$wheel" ]; then
    echo "error: no cached $pin wheel under $CACHE/wheels; run 'make install' first" >&2
    exit 1
fi
if [ ! -f "$stamp" ]; then
    echo "==> creating the peers' virtualenv $venv (llama-cpp-python[server] from the cached wheel)" >&2
    [ -x "$venv/bin/python" ] || "$PYTHON" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip >&2
    # The example server's own (uv inline-script) dependencies are listed too.
    "$venv/bin/python" -m pip install -q --find-links "$(dirname "$wheel")" \
        "llama-cpp-python[server]==$version" fastapi jinja2 numpy openai pydantic \
        safetensors uvicorn websockets py-spy >&2
    "$venv/bin/python" -c 'import llama_cpp.server' >&2
    date -u +%FT%TZ >"$stamp"
fi
if [ ! -f "$example" ]; then
    echo "==> fetching examples/server/server.py from the llama-cpp-python==$version sdist" >&2
    tmp=$(mktemp -d)
    "$venv/bin/python" -m pip download -q --no-deps --no-binary llama-cpp-python \
        "llama-cpp-python==$version" -d "$tmp" >&2
    tar xzf "$tmp"/llama_cpp_python-"$version".tar.gz -C "$root" \
        "llama_cpp_python-$version/examples" --transform "s,^llama_cpp_python-,llama-cpp-python-,"
    rm -rf "$tmp"
fi
echo "$venv"
