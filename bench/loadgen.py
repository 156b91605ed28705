"""Async load generator: N concurrent streaming clients over real HTTP."""
from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Callable

import httpx

from bench import api as apis
from bench.stats import RequestRecord


@dataclass(frozen=True)
class RequestSpec:
    prompt: str
    n_predict: int
    seed: int
    system: str | None = None
    cache_prompt: bool = True


@dataclass
class ClientPlan:
    """One client: waits ``start_delay`` seconds, then sends its requests one after another."""

    requests: list[RequestSpec]
    group: str = "main"
    start_delay: float = 0.0


@dataclass
class Workload:
    name: str
    family: str  # "chat" or "completion" (native /completion, else /v1/completions)
    clients: list[ClientPlan]
    description: str = ""
    slots: int = field(default=0)  # parallel slots the server should have; 0 = len(clients)
    prime: bool = False  # run once, discarded, after each server start (fills prompt caches)

    @property
    def n_slots(self) -> int:
        return self.slots or len(self.clients)


def api_for(family: str, peer_apis: frozenset[str]) -> str | None:
    """The API flavour a peer uses for a workload family, or None if it has none."""
    if family == "chat":
        return apis.CHAT if apis.CHAT in peer_apis else None
    if family == "completion":
        for flavour in (apis.NATIVE, apis.COMPLETIONS):
            if flavour in peer_apis:
                return flavour
        return None
    raise ValueError(f"unknown workload family {family!r}")


async def one_request(client: httpx.AsyncClient, base_url: str, api: str, spec: RequestSpec,
                      sampling: apis.Sampling, eog_tokens: list[int], group: str,
                      count_tokens: Callable[[str], int] | None) -> RequestRecord:
    body = apis.build_body(api, spec.prompt, spec.n_predict, spec.seed, sampling, eog_tokens,
                           cache_prompt=spec.cache_prompt, system=spec.system)
    rec = RequestRecord(t_start=time.perf_counter(), t_end=0.0, group=group, n_expected=spec.n_predict)
    chunks = 0
    try:
        async with client.stream("POST", base_url + apis.PATHS[api], json=body) as resp:
            if resp.status_code != 200:
                text = (await resp.aread()).decode("utf-8", "replace")
                raise ValueError(f"HTTP {resp.status_code}: {text[:200]}")
            async for line in resp.aiter_lines():
                data = apis.sse_data(line)
                if data is None:
                    continue
                ev = apis.parse_event(api, data)
                now = time.perf_counter()
                if ev.text:
                    rec.chunk_times.append(now)
                    chunks += 1
                if ev.n_generated is not None:
                    rec.n_generated = int(ev.n_generated)
                if ev.n_prompt is not None:
                    rec.n_prompt = int(ev.n_prompt)
                if ev.done and api == apis.NATIVE:
                    break
    except (httpx.HTTPError, ValueError) as exc:
        rec.error = f"{type(exc).__name__}: {exc}"
    rec.t_end = time.perf_counter()
    if not rec.n_generated:
        rec.n_generated = chunks
    if not rec.n_prompt and count_tokens is not None:
        rec.n_prompt = count_tokens((spec.system or "") + spec.prompt)
    return rec


async def run_workload(base_url: str, api: str, workload: Workload, sampling: apis.Sampling,
                       eog_tokens: list[int], timeout_s: float = 600.0,
                       count_tokens: Callable[[str], int] | None = None) -> list[RequestRecord]:
    """Run every client of the workload concurrently; return one record per request."""
    limits = httpx.Limits(max_connections=len(workload.clients) + 4)
    timeout = httpx.Timeout(timeout_s, connect=10.0)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def run_client(plan: ClientPlan) -> list[RequestRecord]:
            if plan.start_delay:
                await asyncio.sleep(plan.start_delay)
            out = []
            for spec in plan.requests:
                out.append(await one_request(client, base_url, api, spec, sampling,
                                             eog_tokens, plan.group, count_tokens))
            return out

        per_client = await asyncio.gather(*(run_client(p) for p in workload.clients))
    return [r for recs in per_client for r in recs]
