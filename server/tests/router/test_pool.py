"""The replica pool: saturation, the bounded queue, exhausted retries, replicas leaving (no network)."""

from __future__ import annotations

import asyncio

import pytest

from kubellama_router import strategies
from kubellama_router.keys import RouteKeys
from kubellama_router.pool import Pool, Rejected

pytestmark = pytest.mark.asyncio
A, B = "http://a:1", "http://b:1"


async def test_a_queued_request_takes_the_first_freed_replica():
    pool = Pool(strategies.make("least-load", seed=0), max_inflight=1, max_queue=1, queue_timeout=5)
    pool.set_replicas([A, B])
    first, second = await pool.acquire(RouteKeys()), await pool.acquire(RouteKeys())
    assert {first.name, second.name} == {A, B}
    waiter = asyncio.create_task(pool.acquire(RouteKeys()))
    await asyncio.sleep(0.05)
    assert pool.waiting == 1 and not waiter.done()
    with pytest.raises(Rejected) as full:  # the queue holds one
        await pool.acquire(RouteKeys())
    assert full.value.reason == "queue_full"
    pool.release(second.name)
    assert (await asyncio.wait_for(waiter, 1)).name == second.name
    assert pool.waiting == 0


async def test_timeouts_no_replicas_and_exhausted():
    pool = Pool(strategies.make("round-robin"), max_inflight=1, queue_timeout=0.2)
    with pytest.raises(Rejected) as none:
        await pool.acquire(RouteKeys())
    assert none.value.reason == "no_replicas"
    pool.set_replicas([A])
    await pool.acquire(RouteKeys())
    with pytest.raises(Rejected) as busy:
        await pool.acquire(RouteKeys())
    assert busy.value.reason == "timeout"
    with pytest.raises(Rejected) as tried:
        await pool.acquire(RouteKeys(), exclude=frozenset({A}))
    assert tried.value.reason == "exhausted"


async def test_a_waiting_request_is_served_when_a_replica_appears():
    pool = Pool(strategies.make("prefix", seed=0), queue_timeout=5)
    waiter = asyncio.create_task(pool.acquire(RouteKeys(prompt="x" * 200)))
    await asyncio.sleep(0.05)
    pool.set_replicas([B])  # e.g. the first pod turned ready
    assert (await asyncio.wait_for(waiter, 1)).name == B


async def test_a_removed_replica_drains_and_a_down_one_is_skipped():
    pool = Pool(strategies.make("round-robin"), down_seconds=30)
    pool.set_replicas([A, B])
    got = [(await pool.acquire(RouteKeys())).name for _ in range(2)]
    pool.set_replicas([B])
    assert A in pool.replicas and [r.url for r in pool.ready()] == [B]  # in flight: kept until released
    pool.release(A)
    assert A not in pool.replicas and got.count(A) == 1
    pool.set_replicas([A, B])
    pool.mark_down(B)
    assert {(await pool.acquire(RouteKeys())).name for _ in range(3)} == {A}
