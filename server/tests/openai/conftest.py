"""Fixtures for the OpenAI-compatible API tests: a shared tiny-model server with embeddings."""

from __future__ import annotations

import openai
import pytest

from kubellama_server.testing.live import LiveServer


@pytest.fixture(scope="module")
def oai_server(tiny_model):
    srv = LiveServer(["-m", str(tiny_model), "-t", "1", "-c", "2048", "-np", "4", "--embedding", "--alias", "tiny-test"])
    srv.start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def client(oai_server) -> openai.OpenAI:
    return openai.OpenAI(base_url=oai_server.url + "/v1", api_key="unused", max_retries=0, timeout=60)
