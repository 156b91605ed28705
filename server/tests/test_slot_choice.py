"""Which idle slot takes a prompt: pure rule (`slot_choice.choose`) and on a real server.

A new conversation sharing a long system prompt takes an empty slot (with the system prompt
copied in) rather than another conversation's slot; a conversation's next turn stays in its slot."""

from __future__ import annotations

import httpx
import pytest

from kubellama_server.engine.slot_choice import COPY_COST, IdleSlot, choose


def test_a_conversation_stays_in_its_slot():
    own, other, empty = IdleSlot(300, 300 + COPY_COST - 1, 5.0), IdleSlot(200, 260, 1.0), IdleSlot(0, 0, 0.0)
    assert choose([other, empty, own], donor=300) == (2, False)


def test_a_new_conversation_takes_an_empty_slot_with_the_shared_prefix_copied():
    other, empty = IdleSlot(200, 260, 1.0), IdleSlot(0, 0, 0.0)
    assert choose([other, empty], donor=200) == (1, True)
    # nothing to lend: the empty slot as is (llama.cpp took the other conversation's slot)
    assert choose([IdleSlot(3, 260, 1.0), empty], donor=3) == (1, False)


def test_no_slot_free_of_another_conversation_the_lru_one_with_the_prefix_copied():
    long_other, short_other = IdleSlot(200, 900, 2.0), IdleSlot(200, 230, 3.0)
    assert choose([long_other, short_other], donor=200) == (0, False)  # LRU, as the router's index expects
    assert choose([IdleSlot(10, 900, 2.0), short_other], donor=200) == (0, True)  # seeded with the prefix
    a, b = IdleSlot(0, 50, 2.0), IdleSlot(0, 50, 1.0)
    assert choose([a, b]) == (1, False)
    # a short shared prefix is not worth a copy into an empty slot: plain LRU among empty slots
    assert choose([IdleSlot(0, 0, 2.0), IdleSlot(0, 0, 1.0)], donor=COPY_COST // 2) == (1, False)


SYSTEM = "You are a careful assistant who answers questions about the planets of the solar system. " * 4


def _chat(url: str, messages) -> dict:
    r = httpx.post(url + "/v1/chat/completions", json={"messages": messages, "max_tokens": 4, "temperature": 0},
                   timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize("flags", [(), ("--kv-unified",)], ids=["per-slot-kv", "unified-kv"])
def test_two_conversations_sharing_a_system_prompt_keep_both_caches(live_server, flags):
    srv = live_server("-c", "2048", "-np", "2", *flags)
    convs = [[{"role": "system", "content": SYSTEM}, {"role": "user", "content": f"Tell me about planet {k}"}]
             for k in range(2)]
    first = []
    for k, msgs in enumerate(convs):
        d = _chat(srv.url, msgs)
        usage = d["usage"]
        if k:  # the second conversation reuses the system prompt (copied), in the other slot
            assert usage["prompt_tokens_details"]["cached_tokens"] > 100, usage
        first.append(usage["prompt_tokens"])
        msgs += [d["choices"][0]["message"], {"role": "user", "content": "And its moons?"}]
    slots = httpx.get(srv.url + "/slots").json()
    assert all(s["n_ctx"] and s.get("id") in (0, 1) for s in slots)
    for k, msgs in enumerate(convs):  # each next turn finds its whole history cached
        usage = _chat(srv.url, msgs)["usage"]
        assert usage["prompt_tokens_details"]["cached_tokens"] >= first[k] - 1, (k, usage)
