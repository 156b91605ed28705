"""Self-extend (--grp-attn-n/-w): position arithmetic against llama.cpp's KV operations,
and a live server whose KV positions, cache reuse and limits follow it."""

from __future__ import annotations

import random

import httpx
import pytest

from kubellama_server.engine.self_extend import SelfExtend, SelfExtendError


class FakeKV:
    """The positions of one sequence under llama.cpp's seq_add / seq_div semantics ([p0, p1))."""

    def __init__(self):
        self.pos: list[int] = []

    def add(self, p0, p1, delta):
        self.pos = [p + delta if p0 <= p < p1 else p for p in self.pos]

    def div(self, p0, p1, d):
        self.pos = [p // d if p0 <= p < p1 else p for p in self.pos]


def reference_positions(n_tokens: int, ga_n: int, ga_w: int) -> list[int]:
    """Token by token as llama.cpp's server did self-extend (ga_i / n_past_se bookkeeping,
    compressing lazily just before the token after a full window)."""
    kv, n_past_se, ga_i = FakeKV(), 0, 0
    for _ in range(n_tokens):
        while n_past_se >= ga_i + ga_w:
            ib = (ga_n * ga_i) // ga_w
            bd = (ga_w // ga_n) * (ga_n - 1)
            dd = (ga_w // ga_n) - ib * bd - ga_w
            kv.add(ga_i, n_past_se, ib * bd)
            kv.div(ga_i + ib * bd, ga_i + ib * bd + ga_w, ga_n)
            kv.add(ga_i + ib * bd + ga_w, n_past_se + ib * bd, dd)
            n_past_se -= bd
            ga_i += ga_w // ga_n
        kv.pos.append(n_past_se)
        n_past_se += 1
    return kv.pos


def run_scheduler_arithmetic(se: SelfExtend, n_tokens: int, rng: random.Random) -> FakeKV:
    """What the scheduler does: batches of random size (never past the open window), then
    the window's compression once it is full."""
    kv = FakeKV()
    while len(kv.pos) < n_tokens:
        n = len(kv.pos)
        take = min(rng.randint(1, se.w), se.room(n), n_tokens - n)
        base = se.position(n, n)
        kv.pos += [base + k for k in range(take)]
        if len(kv.pos) % se.w == 0:
            (a0, a1, delta), (d0, d1, d) = se.compression(se.windows(len(kv.pos)) - 1)
            kv.add(a0, a1, delta)
            kv.div(d0, d1, d)
        assert kv.pos == [se.position(i, len(kv.pos)) for i in range(len(kv.pos))]
    return kv


@pytest.mark.parametrize("ga_n,ga_w", [(2, 8), (4, 32), (3, 12), (8, 64)])
def test_positions_follow_llama_cpp_kv_operations_and_match_its_server(ga_n, ga_w):
    se = SelfExtend(ga_n, ga_w)
    rng = random.Random(ga_n * 1000 + ga_w)
    for n_tokens in list(range(1, 5 * ga_w + 3)) + [17 * ga_w + 5]:
        kv = run_scheduler_arithmetic(se, n_tokens, rng)
        if n_tokens % ga_w:  # llama.cpp compressed a full window only before the next token
            assert kv.pos == reference_positions(n_tokens, ga_n, ga_w)
    # old tokens take N times fewer positions
    assert se.position(10 * ga_w, 10 * ga_w) == 10 * ga_w // ga_n


def test_keepable_prefix_is_whole_windows_or_inside_the_open_window():
    se = SelfExtend(4, 32)
    assert se.keepable(90, 107) == 64  # inside compressed window 2 of 3: back to its start
    assert se.keepable(100, 107) == 100  # in the open window
    assert se.keepable(96, 107) == 96  # the boundary itself
    assert se.keepable(0, 107) == 0
    assert se.room(107) == 21 and se.room(96) == 32


def test_settings():
    assert SelfExtend.from_settings(1, 512) is None
    assert SelfExtend.from_settings(4, 512) == SelfExtend(4, 512)
    for n, w in ((0, 512), (4, 30), (2, 0), (-2, 8)):
        with pytest.raises(SelfExtendError, match="--grp-attn"):
            SelfExtend.from_settings(n, w)


# -- a live server on the tiny model --------------------------------------------------

GA = ("--grp-attn-n", "4", "--grp-attn-w", "32")


def _complete(srv, prompt, n_predict, **extra):
    body = {"prompt": prompt, "n_predict": n_predict, "ignore_eos": True, "temperature": 0,
            "cache_prompt": True, **extra}
    r = httpx.post(srv.url + "/completion", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def _kv_state(srv, slot=0):
    return srv.engine.scheduler.call(lambda s: (s.slots[slot].n_past, s.ctx.seq_pos_max(slot))).result(timeout=30)


def test_kv_positions_grow_n_times_slower(live_server):
    plain = live_server("-np", "1", "-c", "1024")
    extended = live_server("-np", "1", "-c", "1024", *GA)
    prompt = list(range(10, 80))  # 70 token ids
    for srv in (plain, extended):
        out = _complete(srv, prompt, 60)
        assert out["tokens_predicted"] == 60 and out["tokens_evaluated"] == 70
    n_past, pos_max = _kv_state(plain)
    assert n_past == 129 and pos_max == 128
    n_past, pos_max = _kv_state(extended)
    # 128 tokens in four full windows of 32 take 8 positions each; token 129 is at 32
    assert n_past == 129 and pos_max == 32


def test_reused_prefix_gives_the_same_output_as_a_fresh_server(live_server):
    first = live_server("-np", "1", "-c", "1024", *GA)
    _complete(first, list(range(10, 110)), 8)  # 107 tokens cached: three compressed windows
    second_prompt = list(range(10, 100)) + list(range(300, 330))
    reused = _complete(first, second_prompt, 16)
    assert reused["tokens_cached"] == 64  # the 90 shared tokens end inside window 2: back to its start
    fresh = _complete(live_server("-np", "1", "-c", "1024", *GA), second_prompt, 16)
    assert fresh["tokens_cached"] == 0
    assert reused["tokens"] == fresh["tokens"] and reused["content"] == fresh["content"]


def test_no_truncation_or_context_shift_with_self_extend(live_server):
    srv = live_server("-np", "1", "-c", "256", *GA)  # llama.cpp pads n_ctx to a multiple of 256
    r = httpx.post(srv.url + "/completion", json={"prompt": [10 + i % 200 for i in range(300)], "n_predict": 4},
                   timeout=60)
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["type"] == "exceed_context_size_error" and "self-extend" in err["message"]
    out = _complete(srv, list(range(10, 30)), 500)  # runs into the end of the slot's context
    assert out["stopped_limit"] and out["tokens_predicted"] == 256 - 20 + 1
    n_past, pos_max = _kv_state(srv)
    assert n_past == 256 and pos_max == 256 // 4 - 1  # eight full windows, all compressed


def test_slot_files_are_refused_by_a_server_compressing_otherwise(live_server, tmp_path):
    a = live_server("-np", "1", "-c", "512", "--slot-save-path", str(tmp_path), *GA)
    _complete(a, list(range(10, 60)), 4)
    r = httpx.post(a.url + "/slots/0?action=save", json={"filename": "ga.bin"}, timeout=60)
    assert r.status_code == 200, r.text
    b = live_server("-np", "1", "-c", "512", "--slot-save-path", str(tmp_path))
    r = httpx.post(b.url + "/slots/0?action=restore", json={"filename": "ga.bin"}, timeout=60)
    assert r.status_code == 400
    assert "self_extend" in r.json()["error"]["message"]
    r = httpx.post(a.url + "/slots/0?action=restore", json={"filename": "ga.bin"}, timeout=60)
    assert r.status_code == 200 and r.json()["n_restored"] == 53
