"""--cache-ram on the tiny model, real HTTP: a conversation evicted from the only slot comes back from RAM."""

from __future__ import annotations

import httpx

from kubellama_server.testing.tiny_gguf import build_tiny_lora

A = "alpha: the llama keeps its conversation in a slot and " * 14  # ~800 tokens on the tiny vocabulary
B = "bravo: another client talks about something else entirely " * 14


def complete(srv, prompt: str, **body) -> dict:
    body = {"prompt": prompt, "n_predict": 8, "temperature": 0, "cache_prompt": True, "n_probs": 3, **body}
    r = httpx.post(srv.url + "/completion", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def probs(r: dict) -> list:
    """The top candidates of each generated token, rounded (a prompt evaluated in other batches differs in the last bits)."""
    return [[(p["id"], round(p["logprob"], 4)) for p in step["top_logprobs"]] for step in r["completion_probabilities"]]


def metric(srv, name: str) -> float:
    for line in httpx.get(srv.url + "/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    raise KeyError(name)


def test_an_evicted_conversation_is_restored_from_ram(live_server):
    flags = ("-np", "1", "-c", "2048")
    ref = live_server(*flags, "--cache-ram", "0")  # the slot keeps A between its turns: the answer to compare with
    a1 = complete(ref, A)
    turn2 = A + a1["content"] + " and the next question"
    want = complete(ref, turn2)
    assert want["tokens_cached"] >= a1["tokens_evaluated"]
    # without the RAM cache a conversation in between evicts A: its next turn re-evaluates everything
    complete(ref, B)
    again = complete(ref, turn2)
    assert again["tokens_cached"] < 10 and again["timings"]["prompt_n"] == again["tokens_evaluated"] - again["tokens_cached"]
    assert ref.engine.scheduler.prompt_cache is None  # 0: off, nothing copied

    srv = live_server(*flags, "--cache-ram", "64", "--metrics")
    assert complete(srv, A)["content"] == a1["content"]
    b = complete(srv, B)
    assert b["tokens_cached"] < 10  # B evicted A from the only slot (A went to RAM)
    got = complete(srv, turn2)
    assert got["tokens_cached"] == want["tokens_cached"]  # A's whole previous prompt and answer, loaded from RAM
    assert got["timings"]["cache_n"] == want["tokens_cached"]
    # the restored KV is the slot's own: the same answer and the same probabilities, to the last bit
    assert got["content"] == want["content"]
    assert got["completion_probabilities"] == want["completion_probabilities"]
    assert metric(srv, "kubellama_prompt_cache_loads_total") == 1
    assert metric(srv, "kubellama_prompt_cache_entries") == 2  # A (loaded, kept) and B
    assert 0 < metric(srv, "kubellama_prompt_cache_bytes") <= 64 << 20
    assert metric(srv, "kubellama_prompt_cache_limit_bytes") == 64 << 20
    assert metric(srv, "llamacpp:prompt_tokens_cached_total") >= want["tokens_cached"]
    # B's turn comes back from RAM too
    assert complete(srv, B + b["content"])["tokens_cached"] >= b["tokens_evaluated"]


def test_the_byte_bound_evicts_the_oldest_prompts(live_server):
    srv = live_server("-np", "1", "-c", "2048", "--cache-ram", "1")  # 1 MiB: three of these prompts
    cache = srv.engine.scheduler.prompt_cache
    prompts = [f"conversation {i}: " + f"topic {i} is discussed at length here, " * 40 for i in range(6)]
    first = []
    for p in prompts:  # each new conversation pushes the previous one to RAM
        first.append(complete(srv, p, n_probs=0))
        assert cache.n_bytes == sum(e.size for e in cache.entries) <= 1 << 20
    assert cache.n_saved == 5 and cache.n_evicted == 5 - cache.n_entries and cache.n_entries >= 2
    assert all(e.size > 200 << 10 for e in cache.entries)
    newest, oldest = len(prompts) - 2, 0  # the last conversation is still in the slot
    assert complete(srv, prompts[newest] + first[newest]["content"], n_probs=0)["tokens_cached"] >= first[newest]["tokens_evaluated"]
    assert complete(srv, prompts[oldest] + first[oldest]["content"], n_probs=0)["tokens_cached"] < 20  # evicted
    assert cache.n_bytes <= 1 << 20


def test_entries_are_keyed_on_the_lora_scales(live_server, tmp_path):
    lora = build_tiny_lora(tmp_path / "lora.gguf")
    srv = live_server("--lora", str(lora), "-np", "1", "-c", "2048", "--cache-ram", "16")
    off = [{"id": 0, "scale": 0.0}]
    a_on = complete(srv, A)  # scale 1 (the default)
    complete(srv, B)  # A to RAM, computed with the adapter on
    a_off = complete(srv, A, lora=off)
    assert a_off["tokens_cached"] < 10  # the RAM entry has other scales: not reused
    assert probs(a_off) != probs(a_on)
    complete(srv, B)  # A (adapter off) to RAM beside A (adapter on)
    again_on = complete(srv, A)
    assert again_on["tokens_cached"] >= a_on["tokens_evaluated"] - 1  # the entry with the adapter on
    assert probs(again_on) == probs(a_on)
    again_off = complete(srv, A, lora=off)
    assert again_off["tokens_cached"] >= a_off["tokens_evaluated"] - 1
    assert probs(again_off) == probs(a_off)


def test_a_prompt_saved_from_one_slot_loads_into_another(live_server):
    ref = live_server("-np", "1", "-c", "1024", "--cache-ram", "0")
    a1 = complete(ref, A, id_slot=0)
    turn2 = A + a1["content"] + " and the next question"
    want = complete(ref, turn2)
    srv = live_server("-np", "2", "-c", "2048", "--cache-ram", "16")
    complete(srv, A, id_slot=0)
    complete(srv, B, id_slot=0)  # A to RAM
    got = complete(srv, turn2, id_slot=1)
    assert got["tokens_cached"] == want["tokens_cached"] and got["content"] == want["content"]
    assert got["completion_probabilities"] == want["completion_probabilities"]


def test_kv_unified_sends_the_caches_it_drops_to_ram(live_server):
    srv = live_server("-np", "2", "-c", "2048", "-kvu", "--cache-ram", "16")
    cache = srv.engine.scheduler.prompt_cache
    a = complete(srv, A, n_probs=0)
    b = complete(srv, B, n_probs=0)  # the other slot: both fit in the pool
    c = complete(srv, "charlie: a long story " * 60, n_probs=0)  # needs the room of one of them
    assert cache.n_entries >= 1 and a["tokens_evaluated"] + b["tokens_evaluated"] + c["tokens_evaluated"] > 2048
    # both come back from RAM (the pool drops the others' caches to make room for each)
    for prompt, first in ((A, a), (B, b)):
        assert complete(srv, prompt + first["content"], n_probs=0)["tokens_cached"] >= first["tokens_evaluated"]
    assert cache.n_loaded == 2 and cache.n_saved >= 3  # A and B loaded; A, B and C saved (B and C by the pool)
