"""bench.routing's pure parts: the seeded workload, the per-arm figures and the report; and its count of a
replica's answered chats."""
from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest

from bench.routing import TurnRecord, Workload, conversations, render, served_chats, summarize


def test_conversations_are_seeded_and_share_a_system_prompt_per_group():
    w = Workload(groups=3, per_group=4, turns=3, system_chars=500, document_chars=0, seed=5)
    a, b = conversations(w), conversations(w)
    assert a == b and len(a) == 12
    assert conversations(Workload(seed=6)) != conversations(Workload(seed=7))
    assert len(conversations(Workload())) > 3 * 4  # by default more conversations than the replicas' slots
    by_group = {}
    for c in a:
        by_group.setdefault(c.group, set()).add(c.system)
        assert len(c.questions) == 3 and len(c.think) == 2
    assert all(len(s) == 1 for s in by_group.values()) and len({next(iter(s)) for s in by_group.values()}) == 3
    starts = [c.start for c in a]
    assert starts == sorted(starts) and starts[0] == 0.0
    assert len({q for c in a for q in c.questions}) == 36  # every question differs
    assert all("Document:" not in q for c in a for q in c.questions)  # no document when none is asked for


def test_a_document_comes_with_the_first_question_only():
    w = Workload(groups=2, per_group=2, turns=3, question_chars=50, document_chars=1000, seed=3)
    convs = conversations(w)
    docs = {c.questions[0].split("Document:\n", 1)[1] for c in convs}
    assert len(docs) == 4 and all(999 <= len(d) <= 1000 for d in docs)  # one document per conversation
    assert all(len(q) < 80 and "Document:" not in q for c in convs for q in c.questions[1:])
    assert all(c.questions[0].startswith(f"Question {c.cid}.0: ") for c in convs)  # KubeAI's key differs


def test_summary_and_report():
    recs = [TurnRecord(0, 0, ttft=1.0, generated=10, prompt=100, cached=0),
            TurnRecord(0, 1, ttft=0.2, generated=10, prompt=150, cached=100),
            TurnRecord(1, 0, error="HTTP 503")]
    s = summarize(recs, wall=4.0, served=[2, 1, 0])
    assert s["errors"] == 1 and s["gen_tok_s"] == 5.0
    assert s["cached_share"] == 100 / 250 and s["ttft_later_turns_p50_s"] == 0.2
    assert s["max_over_mean_load"] == 2.0
    s["load_average"] = [1.5, 2.25]
    fast = dict(s, ttft_p50_s=0.1, gen_tok_s=6.0)
    results = {"arms": {"random": s, "prefix": fast}, "baseline": "random", "workload": vars(Workload()),
               "settings": {"replicas": 3, "slots": 2, "threads": 1, "ctx_per_slot": 4096, "model": "/m/g.gguf"},
               "machine": {"cpu": "x", "cpus": 2}, "command": "python -m bench.routing", "notes": ["a note"]}
    md = render(results)
    assert "| prefix | 100 ms |" in md and "6.00x" in md and "a note" in md and "| 1.5/2.25 |" in md
    assert "(18 conversations on 6 slots)" in md
    assert "questions of 200 (the first with a document of 4000 characters of its own)" in md
    assert "prefix TTFT p50 >= 5x lower than random: 6.00x — PASS" in md


def test_served_chats_counts_the_chat_endpoint_of_a_replica_page():
    registry = CollectorRegistry()
    requests = Counter("kubellama_requests", "requests", ["endpoint", "status"], registry=registry)
    requests.labels("/v1/chat/completions", "200").inc(5)
    requests.labels("/v1/chat/completions", "429").inc(2)
    requests.labels("/v1/completions", "200").inc(9)
    pages = {"/good/metrics": generate_latest(registry), "/bad/metrics": b"kubellama_requests_total{ 3\n"}

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = pages[self.path]
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_port}"
        assert served_chats(url + "/good") == 7
        with pytest.raises(RuntimeError, match="not a Prometheus text page"):
            served_chats(url + "/bad")
    finally:
        server.shutdown()
        server.server_close()
