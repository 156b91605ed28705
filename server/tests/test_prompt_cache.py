"""--cache-ram's policy (engine/prompt_cache.py): what is saved, loaded and evicted, without a model."""

from __future__ import annotations

import pytest

from kubellama_server.cli import parse_settings
from kubellama_server.engine.prompt_cache import (MIB, Entry, PromptCache, as_tokens, evictions, lcp, limit_bytes,
                                                  should_load, should_save)
from kubellama_server.settings import CACHE_RAM_MIB, default_cache_ram_mib


def entry(tokens, size=100, lora=()) -> Entry:
    tokens = as_tokens(tokens)
    return Entry(tokens, lora, b"x" * (size - tokens.nbytes))


def test_lcp():
    assert lcp(as_tokens([1, 2, 3]), as_tokens([1, 2, 4, 5])) == 2
    assert lcp(as_tokens([1, 2]), as_tokens([1, 2, 3])) == 2
    assert lcp(as_tokens([]), as_tokens([1])) == 0
    assert lcp(as_tokens([-7, 1]), as_tokens([-8, 1])) == 0  # two images' keys differ


def test_save_when_the_task_keeps_less_than_half():
    assert should_save(100, 0) and should_save(100, 49)
    assert not should_save(100, 50) and not should_save(100, 100)
    assert not should_save(0, 0)  # an empty slot has nothing to save


def test_load_only_when_it_beats_the_slot_and_the_copy():
    assert should_load(100, 0) and should_load(100, 50, 60)
    assert not should_load(100, 100) and not should_load(100, 0, 98)  # a few tokens more is not worth a state copy
    assert not should_load(0, 0)


def test_evictions_oldest_first_within_the_bound():
    assert evictions([40, 30, 20], 10, 100) == []
    assert evictions([40, 30, 20], 20, 100) == [0]
    assert evictions([40, 30, 20], 60, 100) == [0, 1]
    assert evictions([40, 30, 20], 60, 100, protect=0) == [1, 2]
    assert evictions([40, 30, 20], 70, 100, protect=0) is None  # 70 + the protected 40 > 100
    assert evictions([40], 101, 100) is None  # larger than the bound: never stored
    assert evictions([40, 30, 20], 1000, None) == []  # no limit
    assert evictions([1, 1, 1], 1, None, max_entries=3) == [0]


def test_the_byte_total_never_exceeds_the_bound():
    cache = PromptCache(limit=1000)
    for i in range(20):
        assert cache.add(entry([i, 1, 2], size=300 + i)) is not None
        assert cache.n_bytes == sum(e.size for e in cache.entries) <= 1000
    assert [int(e.tokens[0]) for e in cache.entries] == [17, 18, 19]  # the newest
    assert cache.n_evicted == 17 and cache.n_saved == 20
    assert cache.add(entry([99], size=1001)) is None and cache.n_entries == 3  # too large: not stored, nothing lost


def test_a_longer_save_of_a_conversation_replaces_its_prefix():
    cache = PromptCache(limit=None)
    cache.add(entry([1, 2, 3]))
    cache.add(entry([1, 2, 9]))
    assert cache.add(entry([1, 2, 3, 4, 5])) == []
    assert sorted(e.tokens.tolist() for e in cache.entries) == [[1, 2, 3, 4, 5], [1, 2, 9]]
    assert cache.contains(as_tokens([1, 2, 3, 4]), ()) and not cache.contains(as_tokens([1, 2, 3, 4, 6]), ())


def test_best_is_the_longest_prefix_with_the_same_lora_scales():
    cache = PromptCache(limit=None)
    a, b, c = entry([1, 2, 3, 4]), entry([1, 2, 3, 4, 5, 6], lora=(0.5,)), entry([1, 2, 7])
    for e in (a, b, c):
        cache.add(e)
    assert cache.best(as_tokens([1, 2, 3, 4, 5, 6, 8]), ()) == (a, 4)
    assert cache.best(as_tokens([1, 2, 3, 4, 5, 6, 8]), (0.5,)) == (b, 6)
    assert cache.best(as_tokens([1, 2, 3, 4, 5, 6, 8]), (1.0,)) == (None, 0)
    assert cache.best(as_tokens([9]), ()) == (None, 0)


def test_a_loaded_entry_is_evicted_last_and_protected_while_saving():
    cache = PromptCache(limit=300)
    a, b, c = entry([1]), entry([2]), entry([3])
    for e in (a, b, c):
        cache.add(e)
    cache.touch(a, 1)
    assert cache.entries == [b, c, a] and cache.n_loaded == 1 and cache.n_tokens_loaded == 1
    cache.touch(b)  # oldest is now c
    d = entry([4])
    assert cache.add(d, protect=c) == [a]  # c, the entry about to be loaded, stays
    assert cache.entries == [c, b, d]


def test_limit_bytes():
    assert limit_bytes(-1) is None and limit_bytes(0) == 0 and limit_bytes(2) == 2 * MIB


def test_default_is_llama_cpps_capped_by_the_memory_limit(tmp_path):
    v2 = tmp_path / "memory.max"
    assert default_cache_ram_mib((str(tmp_path / "none"),)) == CACHE_RAM_MIB == 8192
    v2.write_text("max\n")
    assert default_cache_ram_mib((str(v2),)) == 8192
    v2.write_text(str(4 << 30))
    assert default_cache_ram_mib((str(v2),)) == 1024  # a quarter of a 4 GiB pod
    v2.write_text(str(64 << 30))
    assert default_cache_ram_mib((str(v2),)) == 8192
    v1 = tmp_path / "limit_in_bytes"
    v1.write_text("9223372036854771712")  # cgroup v1 without a limit
    assert default_cache_ram_mib((str(tmp_path / "none"), str(v1))) == 8192


def test_cache_ram_flag_and_env():
    argv = ["-m", "x.gguf"]
    assert parse_settings(argv + ["--cache-ram", "0"], environ={})[0].cache_ram == 0
    assert parse_settings(argv + ["-cram", "-1"], environ={})[0].cache_ram == -1
    assert parse_settings(argv, environ={"LLAMA_ARG_CACHE_RAM": "512"})[0].cache_ram == 512
    with pytest.raises(SystemExit):
        parse_settings(argv + ["--cache-ram", "-2"], environ={})


def test_out_of_host_memory_lowers_the_bound_as_llama_cpp():
    cache = PromptCache(limit=None)
    for i in range(5):
        cache.add(entry([i], size=100))
    gone = cache.shrink()
    assert cache.limit == 200 and [int(e.tokens[0]) for e in gone] == [0, 1, 2]
    assert cache.n_bytes == 200 and [int(e.tokens[0]) for e in cache.entries] == [3, 4]
    assert cache.add(entry([9], size=150)) is not None and cache.n_bytes <= 200


class FakeCtx:
    """Sequence states as token lists (4 bytes a token): what host_cache asks llama.cpp for."""

    def __init__(self, fail: bool = False):
        self.seqs: dict[int, list[int]] = {}
        self.fail = fail

    def state_seq_size(self, seq):
        return 4 * len(self.seqs.get(seq, []))

    def state_seq_get(self, seq, size):
        if self.fail:
            raise MemoryError
        return bytes(size)

    def state_seq_set(self, seq, data):
        self.seqs[seq] = ["restored"] * (len(data) // 4)
        return True

    def seq_rm(self, seq, p0, p1=-1):
        self.seqs[seq] = self.seqs.get(seq, [])[:p0] if p0 > 0 else []
        return True


def fake_sched(limit=None, fail=False):
    from types import SimpleNamespace

    return SimpleNamespace(prompt_cache=PromptCache(limit), ctx=FakeCtx(fail), kv_unified=False)


def fake_slot(sched, tokens, lora=()):
    from types import SimpleNamespace

    sched.ctx.seqs[0] = list(tokens)
    return SimpleNamespace(id=0, cache_tokens=list(tokens), cache_lora=lora)


def fake_task(tokens, lora=(), cache_prompt=True, kind="completion"):
    from types import SimpleNamespace

    return SimpleNamespace(kind=kind, tokens=list(tokens), launch_tokens=None, lora=lora,
                           params=SimpleNamespace(cache_prompt=cache_prompt))


def test_prepare_slot_saves_what_the_task_discards_and_loads_what_it_continues():
    from kubellama_server.engine.host_cache import prepare_slot

    sched = fake_sched()
    a, b = list(range(100)), list(range(1000, 1100))
    slot = fake_slot(sched, a)
    assert prepare_slot(sched, fake_task(a + [7]), slot, 0) is False  # keeps all of it: nothing saved
    assert sched.prompt_cache.n_entries == 0
    assert prepare_slot(sched, fake_task(b), slot, 0) is False  # another conversation: A saved first
    assert [e.tokens.tolist() for e in sched.prompt_cache.entries] == [a]
    slot.cache_tokens = b + [5]
    assert prepare_slot(sched, fake_task(a + [8, 9]), slot, n_copy=20) is True  # beats the slot (0) and the copy (20)
    assert slot.cache_tokens == a and sched.prompt_cache.n_loaded == 1 and sched.prompt_cache.n_entries == 2
    assert prepare_slot(sched, fake_task(a, cache_prompt=False), fake_slot(sched, b + [5]), 0) is False  # no reuse: no load
    assert prepare_slot(sched, fake_task(a, lora=(0.5,)), fake_slot(sched, b + [5]), 0) is False  # other scales


def test_a_save_that_runs_out_of_host_memory_shrinks_the_cache():
    from kubellama_server.engine.host_cache import stash

    sched = fake_sched()
    sched.prompt_cache.add(entry([1], size=1000))
    sched.ctx.fail = True
    assert stash(sched, fake_slot(sched, range(50))) is False
    assert sched.prompt_cache.limit == 400 and sched.prompt_cache.n_entries == 0
    sched.ctx.fail = False
    assert stash(sched, fake_slot(sched, range(200))) is False  # 1600 bytes > the lowered bound: not kept
    assert stash(sched, fake_slot(sched, range(40))) is True
