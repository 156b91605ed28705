"""The LlamaServer's spec (the root of the typed spec) and status."""

from __future__ import annotations

from typing import Literal, get_args

from .model import ModelSource, SecretKeyRef
from .network import EXTERNAL_SERVICE_MESSAGE, EXTERNAL_SERVICE_RULE, NetworkPolicy, Service
from .scaling import Autoscaling, InferencePool, Monitoring, Rollout, Routing
from .schema import Int64, Opaque, Rule, SpecModel, field
from .server import (SELF_EXTEND_FLAG, Gpu, LocalObjectReference, Resources, ServerSettings, Toleration,
                     self_extend_cel, turns_on_self_extend)
from .storage import Storage


#: CEL: whether `{o}` (self or oldSelf) has a shared spec.model.cache (any mode but perReplica).
_SHARED_CEL = "(has({o}.model.cache) && has({o}.model.cache.mode) && {o}.model.cache.mode != 'perReplica')"


class ApiKeySecretRef(SecretKeyRef):
    key: str = field("Key inside the Secret.", "api-key", minLength=1)


class LlamaServerSpec(SpecModel):
    """Desired state of a LlamaServer."""

    model: ModelSource
    replicas: int = field("Number of server pods.", 1, minimum=0)
    server: ServerSettings = field(default=ServerSettings)
    gpu: Gpu = field(default=Gpu)
    resources: Resources | None = field(default=None)
    node_selector: dict[str, str] | None = field("Extra node selector labels.", None)
    tolerations: list[Toleration] | None = field("Pod tolerations (the GPU taint is tolerated automatically).", None)
    affinity: Opaque | None = field("Core Affinity of the pods.", None)
    runtime_class_name: str | None = field("RuntimeClass of the pods (e.g. nvidia).", None)
    priority_class_name: str | None = field("PriorityClass of the pods.", None)
    pod_annotations: dict[str, str] | None = field("Extra pod annotations.", None)
    pod_labels: dict[str, str] | None = field("Extra pod labels.", None)
    service_account_name: str | None = field("ServiceAccount of the pods.", None)
    image: str | None = field("Server image; overrides the operator's default CPU/CUDA image.", None, minLength=1)
    image_pull_secrets: list[LocalObjectReference] | None = field("Pull secrets for the image.", None)
    storage: Storage = field(default=Storage)
    rollout: Rollout = field(default=Rollout)
    api_key_secret_ref: ApiKeySecretRef | None = field("Secret holding the API key clients must send.", None)
    service: Service = field(default=Service)
    network_policy: NetworkPolicy = field(default=NetworkPolicy)
    routing: Routing = field(default=Routing)
    autoscaling: Autoscaling = field(default=Autoscaling)
    inference_pool: InferencePool = field(default=InferencePool)
    monitoring: Monitoring = field(default=Monitoring)

    rules = (
        Rule("spec.autoscaling needs spec.routing.enabled: true (the router measures the load and holds requests)",
             "!has(self.autoscaling) || !has(self.autoscaling.enabled) || !self.autoscaling.enabled || "
             "(has(self.routing) && has(self.routing.enabled) && self.routing.enabled)",
             lambda s: not s.autoscaling.enabled or s.routing.enabled),
        Rule("switching between a pvc model source and a downloaded one changes the StatefulSet's "
             "volume claims, which Kubernetes forbids; create a new LlamaServer instead",
             "!has(oldSelf.model) || has(self.model.pvc) == has(oldSelf.model.pvc)"),
        Rule("spec.storage.model.claimName is unused with a pvc model source; remove one of them",
             "!has(self.storage) || !has(self.storage.model) || !has(self.storage.model.claimName) || "
             "!has(self.model.pvc)",
             lambda s: not (s.model.pvc is not None and s.storage.model.claim_name)),
        Rule(f"spec.server.extraArgs turns on self-extend ({SELF_EXTEND_FLAG} > 1), which kubellama-server refuses "
             "together with a multimodal projector (spec.model.mmproj); remove one of them",
             self_extend_cel(),
             lambda s: s.model.mmproj is None or not turns_on_self_extend(s.server.extra_args or [])),
        Rule(EXTERNAL_SERVICE_MESSAGE, EXTERNAL_SERVICE_RULE,
             lambda s: not s.service.external or s.api_key_secret_ref is not None or bool(
                 s.service.allow_unauthenticated)),
        Rule("switching spec.model.cache.mode between perReplica and a shared mode changes the StatefulSet's volume "
             "claims, which Kubernetes forbids; create a new LlamaServer instead",
             f"!has(oldSelf.model) || {_SHARED_CEL.format(o='self')} == {_SHARED_CEL.format(o='oldSelf')}"),
        Rule("spec.storage.model.claimName is unused with a shared spec.model.cache; remove it (name the claim in "
             "spec.model.cache.claimName with mode claim)",
             f"!{_SHARED_CEL.format(o='self')} || !has(self.storage) || !has(self.storage.model) || "
             "!has(self.storage.model.claimName)",
             lambda s: not s.model.shared_cache or s.storage.model.claim_name is None),
    )

    @property
    def uses_gpu(self) -> bool:
        return self.gpu.count > 0

    @property
    def autoscaled(self) -> bool:
        """Autoscaling is on (it needs the router)."""
        return self.routing.enabled and self.autoscaling.enabled

    @property
    def checks_lora_scales(self) -> bool:
        """The status pass reads the pods' LoRA scales (`lora_scales`): there are adapters and the servers
        export metrics (`spec.server.metrics`)."""
        return bool(self.model.loras) and bool(self.server.metrics)


Phase = Literal["Pending", "Downloading", "Loading", "Ready", "Degraded", "Failed"]
PHASES = list(get_args(Phase))


class Condition(SpecModel):
    """A status condition."""

    type: str
    status: Literal["True", "False", "Unknown"]
    reason: str | None = None
    message: str | None = None
    last_transition_time: str | None = field(default=None, format="date-time")
    observed_generation: Int64 | None = None


class StatusLora(SpecModel):
    """A LoRA adapter."""

    id: int | None = field("Adapter id (its position in spec.model.loras).", None)
    name: str | None = field("Its name (spec.model.loras[].name), when set.", None)
    file: str | None = field("Adapter file name.", None)


class StatusModel(SpecModel):
    """The resolved model."""

    name: str | None = field("Served model id.", None)
    file: str | None = field("Model file name.", None)
    path: str | None = field("Path of the file inside the server container.", None)
    source: str | None = field("Where it comes from.", None)
    size_bytes: Int64 | None = None
    sha256: str | None = field("SHA-256 of the fetched file (from the fetcher).", None)
    mmproj: str | None = field("File name of the multimodal projector (spec.model.mmproj), when there is one.", None)
    loras: list[StatusLora] | None = field("The LoRA adapters (spec.model.loras), in order: id is the adapter's id on "
                                           "the server.", None)


class CacheRelease(SpecModel):
    """A released key."""

    key: str | None = None
    since: str | None = field(default=None, format="date-time")


class StatusCache(SpecModel):
    """The model cache (spec.model.cache)."""

    mode: str | None = None
    claim_name: str | None = None
    keys: list[str] | None = field("Cache keys of the files this LlamaServer uses.", None)
    nearly_full: str | None = field("Set when the cache's free space is below what the next download needs.", None)
    released: list[CacheRelease] | None = field(
        "Keys this LlamaServer no longer uses, since when; removed after spec.model.cache.cleanupAfterSeconds "
        "unless another LlamaServer uses them.", None)
    removed: list[str] | None = field("Keys removed by the last cleanup.", None)


class StatusDownload(SpecModel):
    """The download Job of a shared cache."""

    job: str | None = None
    state: Literal["Pending", "Running", "Complete", "Failed"] | None = None
    message: str | None = None


class StatusRollout(SpecModel):
    """A pod template change in progress."""

    phase: Literal["Downloading", "Surge", "Replacing", "ScalingDown", "RollingUpdate"] | None = None
    message: str | None = None
    slots: str | None = field("Why saved slots are not restored (a model change: the server refuses another "
                              "model's).", None)


class LlamaServerStatus(SpecModel):
    """Observed state, written by the operator."""

    phase: Phase | None = field("Pending, Downloading, Loading, Ready, Degraded or Failed.", None)
    message: str | None = field("Human-readable summary of the phase.", None)
    conditions: list[Condition] | None = field(default=None, **{"x-kubernetes-list-type": "map",
                                                                "x-kubernetes-list-map-keys": ["type"]})
    replicas: int | None = field("Pods that exist.", None, minimum=0)
    ready_replicas: int | None = field("Pods whose model is loaded.", None, minimum=0)
    ready: str | None = field("readyReplicas/replicas, for kubectl get.", None)
    selector: str | None = field("Label selector of the pods (scale subresource).", None)
    endpoint: str | None = field("Cluster-internal OpenAI base URL.", None)
    observed_generation: Int64 | None = None
    model: StatusModel | None = None
    cache: StatusCache | None = None
    download: StatusDownload | None = None
    rollout: StatusRollout | None = None
