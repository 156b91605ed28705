"""The reconcile steps of issue 19 (API calls only; the decisions are in model_cache, download_job, rollout).

Before the children are applied: with a shared cache, the cache claim (mode shared) and the download Job;
the StatefulSet is held back (not created, or left on its old template) until the Job is Complete; then the
StatefulSet's replicas and partition come from `rollout.plan`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import datetime

from . import GROUP, VERSION, cache_cleanup, model_cache, rollout
from .builders.download_job import Download, build_download_job, build_shared_claim, download_state, job_labels
from .builders.meta import ANNOTATION_MODEL, selector_labels
from .config import OperatorConfig
from .kube import KubeClient
from .model_status import slots_note
from .api import LlamaServerSpec
from .spec import Model, load

#: On the StatefulSet: the model the pods of its current template serve (a model change is told from others).
ANNOTATION_MODEL_KEY = "kubellama.dev/model-key"


@dataclass
class ModelState:
    download: Download | None = None
    plan: rollout.Plan | None = None
    cache: dict[str, Any] | None = None
    slots: str = ""
    progress_from: tuple[str, str] | None = None  # (pod, container) whose log has the download progress


async def _download(client: KubeClient, body: dict[str, Any], spec: LlamaServerSpec, model: Model,
                    config: OperatorConfig, apply: bool, state: ModelState) -> None:
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    if model_cache.mode(spec) == "shared" and apply and \
            await client.get("v1", "PersistentVolumeClaim", ns, model_cache.SHARED_CLAIM) is None:
        await client.apply(build_shared_claim(ns, spec))
    job = build_download_job(body, spec, model, config)
    job_name = job["metadata"]["name"]
    live = await client.get("batch/v1", "Job", ns, job_name)
    if live is None and apply:
        live = await client.apply(job)
    if apply:  # Jobs of an earlier model are done with (their files stay in the cache)
        for old in await client.list("batch/v1", "Job", ns, job_labels(name)):
            if old["metadata"]["name"] != job_name:
                await client.delete("batch/v1", "Job", ns, old["metadata"]["name"])
    pods = [p for p in await client.list("v1", "Pod", ns, job_labels(name))
            if (p["metadata"].get("labels") or {}).get("job-name") == job_name]
    state.download = download_state(job_name, live, pods, model)
    if state.download.state == "Running" and state.download.pod:
        state.progress_from = (state.download.pod, state.download.fetcher)


async def prepare(client: KubeClient, body: dict[str, Any], spec: LlamaServerSpec, model: Model, config: OperatorConfig,
                  want: list[dict[str, Any]], *, apply: bool) -> ModelState:
    """Download first, then plan the StatefulSet's rollout; edits `want` (the children to apply) in place."""
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    state = ModelState()
    if model_cache.is_shared(spec):
        files = model_cache.cache_files(spec, model)
        state.cache = {"mode": model_cache.mode(spec), "keys": [f.key for f in files]}
        previous = (body.get("status") or {}).get("cache")
        state.cache["released"] = cache_cleanup.released(previous, state.cache["keys"], _now())
        state.cache["removed"] = list((previous or {}).get("removed") or [])
        if model_cache.claim_name(spec):
            state.cache["claimName"] = model_cache.claim_name(spec)
            await _download(client, body, spec, model, config, apply, state)
    live = await client.get("apps/v1", "StatefulSet", ns, name)
    i = next((i for i, o in enumerate(want) if o["kind"] == "StatefulSet"), None)
    if i is None or not apply:  # a status-only pass: the step the StatefulSet is in
        state.plan = rollout.observed(live, spec.replicas)
        if state.plan is not None and state.plan.step == "Surge":
            pods = await client.list("v1", "Pod", ns, selector_labels(name))
            state.plan = rollout.waiting_surge(state.plan, pods, spec.replicas)
        return state
    if state.download is not None and state.download.state != "Complete":
        del want[i]  # no pod before its files are in place; old pods keep serving meanwhile
        return state
    desired = want[i]
    desired["metadata"].setdefault("annotations", {})[ANNOTATION_MODEL_KEY] = model_cache.model_key(spec)
    pods = await client.list("v1", "Pod", ns, selector_labels(name))
    state.plan = rollout.plan(desired, live, pods, strategy=spec.rollout.strategy)
    want[i] = rollout.apply_plan(desired, state.plan)
    state.plan = rollout.waiting_surge(state.plan, pods, spec.replicas)
    if state.cache is not None and model_cache.claim_name(spec):
        await _cleanup(client, body, spec, config, state, steady=not state.plan.step)
    if live is not None and state.plan.step:
        old = rollout.annotation(live, ANNOTATION_MODEL_KEY)
        old_name = ((live["spec"]["template"].get("metadata") or {}).get("annotations") or {}).get(ANNOTATION_MODEL, "")
        slots = spec.storage.slots.enabled
        new = model_cache.model_key(spec)
        if old and old != new:  # the same name may be another file: then the keys tell them apart
            same_name = old_name == model.name
            state.slots = slots_note(slots, old if same_name else old_name or old, new if same_name else model.name)
    return state


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")


async def _referenced(client: KubeClient, namespace: str, me: str, claim: str, now: str) -> set[str]:
    """Keys other LlamaServers on `claim` use, or let go of less than their grace period ago."""
    out: set[str] = set()
    for other in await client.list(f"{GROUP}/{VERSION}", "LlamaServer", namespace):
        if other["metadata"]["name"] == me:
            continue
        spec, found = load(other.get("spec"))
        if spec is not None and not found:  # an invalid spec: its status still says what it used
            if model_cache.claim_name(spec) != claim:
                continue
            out |= {f.key for f in model_cache.cache_files(spec, model_cache.resolve(spec))}
        cache = (other.get("status") or {}).get("cache") or {}
        out |= set(cache.get("keys") or [])
        grace = model_cache.cleanup_after(spec) if spec is not None else model_cache.DEFAULT_CLEANUP_SECONDS
        held = cache.get("released") or []
        out |= {r["key"] for r in held} - set(cache_cleanup.due(held, set(), grace, now))
    return out


async def _cleanup(client: KubeClient, body: dict[str, Any], spec: LlamaServerSpec, config: OperatorConfig,
                   state: ModelState, *, steady: bool) -> None:
    """Remove files this LlamaServer let go of, once past their grace period and used by no other."""
    ns, name = body["metadata"]["namespace"], body["metadata"]["name"]
    now = _now()
    held = state.cache["released"]
    for job in await client.list("batch/v1", "Job", ns, cache_cleanup.cleanup_labels(name)):
        done = (job.get("status") or {}).get("succeeded") or (job.get("status") or {}).get("failed")
        if not done:
            state.cache["released"] = held
            return  # one cleanup at a time
        pods = [p for p in await client.list("v1", "Pod", ns, cache_cleanup.cleanup_labels(name))
                if (p["metadata"].get("labels") or {}).get("job-name") == job["metadata"]["name"]]
        removed = cache_cleanup.removed_keys(job, pods)
        if removed is not None:
            state.cache["removed"] = removed
            held = [r for r in held if r["key"] not in removed]
        await client.delete("batch/v1", "Job", ns, job["metadata"]["name"])
    state.cache["released"] = held
    grace = model_cache.cleanup_after(spec)
    if not steady or state.download is None or state.download.state != "Complete":
        return  # old pods may still read a released file
    claim = model_cache.claim_name(spec) or ""
    due = cache_cleanup.due(held, await _referenced(client, ns, name, claim, now), grace, now)
    if due:
        await client.apply(cache_cleanup.build_cleanup_job(body, spec, claim, due, config))


__all__ = ["ModelState", "prepare"]
