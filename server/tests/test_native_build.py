"""The llama-cpp-python wheel `make install` builds for this machine (scripts/setup-venv.sh)."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path

import llama_cpp

REPO = Path(__file__).resolve().parents[2]


def test_the_native_build_leaves_out_ggml_amx_kernels():
    """ggml's AMX kernels die with SIGILL on AMX CPUs (scripts/ggml-cflags.sh): the build must not
    carry them, whatever CPU built it (a CPU without AMX never had them)."""
    flags = subprocess.run([REPO / "scripts" / "ggml-cflags.sh"], capture_output=True, text=True, check=True).stdout.split()
    info = llama_cpp.llama_print_system_info().decode()
    if platform.machine() not in ("x86_64", "AMD64"):
        assert flags == [], "AMX is x86-64 only: nothing to leave out"
        return
    assert {"-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16"} <= set(flags)
    assert "AVX2 = 1" in info, info  # still a native build
    assert "AMX" not in info, info
