"""Replicas (real kubellama-server apps on the tiny model) and routers in front of them, on loopback."""

from __future__ import annotations

import pytest

from kubellama_router.testing import LiveRouter
from kubellama_server.testing.live import LiveServer


def _replicas(tiny_model, n: int, *flags: str) -> list[LiveServer]:
    return [LiveServer(["-m", str(tiny_model), "-t", "1", "-c", "2048", "-np", "2", *flags]).start()
            for _ in range(n)]


@pytest.fixture(scope="module")
def replicas(tiny_model):
    """Three shared replicas (tests must not depend on which holds what)."""
    srvs = _replicas(tiny_model, 3)
    yield srvs
    for s in srvs:
        s.stop()


@pytest.fixture
def fresh_replicas(tiny_model):
    """Factory: replicas of this test only (to stop, or with extra flags)."""
    started: list[LiveServer] = []

    def start(n: int, *flags: str) -> list[LiveServer]:
        srvs = _replicas(tiny_model, n, *flags)
        started.extend(srvs)
        return srvs

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def router():
    """Factory: a router over the given replicas with extra flags."""
    started: list[LiveRouter] = []

    def start(replicas, *flags: str) -> LiveRouter:
        argv = [a for s in replicas for a in ("--replica", s if isinstance(s, str) else s.url)]
        r = LiveRouter([*argv, "--seed", "1", *flags]).start()
        started.append(r)
        return r

    yield start
    for r in started:
        r.stop()
