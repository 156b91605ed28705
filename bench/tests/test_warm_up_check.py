"""The warm-up's chat-prompt check against the real kubellama-server on the tiny model:
a peer rendering the shared template passes, one rendering another template is flagged."""
from __future__ import annotations

from types import SimpleNamespace

import pytest

from bench.api import CHAT, NATIVE
from bench.loadgen import ClientPlan, RequestSpec, Workload
from bench.peers import GEMMA_JINJA
from bench.runner import RunSettings, warm_up
from bench.tokens import Vocab
from kubellama_server.testing.live import LiveServer
from kubellama_server.testing.tiny_gguf import build_tiny_gguf


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return build_tiny_gguf(tmp_path_factory.mktemp("m") / "tiny.gguf")


@pytest.mark.parametrize("server_template,flagged", [(GEMMA_JINJA, False), ("chatml", True)])
def test_warm_up_flags_a_peer_whose_chat_template_differs(tiny, server_template, flagged):
    srv = LiveServer(["-m", str(tiny), "-t", "1", "--chat-template", server_template]).start()
    try:
        workloads = [Workload("chat-1", "chat", [ClientPlan([RequestSpec("x", 4, seed=1)])])]
        settings = RunSettings(model=str(tiny), peers=["kubellama"], workloads=workloads)
        # the runner's view of a started peer: its URL and the template every peer should use
        server = SimpleNamespace(base_url=srv.url, cfg=SimpleNamespace(chat_template="gemma"))
        logged: list[str] = []
        problem = warm_up("kubellama", frozenset({NATIVE, CHAT}), server, workloads, settings, [], Vocab(str(tiny)),
                          logged.append)
    finally:
        srv.stop()
    if flagged:
        assert problem and "not the shared one" in problem
        assert any("will not be compared" in line for line in logged)
    else:
        assert problem is None and not logged
