"""Cleanup of a shared model cache (pure): which keys a LlamaServer let go of, and which may be removed now.

A key this LlamaServer used before (status.cache.keys) but not any more is "released" with the time it was
released (status.cache.released). Once `spec.model.cache.cleanupAfterSeconds` have passed and no LlamaServer
of the namespace using the same claim references it, a cleanup Job removes its folder; status.cache.removed
then lists what went.
"""

from __future__ import annotations

import datetime
import hashlib
import json
from typing import Any

from . import FIELD_MANAGER
from .builders.meta import LABEL_COMPONENT, LABEL_MANAGED_BY, LABEL_OWNER, Body, owner_reference
from .builders.statefulset import RUN_AS, _container_security
from .config import OperatorConfig
from .api import LlamaServerSpec
from .spec import MODEL_DIR

COMPONENT = "cache-cleanup"


def _parse(ts: str) -> datetime.datetime:
    return datetime.datetime.fromisoformat(ts.replace("Z", "+00:00"))


def released(previous: dict[str, Any] | None, keys: list[str], now: str) -> list[dict[str, str]]:
    """Keys let go of, each with the time it was (kept from `previous` status.cache), minus those in use again."""
    previous = previous or {}
    out = {r["key"]: r["since"] for r in previous.get("released") or [] if isinstance(r, dict) and "key" in r}
    for key in previous.get("keys") or []:
        out.setdefault(key, now)
    return [{"key": k, "since": since} for k, since in sorted(out.items()) if k not in keys]


def due(released_keys: list[dict[str, str]], referenced: set[str], grace_seconds: int, now: str) -> list[str]:
    """Released keys past their grace period that no LlamaServer references."""
    t = _parse(now)
    return [r["key"] for r in released_keys
            if r["key"] not in referenced and (t - _parse(r["since"])).total_seconds() >= grace_seconds]


def cleanup_labels(name: str) -> dict[str, str]:
    return {LABEL_OWNER: name, LABEL_MANAGED_BY: FIELD_MANAGER, LABEL_COMPONENT: COMPONENT}


def build_cleanup_job(owner: Body, spec: LlamaServerSpec, claim: str, keys: list[str],
                      config: OperatorConfig) -> dict[str, Any]:
    """A Job removing the folders of `keys` from the cache claim (kubellama_server.fetch.gc)."""
    name = owner["metadata"]["name"]
    digest = hashlib.sha256(json.dumps(sorted(keys)).encode()).hexdigest()[:10]
    image = spec.image or config.cpu_image
    pod: dict[str, Any] = {
        "restartPolicy": "Never", "enableServiceLinks": False, "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [{"name": "gc", "image": image, "imagePullPolicy": config.image_pull_policy,
                        "command": ["python", "-m", "kubellama_server.fetch.gc", "--root", MODEL_DIR, *sorted(keys)],
                        "volumeMounts": [{"name": "cache", "mountPath": MODEL_DIR}],
                        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                        "securityContext": _container_security(),
                        "terminationMessagePolicy": "FallbackToLogsOnError"}],
        "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": claim}}],
    }
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    return {"apiVersion": "batch/v1", "kind": "Job",
            "metadata": {"name": f"{name[:52]}-gc-{digest}", "namespace": owner["metadata"]["namespace"],
                         "labels": cleanup_labels(name), "ownerReferences": [owner_reference(owner)]},
            "spec": {"backoffLimit": 2, "ttlSecondsAfterFinished": 3600,
                     "template": {"metadata": {"labels": cleanup_labels(name)}, "spec": pod}}}


def removed_keys(job: dict[str, Any], pods: list[dict[str, Any]]) -> list[str] | None:
    """The keys a succeeded cleanup Job removed: its pod's termination message, else (no message: a runtime
    that keeps none) the keys it was given, as it exits 0 only after removing them. None unless it succeeded."""
    if not (job.get("status") or {}).get("succeeded"):
        return None
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            term = (cs.get("state") or {}).get("terminated") or {}
            if cs.get("name") == "gc" and term.get("exitCode") == 0 and term.get("message"):
                try:
                    return list(json.loads(term["message"]).get("removed") or [])
                except (ValueError, AttributeError):
                    break
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    return list(command[command.index("--root") + 2:])
