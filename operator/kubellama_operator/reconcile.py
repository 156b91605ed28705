"""One reconcile pass of a LlamaServer: check, apply children, compute and write status.

Idempotent and safe to run any number of times (operator restarts, timers, child events):
children have fixed names and are applied server-side only when they differ from what we want.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from . import API_VERSION, FIELD_MANAGER, KIND
from . import metrics
from .builders import desired_children
from .builders.autoscaler import KEDA_API, KEDA_MISSING, KEDA_PLURAL, autoscaling_driver
from .builders.inferencepool import INFERENCEPOOL_API, INFERENCEPOOL_PLURAL
from .builders.meta import LABEL_MANAGED_BY, selector_labels, selector_string
from .config import OperatorConfig
from .diff import needs_apply, with_hash
from .kube import KubeClient
from .policy import policy_problems
from .api import LlamaServerSpec
from .api.network import Service
from .api.scaling import Routing
from .lora_scales import CONDITION as LORA_CONDITION, expected_scales, scales_condition, scrape_scales
from .model_cache import resolve as resolve_model
from .model_children import ModelState, prepare
from .model_status import merge as merge_model_status
from .spec import Model, endpoint, load
from .status import compute_status, condition, download_progress, essence, pod_view


@dataclass
class Outcome:
    status: dict[str, Any]
    previous: dict[str, Any]
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    models: ModelState | None = None

    @property
    def phase_changed(self) -> bool:
        return self.status.get("phase") != self.previous.get("phase")

    @property
    def message_changed(self) -> bool:
        return self.status.get("message") != self.previous.get("message")


async def check_references(client: KubeClient, namespace: str, spec: LlamaServerSpec) -> list[str]:
    """Objects the spec names that must exist before pods can start.

    Secrets are not read (the operator has no access to them): a missing Secret or key shows in the pods'
    status (CreateContainerConfigError of check-api-key or a fetch container), which `status` reports.
    """
    out = []
    cache = spec.model.cache
    claims = [("spec.model.pvc.claimName", spec.model.pvc.claim_name if spec.model.pvc is not None else None),
              ("spec.storage.model.claimName", spec.storage.model.claim_name),
              ("spec.model.cache.claimName", cache.claim_name if cache is not None else None)]
    for where, claim in claims:
        if claim and await client.get("v1", "PersistentVolumeClaim", namespace, claim) is None:
            out.append(f"PersistentVolumeClaim {claim!r} ({where}) not found in namespace {namespace}: "
                       "create it or fix the name")
    return [p for p in out if p]


async def shared_claim_warning(client: KubeClient, namespace: str, spec: LlamaServerSpec) -> str | None:
    """Replicas sharing a ReadWriteOnce claim can only run on one node (the classic Multi-Attach trap)."""
    claim = (spec.model.pvc.claim_name if spec.model.pvc is not None else None) or spec.storage.model.claim_name
    if not claim or spec.replicas <= 1:
        return None
    pvc = await client.get("v1", "PersistentVolumeClaim", namespace, claim)
    modes = set(((pvc or {}).get("spec") or {}).get("accessModes") or [])
    if pvc is None or modes & {"ReadWriteMany", "ReadOnlyMany"}:
        return None
    return (f"warning: {spec.replicas} replicas share PersistentVolumeClaim {claim!r} "
            f"({', '.join(sorted(modes)) or 'no access modes'}): pods on other nodes cannot mount it; "
            "use a ReadWriteMany claim, or drop storage.model.claimName to give each replica its own")


def _owned_by(obj: dict[str, Any], owner: dict[str, Any]) -> bool:
    meta = obj.get("metadata", {})
    if (meta.get("labels") or {}).get(LABEL_MANAGED_BY) != FIELD_MANAGER:
        return False
    uid = owner["metadata"].get("uid")
    refs = meta.get("ownerReferences") or []
    return not uid or any(r.get("uid") == uid for r in refs)


async def apply_children(client: KubeClient, body: dict[str, Any], spec: LlamaServerSpec, model: Model,
                         config: OperatorConfig, outcome: Outcome) -> None:
    ns = body["metadata"]["namespace"]
    sm_crd = await client.has_resource("monitoring.coreos.com/v1", "servicemonitors")
    pool_crd = await client.has_resource(INFERENCEPOOL_API, INFERENCEPOOL_PLURAL)
    keda_crd = await client.has_resource(KEDA_API, KEDA_PLURAL)
    want, drop = desired_children(body, spec, model, config, servicemonitor_crd=sm_crd, inferencepool_crd=pool_crd,
                                  scaledobject_crd=keda_crd)
    outcome.models = await prepare(client, body, spec, model, config, want, apply=True)
    for obj in map(with_hash, want):
        ref = f"{obj['kind']}/{obj['metadata']['name']}"
        live = await client.get(obj["apiVersion"], obj["kind"], ns, obj["metadata"]["name"])
        if not needs_apply(live, obj):
            metrics.CHILDREN_APPLIED.labels(obj["kind"], "unchanged").inc()
            continue
        await client.apply(obj)
        action = "created" if live is None else "updated"
        (outcome.created if live is None else outcome.updated).append(ref)
        metrics.CHILDREN_APPLIED.labels(obj["kind"], action).inc()
    for child in drop:
        live = await client.get(child.api_version, child.kind, ns, child.name)
        if live is not None and _owned_by(live, body):
            await client.delete(child.api_version, child.kind, ns, child.name)
            outcome.deleted.append(f"{child.kind}/{child.name}")
            metrics.CHILDREN_APPLIED.labels(child.kind, "deleted").inc()


async def autoscaling_condition(client: KubeClient, spec: LlamaServerSpec) -> tuple[bool, str, str] | None:
    """(ok, reason, message) of the Autoscaling condition; None without spec.autoscaling."""
    driver = autoscaling_driver(spec)
    if driver is None:
        return None
    if driver == "keda" and not await client.has_resource(KEDA_API, KEDA_PLURAL):
        return False, "KEDANotInstalled", KEDA_MISSING
    return True, {"router": "Router", "hpa": "HorizontalPodAutoscaler", "keda": "KEDA"}[driver], {
        "router": "the router sets the replicas from its in-flight and queued requests",
        "hpa": "HorizontalPodAutoscaler scales on the metric kubellama_router_load (needs a metrics adapter)",
        "keda": "KEDA ScaledObject scales on the router's queued and in-flight requests"}[driver]


def _desired_replicas(body: dict[str, Any], spec: LlamaServerSpec | None) -> int:
    """spec.replicas; for a spec without the schema's shape, what it says when that is a count (else 1)."""
    if spec is not None:
        return spec.replicas
    raw = (body.get("spec") or {}).get("replicas", 1) if isinstance(body.get("spec"), dict) else 1
    return raw if isinstance(raw, int) and not isinstance(raw, bool) else 1


def _endpoint(name: str, ns: str, spec: LlamaServerSpec | None) -> str:
    return endpoint(name, ns, spec if spec is not None else LlamaServerSpec.model_construct(
        routing=Routing(), service=Service()))


async def refresh_status(client: KubeClient, body: dict[str, Any], spec: LlamaServerSpec | None,
                         model: Model | None, spec_problems: list[str], outcome: Outcome,
                         config: OperatorConfig | None = None) -> None:
    meta = body["metadata"]
    name, ns = meta["name"], meta["namespace"]
    sts = await client.get("apps/v1", "StatefulSet", ns, name)
    pods = await client.list("v1", "Pod", ns, selector_labels(name))
    progress = None
    downloading = next(((p, v) for p in pods if (v := pod_view(p, model)).stage == "Downloading"), None)
    if downloading is not None:  # long work shows progress: the fetchers log it as JSON lines
        pod, view = downloading
        progress = download_progress(await client.pod_log(ns, pod["metadata"]["name"], view.fetcher))
    status = compute_status(
        name=name, namespace=ns, generation=meta.get("generation"), desired=_desired_replicas(body, spec),
        model=model, endpoint=_endpoint(name, ns, spec), selector=selector_string(name), pods=pods,
        statefulset=sts, problems=spec_problems, previous=outcome.previous, progress=progress)
    models = outcome.models
    if models is None and spec is not None and model is not None and not spec_problems:
        models = await prepare(client, body, spec, model, config or OperatorConfig(), [], apply=False)
    if models is not None:
        log_text = await client.pod_log(ns, *models.progress_from) if models.progress_from is not None else None
        merge_model_status(status, generation=meta.get("generation"), previous=outcome.previous, cache=models.cache,
                           download=models.download, progress=download_progress(log_text), plan=models.plan,
                           slots=models.slots, fetch_log=log_text)
    if outcome.warnings:
        status["message"] = "; ".join([status["message"], *outcome.warnings])
    auto = await autoscaling_condition(client, spec) if spec is not None and not spec_problems else None
    if auto is not None:
        prev = {c.get("type"): c for c in outcome.previous.get("conditions") or []}
        status["conditions"].append(condition("Autoscaling", *auto, meta.get("generation"), prev))
        if not auto[0]:
            status["message"] = "; ".join([status["message"], auto[2]])
    if spec is not None and model is not None and not spec_problems and spec.checks_lora_scales:
        agree = scales_condition(expected_scales(model), await scrape_scales(pods))
        prev = {c.get("type"): c for c in outcome.previous.get("conditions") or []}
        status["conditions"].append(condition(LORA_CONDITION, *agree, meta.get("generation"), prev))
        if agree[0] is False:
            status["message"] = "; ".join([status["message"], agree[2]])
    outcome.status = status
    if essence(status) != essence(outcome.previous):
        patch = {k: None for k in outcome.previous if k not in status}
        patch.update(status)
        await client.patch_status(API_VERSION, KIND, ns, name, patch)
    metrics.record_status(ns, name, status)


async def reconcile(client: KubeClient, body: dict[str, Any], config: OperatorConfig, *,
                    apply: bool = True) -> Outcome:
    """Run one pass. `apply=False` only recomputes the status (pod events)."""
    previous = dict(body.get("status") or {})
    outcome = Outcome(status=previous, previous=previous)
    spec, found = load(body.get("spec"))
    if spec is not None:
        found += policy_problems(spec, config)
    model = None
    if spec is not None and not found:
        model = resolve_model(spec)
        found = await check_references(client, body["metadata"]["namespace"], spec)
    outcome.problems = found
    if spec is not None and not found:
        warning = await shared_claim_warning(client, body["metadata"]["namespace"], spec)
        outcome.warnings = [warning] if warning else []
    if spec is not None and model is not None and not found and apply:
        await apply_children(client, body, spec, model, config, outcome)
    await refresh_status(client, body, spec, model, found, outcome, config)
    return outcome
