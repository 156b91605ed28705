"""Fixtures for the Helm chart tests: the real `helm` binary and rendered manifests."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from chart_support import REPO_ROOT, Helm


def find_tool(name: str, env: str) -> str | None:
    """A tool from $`env`, then PATH, then the project's .tools/bin (made by `make helm-tool`)."""
    configured = os.environ.get(env)
    if configured and Path(configured).is_file() and os.access(configured, os.X_OK):
        return configured
    local = REPO_ROOT / ".tools" / "bin" / name
    if local.is_file():
        return str(local)
    return shutil.which(name)


@pytest.fixture(scope="session")
def helm() -> Helm:
    path = find_tool("helm", "KUBELLAMA_HELM")
    if path is None:
        pytest.fail("helm not found: run `make helm-tool` (extracts it into .tools/bin) or put helm on PATH")
    version = subprocess.run([path, "version", "--short"], capture_output=True, text=True, check=True)
    assert version.stdout.startswith("v3.") or version.stdout.startswith("v4."), version.stdout
    return Helm(path)


def find_prometheus_tool(name: str, env: str) -> str:
    path = os.environ.get(env) or shutil.which(name) or f"/usr/bin/{name}"
    if not (Path(path).is_file() and os.access(path, os.X_OK)):
        pytest.fail(f"{name} not found: run `make prometheus-tool` (installs Debian's prometheus package)")
    return path


@pytest.fixture(scope="session")
def promtool() -> str:
    return find_prometheus_tool("promtool", "KUBELLAMA_PROMTOOL")


@pytest.fixture(scope="session")
def prometheus_bin() -> str:
    return find_prometheus_tool("prometheus", "KUBELLAMA_PROMETHEUS")
