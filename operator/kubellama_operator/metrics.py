"""The operator's Prometheus metrics, served at `/metrics` on `--metrics-port` (default 8080).

Names (all prefixed `kubellama_operator_`), for dashboards and alerts:

- `kubellama_operator_reconcile_total{trigger, result}` counter: reconcile passes; trigger is
  create/update/resume/timer/child/pod, result is success/invalid/error.
- `kubellama_operator_reconcile_errors_total{reason}` counter: reconciles that raised (API errors...).
- `kubellama_operator_reconcile_duration_seconds{trigger}` histogram: time of one pass.
- `kubellama_operator_children_applied_total{kind, action}` counter: child writes; action is
  created/updated/deleted/unchanged.
- `kubellama_operator_api_requests_total{method, code}` counter: the operator's own API calls.
- `kubellama_operator_llamaserver_phase{namespace, name, phase}` gauge: 1 for the current phase,
  0 for the others. Alert on `phase="Failed"` == 1.
- `kubellama_operator_llamaserver_condition{namespace, name, condition, status, reason}` gauge: 1 per
  current condition. "Model download failing":
  `kubellama_operator_llamaserver_condition{condition="ModelReady",status="False",reason!~"Downloading|NoPods|ScaledToZero"} == 1`.
- `kubellama_operator_llamaserver_replicas{namespace, name}` / `..._ready_replicas{namespace, name}` gauges.
- `kubellama_operator_info{version}` gauge, always 1.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from . import __version__
from .api import PHASES

REGISTRY = CollectorRegistry(auto_describe=True)

RECONCILE_TOTAL = Counter("kubellama_operator_reconcile_total", "Reconcile passes.",
                          ["trigger", "result"], registry=REGISTRY)
RECONCILE_ERRORS = Counter("kubellama_operator_reconcile_errors_total", "Reconcile passes that raised.",
                           ["reason"], registry=REGISTRY)
RECONCILE_DURATION = Histogram("kubellama_operator_reconcile_duration_seconds", "Duration of a reconcile pass.",
                               ["trigger"], registry=REGISTRY,
                               buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
CHILDREN_APPLIED = Counter("kubellama_operator_children_applied_total", "Writes of child objects.",
                           ["kind", "action"], registry=REGISTRY)
API_REQUESTS = Counter("kubellama_operator_api_requests_total", "Kubernetes API calls made by the operator.",
                       ["method", "code"], registry=REGISTRY)
PHASE = Gauge("kubellama_operator_llamaserver_phase", "1 for the LlamaServer's current phase.",
              ["namespace", "name", "phase"], registry=REGISTRY)
CONDITION = Gauge("kubellama_operator_llamaserver_condition", "1 for each current condition of a LlamaServer.",
                  ["namespace", "name", "condition", "status", "reason"], registry=REGISTRY)
REPLICAS = Gauge("kubellama_operator_llamaserver_replicas", "Pods of a LlamaServer.",
                 ["namespace", "name"], registry=REGISTRY)
READY_REPLICAS = Gauge("kubellama_operator_llamaserver_ready_replicas", "Ready pods of a LlamaServer.",
                       ["namespace", "name"], registry=REGISTRY)
INFO = Gauge("kubellama_operator_info", "Operator version.", ["version"], registry=REGISTRY)
INFO.labels(__version__).set(1)

# Condition series currently exported per LlamaServer, to remove stale label sets.
_condition_labels: dict[tuple[str, str], list[tuple[str, str, str]]] = {}


def record_status(namespace: str, name: str, status: dict[str, Any]) -> None:
    """Export a LlamaServer's phase, conditions and replica counts."""
    for phase in PHASES:
        PHASE.labels(namespace, name, phase).set(1 if status.get("phase") == phase else 0)
    key = (namespace, name)
    for old in _condition_labels.pop(key, []):
        CONDITION.remove(namespace, name, *old)
    current = [(c.get("type", ""), c.get("status", ""), c.get("reason", "")) for c in status.get("conditions", [])]
    for labels in current:
        CONDITION.labels(namespace, name, *labels).set(1)
    _condition_labels[key] = current
    REPLICAS.labels(namespace, name).set(status.get("replicas", 0))
    READY_REPLICAS.labels(namespace, name).set(status.get("readyReplicas", 0))


def forget(namespace: str, name: str) -> None:
    """Drop every series of a deleted LlamaServer."""
    for phase in PHASES:
        try:
            PHASE.remove(namespace, name, phase)
        except KeyError:
            pass
    for old in _condition_labels.pop((namespace, name), []):
        CONDITION.remove(namespace, name, *old)
    for gauge in (REPLICAS, READY_REPLICAS):
        try:
            gauge.remove(namespace, name)
        except KeyError:
            pass


def render() -> bytes:
    return generate_latest(REGISTRY)
