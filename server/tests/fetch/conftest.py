"""Fixtures for model-pull tests: the tiny GGUF, a loopback file server, a fake Hugging Face Hub."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from model_http_server import ModelHTTPServer  # noqa: E402


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from kubellama_server.testing.tiny_gguf import build_tiny_gguf

    path = tmp_path_factory.mktemp("tiny") / "tiny.gguf"
    build_tiny_gguf(path)
    return path


@pytest.fixture(scope="session")
def tiny_bytes(tiny_model) -> bytes:
    return tiny_model.read_bytes()


@pytest.fixture(scope="session")
def tiny_sha(tiny_bytes) -> str:
    return hashlib.sha256(tiny_bytes).hexdigest()


@pytest.fixture
def model_server():
    with ModelHTTPServer() as srv:
        yield srv


@pytest.fixture
def hf_hub(monkeypatch, tmp_path):
    """A Hub on one loopback port and its CDN on another; `HF_ENDPOINT` points at the Hub; no token set."""
    with ModelHTTPServer() as cdn, ModelHTTPServer() as hub:
        hub.cdn = cdn
        monkeypatch.setenv("HF_ENDPOINT", hub.base_url)
        for var in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HUB_OFFLINE"):
            monkeypatch.delenv(var, raising=False)
        monkeypatch.setenv("HF_TOKEN_PATH", str(tmp_path / "no-hf-token"))  # ignore any real login
        yield hub


@pytest.fixture(autouse=True)
def _isolated_cache(monkeypatch, tmp_path):
    """Never touch the user's model cache or the real termination log."""
    monkeypatch.setenv("LLAMA_CACHE", str(tmp_path / "llama-cache"))
    monkeypatch.setenv("KUBELLAMA_TERMINATION_LOG", str(tmp_path / "no-termination-log"))
    monkeypatch.setenv("KUBELLAMA_FETCH_PROGRESS_INTERVAL", "0.05")


@pytest.fixture
def run_fetch():
    """Run the `kubellama-fetch` command line in a fresh process: `run_fetch(*args, env={...})`."""

    def run(*args: str, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "kubellama_server.fetch", *args],
            capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})},
        )

    return run
