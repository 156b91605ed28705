"""e2e/lib/gobuild.sh, the cache/lock/progress part shared by the control plane's and the
node's build scripts, driven by a small script that builds a hello-world Go program."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

LIB = Path(__file__).resolve().parents[1] / "lib" / "gobuild.sh"

SCRIPT = """set -euo pipefail
cache="$1"; GOBUILD_ARG="${2:-}"
source "%(lib)s"
gobuild_begin hello "$cache/hello/key1" hello
work="$cache/hello/.tmp"
mkdir -p "$work"
echo "building hello ... elapsed $(elapsed)"
go build -C "$cache/src" -v -o "$work/hello" . 2>&1 | gobuild_progress hello
gobuild_done
"""


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    script = tmp_path / "build.sh"
    script.write_text(SCRIPT % {"lib": LIB})
    env = dict(os.environ, GOFLAGS="-mod=mod", GOCACHE=str(tmp_path / "gocache"))
    return subprocess.run(["bash", str(script), str(tmp_path), *args], capture_output=True,
                          text=True, timeout=240, env=env)


def test_builds_once_then_answers_from_the_cache(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "go.mod").write_text("module hello\n\ngo 1.21\n")
    (src / "main.go").write_text('package main\n\nfunc main() { println("hi") }\n')
    dest = tmp_path / "hello" / "key1"

    assert _run(tmp_path, "--print-dir").stdout.strip() == str(dest)
    assert not dest.exists()

    first = _run(tmp_path)
    assert first.returncode == 0, first.stderr
    assert first.stdout.strip() == str(dest)  # stdout: only the folder
    assert "building hello" in first.stderr and "done in" in first.stderr
    assert os.access(dest / "hello", os.X_OK)
    assert not (tmp_path / "hello" / ".tmp").exists()

    again = _run(tmp_path)
    assert again.returncode == 0 and again.stdout.strip() == str(dest)
    assert "cached in" in again.stderr and "building" not in again.stderr


def test_a_failed_build_fails_with_the_compiler_error(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "go.mod").write_text("module hello\n\ngo 1.21\n")
    (src / "main.go").write_text("package main\n\nfunc main() { undefined() }\n")
    r = _run(tmp_path)
    assert r.returncode != 0
    assert "undefined" in r.stderr
    assert not (tmp_path / "hello" / "key1" / "hello").exists()
