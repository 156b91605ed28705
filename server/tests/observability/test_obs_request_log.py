"""Request logs: one line per request, --log-format json|text, prompts only with --verbose, --log-disable."""

from __future__ import annotations

import json

import httpx

from kubellama_server.observability.record import RequestRecord, ResultInfo
from kubellama_server.observability.request_log import request_fields, text_line
from kubellama_server.testing.live import ServerProcess

SECRET = "my secret prompt text 12345"


def run_server(tiny_model, tmp_path, *flags: str) -> str:
    srv = ServerProcess(["-m", str(tiny_model), "-t", "1", "-np", "2", *flags]).start(log_path=tmp_path / "server.log")
    try:
        r = httpx.post(srv.url + "/completion", json={"prompt": SECRET, "n_predict": 3, "ignore_eos": True})
        assert r.status_code == 200
        assert httpx.post(srv.url + "/completion", json={"prompt": SECRET, "n_predict": -7}).status_code == 400
        httpx.get(srv.url + "/health")
        log = tmp_path / "server.log"
    finally:
        srv.stop()
    return log.read_text()


def request_lines_json(text: str) -> list[dict]:
    out = []
    for line in text.splitlines():
        if line.startswith("{"):
            obj = json.loads(line)
            if obj.get("logger") == "kubellama.request":
                out.append(obj)
    return out


def test_json_lines_one_per_request_without_the_prompt(tiny_model, tmp_path):
    text = run_server(tiny_model, tmp_path, "--log-format", "json")
    assert SECRET not in text
    lines = request_lines_json(text)
    assert len(lines) == 2, lines  # /health is not logged without --verbose
    ok, bad = lines
    assert ok["msg"] == "request" and ok["method"] == "POST" and ok["path"] == "/completion" and ok["status"] == 200
    assert ok["slot"] in (0, 1) and ok["tokens_predicted"] == 3 and ok["tokens_prompt"] > 0 and ok["tokens_cached"] == 0
    assert ok["finish_reason"] == "length" and ok["duration_ms"] > 0 and ok["level"] == "info"
    assert bad["status"] == 400 and "slot" not in bad
    # every line of the server log is JSON in this format
    assert all(json.loads(line) for line in text.splitlines() if line.strip())


def test_text_format(tiny_model, tmp_path):
    text = run_server(tiny_model, tmp_path, "--log-format", "text")
    assert SECRET not in text
    lines = [line for line in text.splitlines() if "kubellama.request" in line]
    assert len(lines) == 2, text
    assert "POST /completion 200 " in lines[0] and "predicted=3" in lines[0] and "slot=" in lines[0]
    assert "POST /completion 400 " in lines[1]


def test_verbose_logs_the_prompt_and_probes(tiny_model, tmp_path):
    text = run_server(tiny_model, tmp_path, "--log-format", "json", "--verbose")
    lines = request_lines_json(text)
    completions = [line for line in lines if line["path"] == "/completion"]
    assert len(completions) == 2 and completions[0]["prompt"] == SECRET
    assert any(line["path"] == "/health" for line in lines)  # probes too, with --verbose


def test_log_disable_silences_request_logs(tiny_model, tmp_path):
    text = run_server(tiny_model, tmp_path, "--log-disable")
    assert "request" not in text and SECRET not in text


def test_fields_and_text_line_for_several_results():
    rec = RequestRecord(method="POST", path="/v1/completions", status=200)
    rec.results = [ResultInfo("completion", 1, 10, 4, 5, "stop"), ResultInfo("completion", 0, 10, 0, 7, "length")]
    fields = request_fields(rec, verbose=False)
    assert fields["slot"] == [0, 1] and fields["tokens_prompt"] == 20 and fields["tokens_cached"] == 4
    assert fields["tokens_predicted"] == 12 and fields["finish_reason"] == ["length", "stop"]
    line = text_line(fields)
    assert line.startswith("POST /v1/completions 200 ") and "slot=[0, 1] prompt=20 cached=4 predicted=12" in line
