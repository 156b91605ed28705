"""Routing strategies, the hash ring, the prefix index and key extraction: pure, no network."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from kubellama_router import strategies
from kubellama_router.chwbl import HashRing, load_ok
from kubellama_router.hashing import PromptHashes, block_hashes
from kubellama_router.keys import RouteKeys, extract
from kubellama_router.prefix_index import PrefixIndex
from kubellama_router.strategies import Candidate, Load

A, B, C = "http://a:1", "http://b:1", "http://c:1"


def cands(*loads: int, names=(A, B, C)) -> list[Candidate]:
    return [Candidate(n, inflight=l) for n, l in zip(names, loads)]


def load_of(cs) -> Load:
    return Load(sum(c.inflight for c in cs), len(cs))


def chat(*turns: str, system: str = "You are terse.") -> RouteKeys:
    msgs = [{"role": "system", "content": system}]
    for i, t in enumerate(turns):
        msgs.append({"role": "user" if i % 2 == 0 else "assistant", "content": t})
    return extract("/v1/chat/completions", {}, {"messages": msgs})


# --- building blocks ---------------------------------------------------------------------------

def test_block_hashes_are_chained_and_skip_the_partial_block():
    a = block_hashes("x" * 64 + "y" * 64 + "z" * 10, 64, 100)
    b = block_hashes("q" * 64 + "y" * 64, 64, 100)
    assert len(a) == 2 and len(b) == 2
    assert a[1] != b[1]  # same second block, different prefix: different hash
    assert block_hashes("x" * 64 * 10, 64, 3) == block_hashes("x" * 64 * 3, 64, 100)  # bounded


def P(*parts: str) -> PromptHashes:
    """A prompt of whole 8-character blocks (and a partial one) for the index tests."""
    return PromptHashes("".join(parts), 8, 100)


SYS, A1, A2, B1, C1 = "system::", "conv-a-1", "conv-a-2", "conv-b-1", "conv-c-1"


def test_prompt_hashes_tell_apart_what_differs_after_the_last_block():
    one, two = P(SYS, "hi"), P(SYS, "yo")
    assert one.blocks == two.blocks and one.full != two.full
    assert P(SYS, "hi there").prefix(len(SYS) + 2) == one.full  # a longer prompt extends it
    assert P(SYS).full != P(SYS).blocks[-1] and P("x").prefix(5) is None


def test_prefix_index_models_slots():
    idx = PrefixIndex(max_blocks=100)
    idx.record(A, P(SYS, A1), capacity=2)  # conversation a, turn 1
    idx.record(A, P(SYS, B1), capacity=2)  # conversation b
    assert idx.chains(A) == 2 and idx.matched(A, P(SYS, A1, A2)) == 2
    idx.record(A, P(SYS, A1, A2), capacity=2)  # a's next turn reuses a's slot
    assert idx.chains(A) == 2 and idx.extends(A, P(SYS, A1, A2, "x")) and idx.extends(A, P(SYS, B1, "x"))
    idx.record(A, P(SYS, C1), capacity=2)  # a third conversation on 2 slots evicts the least recent (b)
    assert idx.chains(A) == 2 and idx.matched(A, P(SYS, B1)) == 1 and not idx.extends(A, P(SYS, B1, "x"))
    assert idx.matched(A, P(SYS, A1, A2)) == 3  # the shared system prompt stays while a chain holds it
    # two conversations whose only difference is a short last message are two prompts, two slots
    idx.record(B, P(SYS, "hi"), capacity=2)
    idx.record(B, P(SYS, "yo"), capacity=2)
    assert idx.chains(B) == 2 and not idx.extends(B, P(SYS, "hey"))


def test_prefix_index_remembers_a_replica_that_blinks_out_and_forgets_one_gone_for_good():
    idx = PrefixIndex(forget_after=60, max_departed=2)
    for name in (A, B, C):
        idx.record(name, P(SYS, A1))
    idx.retain([B, C], now=0)  # A not ready for a moment (a readiness probe, a replaced slice)
    idx.retain([A, B, C], now=5)
    assert idx.matched(A, P(SYS, A1)) == 2
    idx.retain([C], now=10)  # A and B leave
    idx.retain([C], now=69)
    assert idx.size(A) == idx.size(B) == 2
    idx.retain([C], now=70)  # gone for forget_after
    assert idx.size(A) == idx.size(B) == 0 and idx.size(C) == 2
    for name in ("d", "e", "f"):
        idx.record(name, P(SYS))
    idx.retain([C], now=71)  # more departed than max_departed: the oldest is forgotten first
    assert sum(idx.size(n) > 0 for n in ("d", "e", "f")) == 2


def test_prefix_index_is_bounded_without_slot_counts():
    idx = PrefixIndex(max_blocks=10, max_chains=3)
    for i in range(10):
        idx.record(A, P(f"{i:08d}", f"{i:08d}"))
    assert idx.chains(A) == 3
    idx.record(A, PromptHashes("z" * 160, 8, 100))  # one chain over max_blocks: kept alone
    assert idx.chains(A) == 1 and idx.size(A) == 20


def test_kubeai_load_bound():
    assert load_ok(0, 0, 3, 1.25)  # idle: anything goes
    # total 5 on 3 replicas: threshold (5+1)/3*1.25 = 2.5
    assert load_ok(1, 5, 3, 1.25) and not load_ok(2, 5, 3, 1.25)


def test_ring_is_consistent_and_spreads_keys():
    ring = HashRing(256)
    ring.set_members([A, B, C])
    owners = Counter(ring.walk(f"key{i}")[0] for i in range(3000))
    assert set(owners) == {A, B, C} and min(owners.values()) > 600
    before = {f"key{i}": ring.walk(f"key{i}")[0] for i in range(1000)}
    ring.set_members([A, B])  # only C's keys move
    moved = [k for k, owner in before.items() if ring.walk(k)[0] != owner]
    assert moved and all(before[k] == C for k in moved)


# --- keys --------------------------------------------------------------------------------------

def test_chat_keys_extend_turn_by_turn():
    one, two = chat("What is 2+2?"), chat("What is 2+2?", "4", "And 3+3?")
    assert two.prompt.startswith(one.prompt)
    assert one.first_user == two.first_user == "What is 2+2?"


def test_keys_of_each_api():
    assert extract("/completion", {}, {"prompt": "abc"}).prompt == "abc"
    assert extract("/v1/completions", {}, {"prompt": ["abc", "d"]}).first_user == "abc"
    assert extract("/v1/completions", {}, {"prompt": [1, 2, 3]}).prompt == "1 2 3"
    anth = extract("/v1/messages", {}, {"system": "sys", "messages": [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]}]})
    assert anth.prompt.startswith("<|system|>sys") and anth.first_user == "hi"
    resp = extract("/v1/responses", {}, {"input": "hello", "instructions": "be brief"})
    assert resp.first_user == "hello" and "be brief" in resp.prompt
    assert extract("/v1/chat/completions", {"x-session-id": "s1"}, {"user": "u"}).session == "s1"
    assert extract("/v1/chat/completions", {}, {"user": "u", "messages": []}).session == "u"
    assert extract("/v1/messages", {}, {"metadata": {"user_id": "m"}, "messages": []}).session == "m"
    assert extract("/tokenize", {}, {"content": "x"}) == RouteKeys()
    assert extract("/v1/chat/completions", {}, ["not", "an", "object"]) == RouteKeys()


# --- strategies --------------------------------------------------------------------------------

def test_round_robin_cycles_and_random_covers_all():
    rr = strategies.make("round-robin")
    cs = cands(0, 0, 0)
    assert [rr.pick(RouteKeys(), cs, load_of(cs)).name for _ in range(4)] == [A, B, C, A]
    rnd = strategies.make("random", seed=1)
    assert {rnd.pick(RouteKeys(), cs, load_of(cs)).name for _ in range(50)} == {A, B, C}


def test_least_load_uses_inflight_and_scraped_load():
    ll = strategies.make("least-load", seed=0)
    assert ll.pick(RouteKeys(), cands(3, 1, 2), load_of(cands(3, 1, 2))).name == B
    # B has none of ours in flight but reports 5 queued (another router's): C wins
    cs = [Candidate(A, 3), Candidate(B, 0, queued=4, processing=1), Candidate(C, 1)]
    assert ll.pick(RouteKeys(), cs, load_of(cs)).name == C


def test_prefix_sticks_a_multi_turn_chat_to_its_replica():
    st = strategies.make("prefix", seed=0)
    system = "You are a helpful assistant who answers in one word. " * 4
    cs = cands(0, 0, 0)
    first = st.pick(chat("Tell me about the moon and its phases please.", system=system), cs, load_of(cs))
    assert first.outcome == "miss"
    for turns in (("Tell me about the moon and its phases please.", "Waxing.", "And the sun, what about it?"),
                  ("Tell me about the moon and its phases please.", "Waxing.", "And the sun, what about it?",
                   "Hot.", "Thanks, and Mars?")):
        d = st.pick(chat(*turns, system=system), cs, load_of(cs))
        assert (d.name, d.outcome) == (first.name, "hit") and d.matched > 0


def test_prefix_prefers_the_longest_match():
    st = strategies.Prefix(block_chars=8, rng=random.Random(0))
    st.index.record(A, PromptHashes("0123456789abcdef", 8, 10))  # 2 blocks
    st.index.record(B, PromptHashes("0123456789abcdefGHIJKLMN", 8, 10))  # 3 blocks
    cs = cands(0, 0, 0)
    d = st.pick(RouteKeys(prompt="0123456789abcdefGHIJKLMNopq"), cs, load_of(cs))
    assert (d.name, d.outcome, d.matched) == (B, "hit", 3)


def test_prefix_spills_a_hot_prefix_under_the_load_bound():
    st = strategies.Prefix(block_chars=8, load_factor=1.25, rng=random.Random(0))
    hot = RouteKeys(prompt="the same long system prompt " * 4)
    st.index.record(A, PromptHashes(hot.prompt, 8, 100))
    cs = cands(4, 1, 1)  # threshold (6+1)/3*1.25 = 2.9: A (4) is over it
    d = st.pick(hot, cs, load_of(cs))
    assert d.name in (B, C) and d.outcome == "spill"
    assert st.index.matched(d.name, PromptHashes(hot.prompt, 8, 100)) > 0  # the spill's replica has it now
    fresh = strategies.Prefix(block_chars=8, load_factor=1.25, rng=random.Random(0))
    fresh.index.record(A, PromptHashes(hot.prompt, 8, 100))
    cs = cands(2, 2, 2)  # threshold 2.9: A may take one more
    assert (fresh.pick(hot, cs, load_of(cs)).name, fresh.pick(hot, cs, load_of(cs)).outcome) == (A, "hit")


def test_prefix_keeps_a_turn_on_its_replica_while_it_has_an_idle_slot():
    """At low load KubeAI's bound alone spills as soon as the holder has one request in flight
    ((1 + 1) > (1 + 1) / 3 x 1.25): the turn would evaluate its whole history elsewhere."""
    st = strategies.make("prefix", seed=0)
    first = chat("Tell me about the moon and its phases please, in detail, slowly.")
    cs = [Candidate(A, slots=4), Candidate(B, slots=4), Candidate(C, slots=4)]
    home = st.pick(first, cs, Load(0, 3)).name
    busy = [Candidate(c.name, inflight=1 if c.name == home else 0, slots=4) for c in cs]
    nxt = chat("Tell me about the moon and its phases please, in detail, slowly.", "Waxing.", "And then?")
    d = st.pick(nxt, busy, Load(1, 3))
    assert (d.name, d.outcome) == (home, "hit")
    full = [Candidate(c.name, inflight=4 if c.name == home else 0, slots=4) for c in cs]
    more = chat("Tell me about the moon and its phases please, in detail, slowly.", "Waxing.", "And then?", "Full.", "Next?")
    assert st.pick(more, full, Load(4, 3)).outcome == "spill"  # all its slots busy and over the bound


def test_prefix_starts_a_new_conversation_where_a_slot_is_idle_now():
    """A shared system prompt does not draw a new conversation into a queue: the replica holding it
    has all its slots busy (though under KubeAI's bound), another has one idle."""
    st = strategies.make("prefix", seed=0)
    system = "Shared group instructions, long enough for several blocks. " * 6
    cs = [Candidate(A, slots=4), Candidate(B, slots=4), Candidate(C, slots=4)]
    home = st.pick(chat("Conversation 0: hello there, a long question. " * 3, system=system), cs, Load(0, 3)).name
    loads = {home: 4, **{n: 4 for n in (A, B, C) if n != home}}
    idle = next(n for n in (A, B, C) if n != home)
    loads[idle] = 3
    busy = [Candidate(n, inflight=loads[n], slots=4) for n in (A, B, C)]
    d = st.pick(chat("Conversation 1: hello there, a long question. " * 3, system=system), busy, Load(11, 3))
    assert d.name == idle


def test_prefix_forgets_a_prompt_its_replica_refused():
    """A replica that refused a request (the proxy retried it elsewhere) does not hold the prompt:
    the next turn must not go back to it (both would look like holders, the pick at random)."""
    st = strategies.make("prefix", seed=0)
    cs = [Candidate(A, slots=4), Candidate(B, slots=4)]
    first = chat("Tell me about the moon and its phases please, in detail, slowly.")
    refused = st.pick(first, cs, Load(0, 2))
    st.refused(refused)
    took = st.pick(first, [c for c in cs if c.name != refused.name], Load(0, 1))
    nxt = chat("Tell me about the moon and its phases please, in detail, slowly.", "Waxing.", "And then?")
    assert {st.pick(nxt, cs, Load(0, 2)).name for _ in range(8)} == {took.name}


def test_prefix_starts_a_new_conversation_where_a_slot_is_spare():
    """A shared system prompt draws new conversations, but not into a replica whose slots all hold
    other conversations (that would evict one of them): llama.cpp's slots, known from /health."""
    st = strategies.make("prefix", seed=0)
    system = "Shared group instructions, long enough for several blocks. " * 6

    def conv(i, *turns):
        return chat(f"Conversation {i}: tell me something long and interesting please. " * 3, *turns, system=system)

    cs = [Candidate(A, slots=2), Candidate(B, slots=2), Candidate(C, slots=2)]
    homes = [st.pick(conv(i), cs, Load(0, 3)).name for i in range(2)]
    assert homes == [homes[0]] * 2  # the second conversation joins the first (system prompt cached)
    third = st.pick(conv(2), cs, Load(0, 3))
    assert third.name != homes[0] and third.outcome == "spill"  # the home's 2 slots are taken
    # each conversation's next turn goes back to its own slot, full replica or not
    assert st.pick(conv(0, "ok", "more"), cs, Load(0, 3)) .name == homes[0]
    assert st.pick(conv(2, "ok", "more"), cs, Load(0, 3)).name == third.name


def test_prefix_finds_a_conversation_its_replica_keeps_in_ram():
    """A replica with a host-memory prompt cache (--cache-ram) keeps the conversations other ones
    evicted from its slot: the next turn goes back there (a load from RAM), not to an idle replica
    (which would evaluate the whole history). Without the cache the evicted one is not held."""
    system = "Shared group instructions, long enough for several blocks. " * 6

    def conv(i, *turns):
        return chat(f"Conversation {i}: tell me something long and interesting please. " * 3, *turns, system=system)

    for ram in (4, 0):
        st = strategies.make("prefix", seed=0)
        only_a = [Candidate(A, slots=1, ram=ram)]
        for i in range(3):  # three conversations on A's one slot (B not ready yet)
            st.pick(conv(i), only_a, Load(0, 1))
        both = [Candidate(A, slots=1, ram=ram), Candidate(B, slots=1, ram=ram)]
        d = st.pick(conv(0, "ok", "more"), both, Load(0, 2))
        assert (d.name, d.outcome) == ((A, "hit") if ram else (B, "spill")), ram


def test_prefix_starts_a_new_conversation_where_it_evicts_nobody():
    """Every slot taken: a new conversation goes where the slot's prompt moves to RAM (a copy), not
    where it drops another conversation's cache; a free slot still comes first."""
    system = "Shared group instructions, long enough for several blocks. " * 6

    def conv(i):
        return chat(f"Conversation {i}: tell me something long and interesting please. " * 3, system=system)

    for seed in range(6):
        st = strategies.make("prefix", seed=seed)
        st.pick(conv(0), [Candidate(A, slots=1)], Load(0, 1))
        st.pick(conv(1), [Candidate(B, slots=1, ram=2)], Load(0, 1))
        full = [Candidate(A, slots=1), Candidate(B, slots=1, ram=2)]
        assert st.pick(conv(2 + seed), full, Load(0, 2)).name == B
        spare = [Candidate(A, slots=1), Candidate(B, slots=1, ram=2), Candidate(C, slots=1, ram=2)]
        assert st.pick(conv(10 + seed), spare, Load(0, 3)).name == C  # C's slot is free


def test_prefix_without_slot_counts_spreads_new_conversations():
    """Slot counts not scraped yet (or not reported): a shared system prompt does not pile every new
    conversation onto one replica; each goes where the fewest are held, its turns stay there."""
    st = strategies.make("prefix", seed=0)
    system = "Shared group instructions, long enough for several blocks. " * 6
    convs = [chat(f"Conversation {i}: tell me something long and interesting please. " * 3, system=system)
             for i in range(6)]
    cs = cands(0, 0, 0)
    homes = [st.pick(k, cs, load_of(cs)).name for k in convs]
    assert Counter(homes) == {A: 2, B: 2, C: 2}
    again = [st.pick(RouteKeys(prompt=k.prompt + "<|assistant|>ok\n"), cs, load_of(cs)) for k in convs]
    assert [d.name for d in again] == homes and {d.outcome for d in again} == {"hit"}


def test_prefix_miss_goes_to_the_least_loaded():
    st = strategies.make("prefix", seed=0)
    cs = cands(2, 0, 1)
    d = st.pick(RouteKeys(prompt="never seen " * 20), cs, load_of(cs))
    assert (d.name, d.outcome) == (B, "miss")


def test_session_sticks_and_spills_when_loaded():
    st = strategies.make("session", seed=0)
    st.members([A, B, C])
    keys = RouteKeys(session="user-42")
    cs = cands(0, 0, 0)
    home = st.pick(keys, cs, load_of(cs)).name
    assert all(st.pick(keys, cs, load_of(cs)).name == home for _ in range(5))
    loaded = [Candidate(c.name, 6 if c.name == home else 0) for c in cs]
    d = st.pick(keys, loaded, load_of(loaded))
    assert d.name != home and d.outcome == "spill"
    assert st.pick(RouteKeys(), cs, load_of(cs)).outcome == "miss"


def test_kubeai_prefixhash_keys_on_the_first_100_chars_of_the_first_user_message():
    st = strategies.make("kubeai-prefixhash", seed=0)
    st.members([A, B, C])
    cs = cands(0, 0, 0)
    q = "x" * 100
    homes = {st.pick(chat(q + tail, system=sys), cs, load_of(cs)).name
             for tail, sys in (("a", "s1"), ("b", "s2"), ("c" * 50, "s3"))}
    assert len(homes) == 1  # only the first 100 chars of the first user message count
    # a conversation's later turns keep the same key
    assert st.pick(chat(q, "ok", "more"), cs, load_of(cs)).name in homes
    # a different first message spreads over the ring
    spread = {st.pick(chat(f"question {i}"), cs, load_of(cs)).name for i in range(60)}
    assert spread == {A, B, C}


@pytest.mark.parametrize("name", strategies.NAMES)
def test_every_strategy_picks_a_candidate(name):
    st = strategies.make(name, seed=3)
    st.members([A, B, C])
    cs = cands(1, 0, 2, names=(A, C, B))[:2]  # B not a candidate (saturated or tried)
    for keys in (RouteKeys(), chat("hello there, a question about everything " * 3),
                 RouteKeys(session="s", first_user="f")):
        assert st.pick(keys, cs, Load(3, 3)).name in (A, C)
    with pytest.raises(ValueError):
        strategies.make("nope")


# --- EndpointSlices and the command line -------------------------------------------------------

def test_only_ready_endpoints_on_the_named_port():
    from kubellama_router.endpoints import ready_urls

    slices = {
        "s1": {"addressType": "IPv4", "ports": [{"name": "metrics", "port": 9}, {"name": "http", "port": 8080}],
               "endpoints": [{"addresses": ["10.0.0.1"], "conditions": {"ready": True}},
                             {"addresses": ["10.0.0.2"], "conditions": {"ready": False}},
                             {"addresses": ["10.0.0.3"], "conditions": {"ready": False, "terminating": True}},
                             {"addresses": ["10.0.0.4"]}]},  # unknown readiness reads as ready
        "s2": {"addressType": "IPv6", "ports": [{"name": "http", "port": 8080}],
               "endpoints": [{"addresses": ["fd00::5"], "conditions": {"ready": True}}]},
        "s3": {"addressType": "IPv4", "ports": [{"name": "other", "port": 1}], "endpoints": [
            {"addresses": ["10.0.0.9"], "conditions": {"ready": True}}]},
    }
    assert ready_urls(slices, "http") == ["http://10.0.0.1:8080", "http://10.0.0.4:8080", "http://[fd00::5]:8080"]


def test_cli_flags_env_and_checks(capsys):
    from kubellama_router.cli import parse

    s = parse(["--replica", "http://a:1", "--replica", "http://b:2", "--strategy", "least-load"], environ={})
    assert s.replicas == ["http://a:1", "http://b:2"] and s.strategy == "least-load"
    s = parse([], environ={"KUBELLAMA_ROUTER_REPLICAS": "http://a:1,http://b:2", "KUBELLAMA_ROUTER_MAX_QUEUE": "5"})
    assert s.replicas == ["http://a:1", "http://b:2"] and s.max_queue == 5 and s.strategy == "prefix"
    for bad in (["--replica", "a:1"], ["--replica", "http://a", "--strategy", "nope"], [],
                ["--replica", "http://a", "--load-factor", "0.5"]):
        with pytest.raises(SystemExit):
            parse(bad, environ={})
