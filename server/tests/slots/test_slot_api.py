"""GET /slots and POST /slots/{id}?action=save|restore|erase on the tiny model, real HTTP."""

from __future__ import annotations

import json
import threading

import httpx
import pytest

from kubellama_server.testing.tiny_gguf import build_tiny_gguf

PROMPT = "the llama server keeps a prompt cache per slot " * 4
# every field of the reference's GET /slots example
REFERENCE_FIELDS = {
    "dynatemp_exponent", "dynatemp_range", "frequency_penalty", "grammar", "id", "ignore_eos", "logit_bias",
    "min_p", "mirostat", "mirostat_eta", "mirostat_tau", "model", "n_ctx", "n_keep", "n_predict", "n_probs",
    "next_token", "penalize_nl", "penalty_prompt_tokens", "presence_penalty", "prompt", "repeat_last_n",
    "repeat_penalty", "samplers", "seed", "state", "stop", "stream", "task_id", "temperature", "tfs_z",
    "top_k", "top_p", "typical_p", "use_penalty_prompt_tokens",
}
NEXT_TOKEN_FIELDS = {"has_next_token", "n_remain", "n_decoded", "stopped_eos", "stopped_limit", "stopped_word", "stopping_word"}


def complete(url: str, **body) -> dict:
    body.setdefault("prompt", PROMPT)
    body.setdefault("n_predict", 4)
    body.setdefault("cache_prompt", True)
    r = httpx.post(url + "/completion", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def action(url: str, slot, name: str, filename=None, **kw) -> httpx.Response:
    body = None if filename is None else {"filename": filename}
    return httpx.post(f"{url}/slots/{slot}?action={name}", json=body, timeout=30, **kw)


@pytest.fixture
def saving(live_server, tmp_path):
    folder = tmp_path / "slots"  # created on the first save
    srv = live_server("-np", "2", "-c", "1024", "--slot-save-path", str(folder), "--context-shift")
    srv.folder = folder
    return srv


def test_get_slots_has_every_reference_field(live_server):
    srv = live_server("-np", "2", "-c", "512")
    complete(srv.url, id_slot=1, n_predict=3, temperature=0.5, stop=["zz"])
    slots = httpx.get(srv.url + "/slots").json()
    assert [s["id"] for s in slots] == [0, 1]
    for s in slots:
        assert REFERENCE_FIELDS <= set(s), REFERENCE_FIELDS - set(s)
        assert NEXT_TOKEN_FIELDS <= set(s["next_token"])
        assert s["n_ctx"] == 256 and s["state"] == 0 and s["is_processing"] is False
    used = slots[1]
    assert used["prompt"] == PROMPT and used["temperature"] == 0.5 and used["stop"] == ["zz"]
    assert used["next_token"]["n_decoded"] == 3 and used["next_token"]["stopped_limit"] is True
    assert used["n_past"] > 0 and slots[0]["n_past"] == 0
    assert httpx.get(srv.url + "/slots?fail_on_no_slot=1").status_code == 200


def test_get_slots_shows_a_processing_slot(live_server):
    # generates until cancelled (n_predict is capped at 4 contexts: 4096 tokens, seconds on the
    # tiny model, where 1024 took ~0.3 s and could end before the two GETs below under load)
    srv = live_server("-np", "1", "-c", "1024", "--context-shift")
    with httpx.stream("POST", srv.url + "/completion", json={"prompt": "go", "n_predict": 100000, "ignore_eos": True, "stream": True}, timeout=30) as r:
        it = r.iter_lines()
        next(it)
        (slot,) = httpx.get(srv.url + "/slots").json()
        assert slot["is_processing"] is True and slot["state"] == 1
        busy = httpx.get(srv.url + "/slots?fail_on_no_slot=1")
        assert busy.status_code == 503 and busy.json()["error"]["message"] == "no slot available"
        assert slot["next_token"]["has_next_token"] is True and slot["next_token"]["n_decoded"] >= 1


def test_slots_endpoint_disable_is_501(live_server):
    srv = live_server("--slots-endpoint-disable")
    r = httpx.get(srv.url + "/slots")
    assert r.status_code == 501
    assert r.json()["error"] == {"code": 501, "message": "This server does not support slots endpoint.", "type": "not_supported_error"}
    assert "slots" not in httpx.get(srv.url + "/health?include_slots").json()


@pytest.mark.parametrize("name", ["save", "restore", "erase"])
def test_actions_without_slot_save_path_are_501(live_server, name):
    srv = live_server()
    r = action(srv.url, 0, name, "x.bin")
    assert r.status_code == 501 and r.json()["error"]["type"] == "not_supported_error"
    assert "--slot-save-path" in r.json()["error"]["message"]


def test_save_erase_restore_reuses_the_cache(saving):
    url = saving.url
    first = complete(url, id_slot=0)
    n_cache = first["tokens_evaluated"] + first["tokens_predicted"] - 1  # the last sampled token is not decoded
    saved = action(url, 0, "save", "s0.bin").json()
    assert saved["id_slot"] == 0 and saved["filename"] == "s0.bin"
    assert saved["n_saved"] == n_cache and saved["timings"]["save_ms"] > 0
    path = saving.folder / "s0.bin"
    assert path.stat().st_size == saved["n_written"] > 0
    assert sorted(p.name for p in saving.folder.iterdir()) == [".s0.bin.meta.json", "s0.bin"]  # no temp file left
    meta = json.loads((saving.folder / ".s0.bin.meta.json").read_text())
    assert meta["n_tokens"] == n_cache and meta["file_size"] == saved["n_written"] and meta["n_ctx_slot"] == 512

    erased = action(url, 0, "erase").json()
    assert erased == {"id_slot": 0, "n_erased": n_cache}
    assert httpx.get(url + "/slots").json()[0]["n_past"] == 0
    cold = complete(url, id_slot=0, n_predict=1)
    assert cold["tokens_cached"] == 0  # erased for real
    action(url, 0, "erase")

    restored = action(url, 0, "restore", "s0.bin").json()
    assert restored == {**restored, "id_slot": 0, "filename": "s0.bin", "n_restored": n_cache, "n_read": saved["n_written"]}
    assert restored["timings"]["restore_ms"] > 0
    assert httpx.get(url + "/slots").json()[0]["n_past"] == n_cache
    warm = complete(url, id_slot=0, n_predict=1)
    assert warm["tokens_cached"] == first["tokens_evaluated"] - 1  # the whole shared prefix but the token re-evaluated for logits
    assert warm["timings"]["prompt_n"] == 1


def test_restore_into_another_slot(saving):
    url = saving.url
    first = complete(url, id_slot=0)
    action(url, 0, "save", "other.bin")
    assert action(url, 1, "restore", "other.bin").status_code == 200
    again = complete(url, id_slot=1, n_predict=1)
    assert again["tokens_cached"] == first["tokens_evaluated"] - 1


@pytest.mark.parametrize("name", ["../evil.bin", "a/b.bin", "a\\b.bin", ".hidden", "/etc/passwd", "nul\x00.bin", "..", "", "x" * 300])
def test_bad_filenames_are_400(saving, name):
    for act in ("save", "restore"):
        r = action(saving.url, 0, act, name)
        assert r.status_code == 400, (act, name, r.text)
        assert r.json()["error"]["type"] == "invalid_request_error"
    assert not saving.folder.exists() or not any(saving.folder.iterdir())


def test_filename_must_be_given_as_a_string(saving):
    for body in ({}, {"filename": 3}, {"filename": None}):
        r = httpx.post(saving.url + "/slots/0?action=save", json=body)
        assert r.status_code == 400 and "filename" in r.json()["error"]["message"]


@pytest.mark.parametrize("slot", ["2", "-1", "99", "abc"])
def test_unknown_slot_id_is_400(saving, slot):
    r = action(saving.url, slot, "save", "x.bin")
    assert r.status_code == 400 and "slot" in r.json()["error"]["message"]


def test_unknown_or_missing_action_is_400(saving):
    for q in ("?action=load", "?action=", ""):
        r = httpx.post(f"{saving.url}/slots/0{q}", json={"filename": "x.bin"})
        assert r.status_code == 400 and "action" in r.json()["error"]["message"]


def test_restore_of_a_missing_file_is_404(saving):
    r = action(saving.url, 0, "restore", "never-saved.bin")
    assert r.status_code == 404 and "never-saved.bin" in r.json()["error"]["message"]


def test_busy_slot_answers_409(saving):
    url = saving.url
    complete(url, id_slot=0)
    action(url, 0, "save", "busy.bin")
    with httpx.stream("POST", url + "/completion", json={"prompt": "go", "id_slot": 0, "n_predict": 100000, "ignore_eos": True, "stream": True}, timeout=30) as r:
        lines = r.iter_lines()  # keep a reference: a collected generator closes the stream
        next(lines)
        for name, filename in (("save", "busy2.bin"), ("restore", "busy.bin"), ("erase", None)):
            resp = action(url, 0, name, filename)
            assert resp.status_code == 409, resp.text
            assert resp.json()["error"]["type"] == "conflict_error" and "retry" in resp.json()["error"]["message"]
    assert not (saving.folder / "busy2.bin").exists()


def test_file_from_another_context_size_is_refused(live_server, tmp_path):
    folder = tmp_path / "slots"
    a = live_server("-np", "1", "-c", "512", "--slot-save-path", str(folder))
    complete(a.url, id_slot=0)
    assert action(a.url, 0, "save", "ctx.bin").status_code == 200
    b = live_server("-np", "1", "-c", "1024", "--slot-save-path", str(folder))
    r = action(b.url, 0, "restore", "ctx.bin")
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["type"] == "invalid_request_error" and "context size" in err["message"] and "n_ctx_slot 512 != 1024" in err["message"]
    assert httpx.get(b.url + "/slots").json()[0]["n_past"] == 0


def test_file_from_another_model_of_the_same_shape_is_refused(live_server, tmp_path, tiny_model):
    folder = tmp_path / "slots"
    other = build_tiny_gguf(tmp_path / "other.gguf", seed=99)  # same shape, other weights
    assert other.stat().st_size == tiny_model.stat().st_size
    a = live_server("-np", "1", "-c", "512", "--slot-save-path", str(folder), model=other)
    complete(a.url, id_slot=0)
    assert action(a.url, 0, "save", "model.bin").status_code == 200
    b = live_server("-np", "1", "-c", "512", "--slot-save-path", str(folder))
    complete(b.url, id_slot=0)
    r = action(b.url, 0, "restore", "model.bin")
    assert r.status_code == 400 and "different model" in r.json()["error"]["message"], r.text
    assert "model_fingerprint" in r.json()["error"]["message"]
    # refused before touching memory: the slot keeps its own cache
    assert httpx.get(b.url + "/slots").json()[0]["n_past"] > 0


def test_llama_cpp_refusal_without_metadata_is_400(live_server, tmp_path, tiny_model):
    """A file without our metadata (as llama.cpp's server writes them) from a model of another shape."""
    folder = tmp_path / "slots"
    bigger = build_tiny_gguf(tmp_path / "bigger.gguf", n_layer=3)
    a = live_server("-np", "1", "-c", "512", "--slot-save-path", str(folder), model=bigger)
    complete(a.url, id_slot=0)
    assert action(a.url, 0, "save", "foreign.bin").status_code == 200
    (folder / ".foreign.bin.meta.json").unlink()
    b = live_server("-np", "1", "-c", "512", "--slot-save-path", str(folder))
    r = action(b.url, 0, "restore", "foreign.bin")
    assert r.status_code == 400 and "llama.cpp refused" in r.json()["error"]["message"], r.text
    assert httpx.get(b.url + "/slots").json()[0]["n_past"] == 0
    assert complete(b.url, id_slot=0)["tokens_predicted"] == 4  # the slot still works


def test_damaged_file_is_refused(saving):
    url = saving.url
    complete(url, id_slot=0)
    action(url, 0, "save", "dmg.bin")
    path = saving.folder / "dmg.bin"
    path.write_bytes(path.read_bytes()[:1000])  # truncated behind our back
    r = action(url, 0, "restore", "dmg.bin")
    assert r.status_code == 400 and "does not match its metadata" in r.json()["error"]["message"]
    (saving.folder / ".dmg.bin.meta.json").unlink()
    r = action(url, 0, "restore", "dmg.bin")
    assert r.status_code == 400 and "llama.cpp refused" in r.json()["error"]["message"]


def test_saving_over_an_existing_file_replaces_it_whole(saving):
    url = saving.url
    complete(url, id_slot=0, prompt="short one")
    small = action(url, 0, "save", "same.bin").json()
    complete(url, id_slot=0)
    big = action(url, 0, "save", "same.bin").json()
    assert big["n_saved"] > small["n_saved"]
    assert action(url, 1, "restore", "same.bin").json()["n_restored"] == big["n_saved"]


def test_concurrent_saves_of_two_slots(saving):
    url = saving.url
    complete(url, id_slot=0)
    complete(url, id_slot=1, prompt="another prompt entirely")
    out = {}

    def save(i):
        out[i] = action(url, i, "save", f"c{i}.bin")

    threads = [threading.Thread(target=save, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert out[0].status_code == out[1].status_code == 200
    assert out[0].json()["n_saved"] != out[1].json()["n_saved"]
