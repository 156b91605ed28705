"""Shared fixtures: the tiny GGUF model, the real Gemma model, and live servers on loopback."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from kubellama_server.testing.live import LiveServer, ServerProcess  # noqa: F401  (re-exported for tests)
from kubellama_server.testing.tiny_gguf import build_tiny_gguf


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    return build_tiny_gguf(tmp_path_factory.mktemp("models") / "tiny.gguf")


@pytest.fixture(scope="session")
def gemma_model() -> Path:
    path = Path(
        os.environ.get("KUBELLAMA_DEFAULT_MODEL")
        or Path(os.environ.get("KUBELLAMA_CACHE", Path.home() / ".cache" / "kubellama")) / "models" / "gemma-3-270m-q4_k_m.gguf"
    )
    if not path.is_file():
        pytest.skip(f"default model not assembled at {path}: run `make model` (make test does it)")
    return path


@pytest.fixture
def live_server(tiny_model):
    """Factory: start an in-process server on the tiny model with extra CLI flags."""
    started: list[LiveServer] = []

    def start(*flags: str, model: Path | None = None) -> LiveServer:
        srv = LiveServer(["-m", str(model or tiny_model), "-t", "1", *flags])
        srv.start()
        started.append(srv)
        return srv

    yield start
    for srv in started:
        srv.stop()


@pytest.fixture(scope="module")
def tiny_server(tiny_model):
    """A shared 4-slot server on the tiny model (tests must not depend on slot state)."""
    srv = LiveServer(["-m", str(tiny_model), "-t", "1", "-c", "2048", "-np", "4"])
    srv.start()
    yield srv
    srv.stop()
