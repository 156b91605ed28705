"""The download Job of a shared model cache, and what its state says (pure functions).

With `spec.model.cache` shared or claim, a Job (CPU only, no GPU, no toleration for GPU nodes) runs the same
`kubellama-fetch` as the per-replica init containers, one init container per file (fetch-model, fetch-mmproj,
fetch-lora-<i>: their names, progress lines and exit codes are the ones `status` already reads), into
`<cache>/<key>/`. The server pods are created (or changed) only once it is Complete. Its name carries a digest
of the files, so a new model is a new Job, and two Jobs fetching one file share it (kubellama-fetch's file
lock: the second finds it in place).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .. import FIELD_MANAGER
from .. import model_cache
from ..config import OperatorConfig
from ..model_cache import CacheFile
from ..api import LlamaServerSpec
from ..spec import MODEL_DIR, Model
from ..status import pod_view
from .meta import LABEL_COMPONENT, LABEL_MANAGED_BY, LABEL_OWNER, Body, owner_reference
from .statefulset import RUN_AS, _container_security

COMPONENT = "download"
#: kubellama-fetch exit codes that another try cannot fix: usage, not found, unauthorized, checksum, not GGUF.
PERMANENT_EXIT_CODES = [2, 3, 4, 7, 8]
#: Tries for the others (network, disk full, ...): each resumes the partial download.
BACKOFF_LIMIT = 4


def job_labels(name: str) -> dict[str, str]:
    """Labels of a download Job and its pod: never the server pods' selector (no Service traffic to it)."""
    return {LABEL_OWNER: name, LABEL_MANAGED_BY: FIELD_MANAGER, LABEL_COMPONENT: COMPONENT}


def job_name(name: str, files: list[CacheFile]) -> str:
    return f"{name[:52]}-fetch-{model_cache.keys_digest(files)}"


def _fetch(spec: LlamaServerSpec, f: CacheFile, image: str, pull: str, hf_endpoint: str) -> dict[str, Any]:
    env: list[dict[str, Any]] = [{"name": "HOME", "value": "/tmp"}, {"name": "HF_HOME", "value": "/tmp/.hf"}]
    token = spec.model.token_secret_ref
    if f.hf and hf_endpoint:
        env.append({"name": "HF_ENDPOINT", "value": hf_endpoint})
    if f.hf and token is not None:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}})
    return {
        "name": f.container, "image": image, "imagePullPolicy": pull,
        "command": ["kubellama-fetch"], "args": list(f.fetch_args), "env": env,
        "volumeMounts": [{"name": "cache", "mountPath": MODEL_DIR}, {"name": "tmp", "mountPath": "/tmp"}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": _container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def build_download_job(owner: Body, spec: LlamaServerSpec, model: Model, config: OperatorConfig) -> dict[str, Any]:
    """The Job that puts the (placed) model's files into the shared cache claim."""
    name = owner["metadata"]["name"]
    files = model_cache.cache_files(spec, model)
    image = spec.image or config.cpu_image
    pull = config.image_pull_policy
    pod: dict[str, Any] = {
        "restartPolicy": "Never",
        "enableServiceLinks": False,
        "automountServiceAccountToken": False,
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS, "fsGroup": RUN_AS,
                            "fsGroupChangePolicy": "OnRootMismatch", "seccompProfile": {"type": "RuntimeDefault"}},
        "initContainers": [_fetch(spec, f, image, pull, config.hf_endpoint) for f in files],
        # Init containers run one after the other; the Job is Complete when this one exits 0.
        "containers": [{"name": "done", "image": image, "imagePullPolicy": pull, "command": ["true"],
                        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
                        "securityContext": _container_security()}],
        "volumes": [{"name": "cache", "persistentVolumeClaim": {"claimName": model_cache.claim_name(spec)}},
                    {"name": "tmp", "emptyDir": {}}],
    }
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": job_name(name, files), "namespace": owner["metadata"]["namespace"],
                     "labels": job_labels(name), "ownerReferences": [owner_reference(owner)],
                     "annotations": {"kubellama.dev/cache-keys": ",".join(f.key for f in files)}},
        "spec": {
            "backoffLimit": BACKOFF_LIMIT,
            "podFailurePolicy": {"rules": [{"action": "FailJob", "onExitCodes": {
                "operator": "In", "values": PERMANENT_EXIT_CODES}}]},
            "template": {"metadata": {"labels": job_labels(name)}, "spec": pod},
        },
    }


def build_shared_claim(namespace: str, spec: LlamaServerSpec) -> dict[str, Any]:
    """The namespace's cache claim of mode shared (created once, never owned by one LlamaServer)."""
    cache = spec.model.cache
    size = cache.size if cache is not None and cache.size is not None else model_cache.DEFAULT_SHARED_SIZE
    claim: dict[str, Any] = {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": str(size)}}}
    if cache is not None and cache.storage_class_name:
        claim["storageClassName"] = cache.storage_class_name
    return {"apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": model_cache.SHARED_CLAIM, "namespace": namespace,
                         "labels": {LABEL_MANAGED_BY: FIELD_MANAGER, LABEL_COMPONENT: "model-cache"}},
            "spec": claim}


@dataclass(frozen=True)
class Download:
    """What the download Job says: state Pending | Running | Complete | Failed."""

    job: str
    state: str
    reason: str = ""
    message: str = ""
    pod: str = ""       # Running: the pod whose `fetcher` logs the progress
    fetcher: str = ""
    fetching: str = ""  # "model", "multimodal projector", "LoRA adapter 0 (sql)"


def _condition(job: dict[str, Any], type_: str) -> dict[str, Any] | None:
    for c in (job.get("status") or {}).get("conditions") or []:
        if c.get("type") == type_ and c.get("status") == "True":
            return c
    return None


def download_state(name: str, job: dict[str, Any] | None, pods: list[dict[str, Any]],
                   model: Model | None) -> Download:
    """The state of Job `name` from the Job and its pods (newest first wins)."""
    if job is None:
        return Download(name, "Pending", "JobPending", "creating the download Job")
    if _condition(job, "Complete") or (job.get("status") or {}).get("succeeded"):
        return Download(name, "Complete", "Downloaded", "every file is in the cache")
    pods = sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or "", reverse=True)
    views = [(p, pod_view(p, model)) for p in pods]
    failed = _condition(job, "Failed")
    if failed:
        why = next((v for _, v in views if v.fetch_failed), None)
        if why is not None:
            return Download(name, "Failed", why.reason, why.message, fetcher=why.fetcher, fetching=why.fetching)
        return Download(name, "Failed", failed.get("reason") or "DownloadFailed",
                        f"the download Job {name} failed: {failed.get('message') or failed.get('reason')}")
    for pod, view in views:
        if view.stage == "Downloading":
            return Download(name, "Running", "Downloading", view.message, pod=pod["metadata"]["name"],
                            fetcher=view.fetcher, fetching=view.fetching)
        if view.stage == "Failed" and not view.fetch_failed:  # a missing Secret: no retry helps
            return Download(name, "Failed", view.reason, view.message, fetcher=view.fetcher, fetching=view.fetching)
        if view.fetch_failed:  # a retried failure: say it while the next try starts
            return Download(name, "Running", view.reason, view.message + " (retrying)")
        if view.stage == "Pending" and view.message and view.reason != "PodPending":  # e.g. an unbound cache claim
            return Download(name, "Pending", view.reason, f"the download pod waits: {view.reason}: {view.message}")
    return Download(name, "Pending", "JobPending", "waiting for the download pod to start")
