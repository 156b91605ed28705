"""Replacing pods without leaving the Service without a Ready endpoint (`spec.rollout.strategy: Surge`).

The operator keeps its one StatefulSet (fixed pod names, claims, the router following its EndpointSlices)
and uses the StatefulSet's own partitioned rolling update as a surge:

1. Surge: the template changes, replicas N -> N+1 and partition N: only the new pod N gets the new template;
   pods 0..N-1 keep serving the old one.
2. Replacing: once pod N is Ready on the new revision, partition 0: the controller replaces N-1 ... 0 one at a
   time, each only after the previous one is Ready again (pod N serves meanwhile).
3. ScalingDown: once all N+1 are updated and Ready, replicas N: pod N goes (its preStop lets the endpoints
   drop it first) while 0..N-1 serve the new template.

A change while one runs starts again at 1. With no Ready pod there is nothing to keep serving: a plain update.
Pure functions of the desired and live StatefulSets and the pods; `plan` says what to apply.
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass
from typing import Any

#: On the StatefulSet: the hash of the pod template it was last given, and the rollout step it is in.
ANNOTATION_TEMPLATE = "kubellama.dev/template-hash"
ANNOTATION_ROLLOUT = "kubellama.dev/rollout"
REVISION_LABEL = "controller-revision-hash"
STEPS = ("Surge", "Replacing", "ScalingDown")


@dataclass(frozen=True)
class Plan:
    replicas: int
    partition: int
    step: str      # "" (steady), "Surge", "Replacing", "ScalingDown", "RollingUpdate"
    message: str


def template_hash(sts: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(sts["spec"]["template"], sort_keys=True, default=str).encode()).hexdigest()[:16]


def annotation(obj: dict[str, Any] | None, key: str) -> str:
    return (((obj or {}).get("metadata") or {}).get("annotations") or {}).get(key, "")


def _ordinal(pod: dict[str, Any]) -> int:
    tail = pod["metadata"]["name"].rpartition("-")[2]
    return int(tail) if tail.isdigit() else -1


def _ready(pod: dict[str, Any]) -> bool:
    if pod["metadata"].get("deletionTimestamp"):
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True"
               for c in (pod.get("status") or {}).get("conditions") or [])


def _rolling(live: dict[str, Any]) -> bool:
    """Whether the StatefulSet controller is still replacing pods (current revision != update revision)."""
    status = live.get("status") or {}
    return bool(status.get("updateRevision")) and status.get("currentRevision") != status.get("updateRevision")


def describe(step: str, n: int) -> str:
    """The status message of a rollout step of a LlamaServer with `n` replicas."""
    return {"Surge": f"starting pod {n} with the new template beside the serving pods",
            "Replacing": f"pod {n} serves the new template; replacing the others one at a time",
            "ScalingDown": f"every pod serves the new template; removing the extra pod {n}",
            "RollingUpdate": "replacing pods one at a time"}.get(step, "")


def _plan(replicas: int, partition: int, step: str, n: int) -> Plan:
    return Plan(replicas, partition, step, describe(step, n))


def plan(desired: dict[str, Any], live: dict[str, Any] | None, pods: list[dict[str, Any]], *,
         strategy: str) -> Plan:
    """What to apply: the StatefulSet's replicas and partition, and the rollout step it is in."""
    n = int(desired["spec"]["replicas"])
    want = template_hash(desired)
    if live is None:
        return _plan(n, 0, "", n)
    live_hash = annotation(live, ANNOTATION_TEMPLATE)
    changed = live_hash not in ("", want)  # "": made by an operator that did not record it; taken as unchanged
    if strategy != "Surge" or n == 0:
        return _plan(n, 0, "RollingUpdate" if changed or _rolling(live) else "", n)
    live_spec = live.get("spec") or {}
    status = live.get("status") or {}
    step = annotation(live, ANNOTATION_ROLLOUT)
    synced = int(status.get("observedGeneration") or 0) >= int((live.get("metadata") or {}).get("generation") or 0)
    if changed:
        if step not in STEPS and not any(_ready(p) for p in pods):
            return _plan(n, 0, "RollingUpdate", n)  # nothing serves: nothing to keep
        return _plan(n + 1, n, "Surge", n)
    if step == "Surge":
        surge = next((p for p in pods if _ordinal(p) == n), None)
        update = status.get("updateRevision")
        if (synced and surge is not None and update and _ready(surge)
                and (surge["metadata"].get("labels") or {}).get(REVISION_LABEL) == update):
            return _plan(n + 1, 0, "Replacing", n)
        return _plan(n + 1, n, "Surge", n)
    if step == "Replacing":
        total = n + 1
        done = (synced and int(live_spec.get("replicas") or 0) == total
                and int(status.get("updatedReplicas") or 0) >= total
                and int(status.get("readyReplicas") or 0) >= total and not _rolling(live))
        return _plan(n, 0, "ScalingDown", n) if done else _plan(total, 0, "Replacing", n)
    return _plan(n, 0, "RollingUpdate" if _rolling(live) else "", n)


def waiting_surge(p: Plan, pods: list[dict[str, Any]], n: int) -> Plan:
    """`p`, its message saying why the extra pod does not start when it cannot be scheduled (no free GPU...)."""
    if p.step != "Surge":
        return p
    surge = next((pod for pod in pods if _ordinal(pod) == n), None)
    for cond in ((surge or {}).get("status") or {}).get("conditions") or []:
        if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
            why = f"{cond.get('reason') or 'Unschedulable'}: {cond.get('message') or ''}".strip(": ")
            return Plan(p.replicas, p.partition, p.step,
                        f"{p.message}; it cannot start ({why}), the serving pods keep serving")
    return p


def observed(live: dict[str, Any] | None, n: int) -> Plan | None:
    """The step a StatefulSet is in, from its annotations and status alone (for status-only passes)."""
    if live is None:
        return None
    step = annotation(live, ANNOTATION_ROLLOUT)
    if step not in STEPS:
        step = "RollingUpdate" if _rolling(live) else ""
    spec = live.get("spec") or {}
    partition = ((spec.get("updateStrategy") or {}).get("rollingUpdate") or {}).get("partition") or 0
    return _plan(int(spec.get("replicas") or 0), int(partition), step, n)


def apply_plan(desired: dict[str, Any], p: Plan) -> dict[str, Any]:
    """`desired` with the plan's replicas, partition and annotations (a copy)."""
    out = copy.deepcopy(desired)
    ann = out["metadata"].setdefault("annotations", {})
    ann[ANNOTATION_TEMPLATE] = template_hash(desired)
    # Always set (empty when steady): server-side apply keeps a field this manager stopped sending only
    # if it sends it; an explicit "" says "no rollout".
    ann[ANNOTATION_ROLLOUT] = p.step if p.step in STEPS else ""
    out["spec"]["replicas"] = p.replicas
    out["spec"]["updateStrategy"] = {"type": "RollingUpdate", "rollingUpdate": {"partition": p.partition}}
    return out
