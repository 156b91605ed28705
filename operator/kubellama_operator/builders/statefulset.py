"""The StatefulSet that runs a LlamaServer's pods (pure function of the spec)."""

from __future__ import annotations

import math
from typing import Any

from ..config import OperatorConfig
from ..serverargs import server_args
from ..api import LlamaServerSpec
from ..api.llamaserver import ApiKeySecretRef
from ..spec import (API_KEY_DIR, API_KEY_FILE, CONFIG_DIR, LORA_DIR, MMPROJ_DIR, MODEL_DIR, SERVER_PORT, SLOTS_DIR,
                    SYSTEM_PROMPT_FILE, Model)
from .. import model_cache
from ..containers import CHECK_API_KEY, FETCH_MMPROJ, FETCH_MODEL, SERVER_CONTAINER, fetch_lora
from .meta import ANNOTATION_MODEL, Body, config_name, headless_name, labels, object_meta, selector_labels

#: The image's non-root user (images/server/Dockerfile).
RUN_AS = 10001
GPU_TAINT = "nvidia.com/gpu"
GPU_PRODUCT_LABEL = "nvidia.com/gpu.product"
#: The emptyDir volumes (name, mount path) that downloads for a pvc model go to: its claim is read-only.
MMPROJ_VOLUME = ("mmproj", MMPROJ_DIR)
LORA_VOLUME = ("lora", LORA_DIR)
#: Seconds the preStop hook waits so Service endpoints drop the pod before SIGTERM.
PRESTOP_SECONDS = 5
#: What kubellama-server allows itself after SIGTERM, past --shutdown-timeout (the drain): saving every slot
#: with --slot-persist (kubellama_server.engine.persistence.SAVE_TIMEOUT), then stopping the scheduler thread
#: (Scheduler.stop's timeout). The contract tests check these against the server's own numbers.
SLOT_SAVE_SECONDS = 60
SCHEDULER_STOP_SECONDS = 5
#: Freeing the model and exiting, after the last step.
EXIT_MARGIN_SECONDS = 10
STARTUP_PERIOD = 10


def image_for(spec: LlamaServerSpec, config: OperatorConfig) -> str:
    if spec.image:
        return spec.image
    return config.cuda_image if spec.uses_gpu else config.cpu_image


def termination_budget(spec: LlamaServerSpec) -> dict[str, int]:
    """Seconds each step of a server pod's termination may take, in the order they run.

    preStop sleep, then SIGTERM: the drain (running requests finish: --shutdown-timeout, from
    spec.server.shutdownTimeoutSeconds), the slot save (only with --slot-persist, i.e. restoreOnStart),
    the scheduler's stop, and a margin to exit. Their sum is the pod's terminationGracePeriodSeconds,
    so the kubelet never kills a server that is still saving its slots.
    """
    return {"preStop": PRESTOP_SECONDS,
            "drain": spec.server.shutdown_timeout_seconds,
            "slotSave": SLOT_SAVE_SECONDS if spec.storage.slots.restore_on_start else 0,
            "schedulerStop": SCHEDULER_STOP_SECONDS,
            "exit": EXIT_MARGIN_SECONDS}


def termination_grace(spec: LlamaServerSpec) -> int:
    """terminationGracePeriodSeconds: the whole `termination_budget`."""
    return sum(termination_budget(spec).values())


def _container_security() -> dict[str, Any]:
    return {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}


def _model_claim_name(spec: LlamaServerSpec) -> str | None:
    """An existing claim holding the model directory, or None for per-replica claims."""
    if spec.model.pvc is not None:
        return spec.model.pvc.claim_name
    if spec.model.shared_cache:
        return model_cache.claim_name(spec)  # None for an image volume
    return spec.storage.model.claim_name


def _mmproj_volume(model: Model) -> bool:
    """Whether the projector is downloaded into a volume of its own (pvc models: their claim is read-only)."""
    return model.mmproj is not None and model.mmproj.dest == MMPROJ_DIR


def _lora_volume(model: Model) -> bool:
    """Whether LoRA adapters are downloaded into a volume of their own (pvc models), each in a folder <i>/."""
    return any(lora.dest.startswith(LORA_DIR + "/") for lora in model.loras)


def _fetch_container(spec: LlamaServerSpec, name: str, fetch_args: tuple[str, ...], image: str, pull: str, *,
                     hf_token: bool, own_volume: tuple[str, str] | None = None, hf_endpoint: str = "") -> dict[str, Any]:
    """A kubellama-fetch init container writing into the model volume (`own_volume`: (name, mount path) of an
    emptyDir instead, for a pvc model's projector or adapters).

    `hf_token`: a Hugging Face download, which gets spec.model.tokenSecretRef as HF_TOKEN when set, and the
    operator's Hub mirror (`hf_endpoint`) as HF_ENDPOINT.
    """
    volume, root = own_volume or ("model", MODEL_DIR)
    env: list[dict[str, Any]] = [{"name": "HOME", "value": "/tmp"},
                                 {"name": "HF_HOME", "value": f"{root}/.hf"}]
    token = spec.model.token_secret_ref
    if hf_endpoint and hf_token:
        env.append({"name": "HF_ENDPOINT", "value": hf_endpoint})
    if token is not None and hf_token:
        env.append({"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": token.name, "key": token.key}}})
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": pull,
        "command": ["kubellama-fetch"],
        "args": list(fetch_args),
        "env": env,
        "volumeMounts": [{"name": volume, "mountPath": root},
                         {"name": "tmp", "mountPath": "/tmp"}],
        "resources": {"requests": {"cpu": "100m", "memory": "128Mi"}, "limits": {"memory": "1Gi"}},
        "securityContext": _container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _check_api_key_container(ref: ApiKeySecretRef, image: str, pull: str) -> dict[str, Any]:
    """An init container that does nothing but needs the API key Secret's key to start.

    The Secret's volume is optional (a missing Secret would otherwise hold the pod in ContainerCreating
    with nothing in its status); this container makes the kubelet report it instead, and the server
    never starts without its key (it also fails on a missing --api-key-file).
    """
    return {
        "name": CHECK_API_KEY,
        "image": image,
        "imagePullPolicy": pull,
        "command": ["true"],
        "env": [{"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": ref.name, "key": ref.key}}}],
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        "resources": {"requests": {"cpu": "10m", "memory": "16Mi"}, "limits": {"memory": "64Mi"}},
        "securityContext": _container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }


def _init_containers(spec: LlamaServerSpec, model: Model, image: str, pull: str, hf_endpoint: str = "") -> list[dict[str, Any]]:
    """check-api-key (with spec.apiKeySecretRef), fetch-model (url/huggingFace models), then fetch-mmproj
    (url/huggingFace projectors), then one fetch-lora-<i> per url/huggingFace adapter (kubellama-fetch
    downloads one file per run)."""
    out = []
    if spec.api_key_secret_ref is not None:
        out.append(_check_api_key_container(spec.api_key_secret_ref, image, pull))
    if spec.model.shared_cache:
        return out  # a download Job filled the shared cache (or the image holds the files)
    if model.fetch_args:
        out.append(_fetch_container(spec, FETCH_MODEL, model.fetch_args, image, pull,
                                    hf_token=model.source == "huggingFace", hf_endpoint=hf_endpoint))
    if model.mmproj is not None and model.mmproj.fetch_args:
        out.append(_fetch_container(spec, FETCH_MMPROJ, model.mmproj.fetch_args, image, pull,
                                    hf_token=model.mmproj.source == "huggingFace", hf_endpoint=hf_endpoint,
                                    own_volume=MMPROJ_VOLUME if _mmproj_volume(model) else None))
    for lora in model.loras:
        if lora.fetch_args:
            out.append(_fetch_container(spec, fetch_lora(lora.index), lora.fetch_args, image, pull,
                                        hf_token=lora.source == "huggingFace", hf_endpoint=hf_endpoint,
                                        own_volume=LORA_VOLUME if lora.dest.startswith(LORA_DIR + "/") else None))
    return out


def _server_resources(spec: LlamaServerSpec) -> dict[str, Any]:
    res = spec.resources
    out = {k: dict(v) for k, v in (("limits", res and res.limits), ("requests", res and res.requests)) if v}
    if spec.uses_gpu:
        out.setdefault("limits", {})[spec.gpu.resource_name] = spec.gpu.count
    return out


def _server_container(spec: LlamaServerSpec, model: Model, image: str, config: OperatorConfig) -> dict[str, Any]:
    mounts = [{"name": "model", "mountPath": MODEL_DIR, "readOnly": True},
              {"name": "tmp", "mountPath": "/tmp"}]
    if _mmproj_volume(model):
        mounts.append({"name": "mmproj", "mountPath": MMPROJ_DIR, "readOnly": True})
    if _lora_volume(model):
        mounts.append({"name": "lora", "mountPath": LORA_DIR, "readOnly": True})
    if spec.storage.slots.enabled:
        mounts.append({"name": "slots", "mountPath": SLOTS_DIR})
    if spec.api_key_secret_ref is not None:
        mounts.append({"name": "api-key", "mountPath": API_KEY_DIR, "readOnly": True})
    if spec.server.system_prompt:
        mounts.append({"name": "config", "mountPath": CONFIG_DIR, "readOnly": True})
    startup_timeout = spec.server.startup_timeout_seconds
    container: dict[str, Any] = {
        "name": SERVER_CONTAINER,
        "image": image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["kubellama-server"],
        "args": server_args(spec, model, log_format=config.server_log_format),
        "env": [{"name": "HOME", "value": "/tmp"}, {"name": "HF_HOME", "value": "/tmp/.hf"}],
        "ports": [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}],
        "volumeMounts": mounts,
        # Loading a big model can take long: the startup probe gives it startupTimeoutSeconds.
        "startupProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": STARTUP_PERIOD,
                         "timeoutSeconds": 5,
                         "failureThreshold": max(1, math.ceil(startup_timeout / STARTUP_PERIOD))},
        # /health answers 503 until the model is loaded: only then does the pod get traffic.
        "readinessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 5,
                           "timeoutSeconds": 5, "failureThreshold": 3},
        # /health (public: no API key needed) answers from the event loop, never from the scheduler thread; a
        # dead or stuck engine answers 500/503, and a hung event loop not at all: 1 min of that restarts it.
        "livenessProbe": {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": 20,
                          "timeoutSeconds": 10, "failureThreshold": 3},
        # Let endpoints drop the pod before SIGTERM; the server then drains (--shutdown-timeout).
        "lifecycle": {"preStop": {"exec": {"command": ["sleep", str(PRESTOP_SECONDS)]}}},
        "securityContext": _container_security(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    resources = _server_resources(spec)
    if resources:
        container["resources"] = resources
    return container


def _volumes(spec: LlamaServerSpec, model: Model, name: str) -> list[dict[str, Any]]:
    vols: list[dict[str, Any]] = [{"name": "tmp", "emptyDir": {}}]
    claim = _model_claim_name(spec)
    if claim:
        vols.append({"name": "model", "persistentVolumeClaim": {
            "claimName": claim, "readOnly": spec.model.pvc is not None or spec.model.shared_cache}})
    elif spec.model.cache_mode == "image":
        assert spec.model.cache is not None and spec.model.cache.image is not None
        image = spec.model.cache.image
        vols.append({"name": "model", "image": {"reference": image.reference,
                                                **({"pullPolicy": image.pull_policy} if image.pull_policy else {})}})
    if _mmproj_volume(model):
        vols.append({"name": "mmproj", "emptyDir": {}})
    if _lora_volume(model):
        vols.append({"name": "lora", "emptyDir": {}})
    ref = spec.api_key_secret_ref
    if ref is not None:
        # Optional: check-api-key reports a missing Secret in the pod's status (a missing volume would not).
        vols.append({"name": "api-key", "secret": {
            "secretName": ref.name, "defaultMode": 0o440, "optional": True,
            "items": [{"key": ref.key, "path": API_KEY_FILE}]}})
    if spec.server.system_prompt:
        vols.append({"name": "config", "configMap": {
            "name": config_name(name), "items": [{"key": SYSTEM_PROMPT_FILE, "path": SYSTEM_PROMPT_FILE}]}})
    return vols


def _claim_templates(spec: LlamaServerSpec, name: str) -> list[dict[str, Any]]:
    out = []
    if not _model_claim_name(spec) and not spec.model.shared_cache:
        m = spec.storage.model
        out.append(_claim("model", name, m.access_modes, m.size, m.storage_class_name))
    slots = spec.storage.slots
    if slots.enabled:
        out.append(_claim("slots", name, ["ReadWriteOnce"], slots.size, slots.storage_class_name))
    return out


def _claim(volume: str, name: str, modes: list[str], size: Any, storage_class: str | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"accessModes": list(modes), "resources": {"requests": {"storage": size}}}
    if storage_class:
        spec["storageClassName"] = storage_class
    return {"metadata": {"name": volume, "labels": labels(name)}, "spec": spec}


def _pod_annotations(spec: LlamaServerSpec, scrape_annotations: bool) -> dict[str, str]:
    ann = dict(spec.pod_annotations or {})
    if scrape_annotations and spec.server.metrics:
        ann.update({"prometheus.io/scrape": "true", "prometheus.io/port": str(SERVER_PORT),
                    "prometheus.io/path": "/metrics"})
    return ann


def _tolerations(spec: LlamaServerSpec) -> list[dict[str, Any]]:
    tols = [t.to_dict() for t in spec.tolerations or []]
    if spec.uses_gpu and not any(t.get("key") == GPU_TAINT for t in tols):
        tols.append({"key": GPU_TAINT, "operator": "Exists", "effect": "NoSchedule"})
    return tols


def _node_selector(spec: LlamaServerSpec) -> dict[str, str]:
    sel = dict(spec.node_selector or {})
    product = spec.gpu.product
    if spec.uses_gpu and product:
        sel[GPU_PRODUCT_LABEL] = product
    return sel


def pod_spec(owner: Body, spec: LlamaServerSpec, model: Model, config: OperatorConfig) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    image = image_for(spec, config)
    pod: dict[str, Any] = {
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": termination_grace(spec),
        "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS, "runAsGroup": RUN_AS,
                            "fsGroup": RUN_AS, "fsGroupChangePolicy": "OnRootMismatch",
                            "seccompProfile": {"type": "RuntimeDefault"}},
        "containers": [_server_container(spec, model, image, config)],
        "volumes": _volumes(spec, model, name),
    }
    init = _init_containers(spec, model, image, config.image_pull_policy, config.hf_endpoint)
    if init:
        pod["initContainers"] = init
    if spec.service_account_name:
        pod["serviceAccountName"] = spec.service_account_name
    else:
        pod["automountServiceAccountToken"] = False
    for key, value in (("runtimeClassName", spec.runtime_class_name), ("priorityClassName", spec.priority_class_name),
                       ("affinity", spec.affinity)):
        if value:
            pod[key] = value
    if spec.image_pull_secrets:
        pod["imagePullSecrets"] = [{"name": s.name} for s in spec.image_pull_secrets]
    tols, sel = _tolerations(spec), _node_selector(spec)
    if tols:
        pod["tolerations"] = tols
    if sel:
        pod["nodeSelector"] = sel
    return pod


def build_statefulset(owner: Body, spec: LlamaServerSpec, model: Model, config: OperatorConfig, *,
                      scrape_annotations: bool) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    retention = spec.storage.retention
    template_meta: dict[str, Any] = {
        "labels": {**(spec.pod_labels or {}), **labels(name)},
    }
    template_meta["annotations"] = {**_pod_annotations(spec, scrape_annotations), ANNOTATION_MODEL: model.name}
    sts: dict[str, Any] = {
        "apiVersion": "apps/v1",
        "kind": "StatefulSet",
        "metadata": object_meta(owner, name),
        "spec": {
            "replicas": spec.replicas,
            "serviceName": headless_name(name),
            "selector": {"matchLabels": selector_labels(name)},
            # Replicas download and load independently; no need to wait for each other.
            "podManagementPolicy": "Parallel",
            "updateStrategy": {"type": "RollingUpdate"},
            "revisionHistoryLimit": 5,
            "persistentVolumeClaimRetentionPolicy": {
                "whenDeleted": retention.when_deleted, "whenScaled": retention.when_scaled},
            "template": {"metadata": template_meta, "spec": pod_spec(owner, spec, model, config)},
        },
    }
    claims = _claim_templates(spec, name)
    if claims:
        sts["spec"]["volumeClaimTemplates"] = claims
    return sts
