#!/usr/bin/env bash
# Prints the extra C/C++ flags of this machine's native llama.cpp builds (llama-cpp-python's wheel
# in scripts/setup-venv.sh, the benchmark's llama-server in bench/build_llama_server.sh), so both
# are built alike and their caches are keyed on them.
#
# x86-64: -march=native minus AMX. On AMX CPUs (Xeon Sapphire Rapids and newer) ggml's AMX
# kernels, as vendored by llama-cpp-python 0.3.36, die with SIGILL on the first prompt
# (`tilezero` in ggml_backend_amx_mul_mat: the tile configuration built on the stack is
# optimized away; ggml-org/llama.cpp PR #26954). Flags given before -march=native win over it.
case "$(uname -m)" in
    x86_64 | amd64) echo "-mno-amx-tile -mno-amx-int8 -mno-amx-bf16" ;;
    *) echo "" ;;
esac
