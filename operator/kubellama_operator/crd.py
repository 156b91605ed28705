"""The `LlamaServer` CustomResourceDefinition, built in Python.

This module is the single source of truth for the schema: `crds/kubellama.dev_llamaservers.yaml`
is generated from it (``python -m kubellama_operator.crd > crds/kubellama.dev_llamaservers.yaml``;
a test fails when the file is stale) and the operator applies the schema's defaults itself
(`spec.apply_defaults`), so it behaves the same on API servers and emulators that do not default.
"""

from __future__ import annotations

import sys
from typing import Any

import yaml

from . import CRD_NAME, GROUP, KIND, PLURAL, SHORT_NAMES, SINGULAR, VERSION, __version__

PHASES = ["Pending", "Downloading", "Loading", "Ready", "Degraded", "Failed"]

#: Server flags the operator sets itself from the spec; `server.extraArgs` may not set them (in any spelling:
#: `extraargs` reads the list with the server's own parser, the CEL rule catches `FLAG` and `FLAG=...`).
MANAGED_FLAGS = ["-m", "--model", "--host", "--port", "-a", "--alias", "--slot-save-path", "--slot-persist",
                 "--shutdown-timeout", "-spf", "--system-prompt-file", "-mu", "--model-url", "-hfr", "--hf-repo",
                 "-hff", "--hf-file", "-hf", "-mm", "--mmproj", "-mmu", "--mmproj-url", "--no-mmproj-offload",
                 "--no-mmproj", "--lora", "--lora-scaled"]
_KEY_FROM_SECRET = "API keys come from spec.apiKeySecretRef (a Secret), never from the spec itself"
_NO_TLS = ("the server pod does not terminate TLS (the key would have to be in the image); terminate it at "
           "an Ingress, a Gateway or a service mesh")
#: Server flags no LlamaServer may set, with the reason (the same checks as MANAGED_FLAGS).
FORBIDDEN_FLAGS = {
    "--api-key": _KEY_FROM_SECRET,
    "--api-key-file": _KEY_FROM_SECRET,
    "--path": "it would serve files of the container (the mounted API key among them) to anyone",
    "--ssl-key-file": _NO_TLS,
    "--ssl-cert-file": _NO_TLS,
}

#: The self-extend flag kubellama-server refuses together with --mmproj (values > 1 turn it on).
SELF_EXTEND_FLAG = "--grp-attn-n"
#: A --grp-attn-n value that turns self-extend on (an integer > 1); shared by the CEL rule and `spec.problems`.
SELF_EXTEND_ON = r"^0*([2-9]|[1-9][0-9]+)$"
_REFUSED_FLAGS = MANAGED_FLAGS + list(FORBIDDEN_FLAGS)
#: Most entries in server.extraArgs (the CEL rule below walks their indices).
MAX_EXTRA_ARGS = 64
#: Most LoRA adapters in spec.model.loras (one fetch init container each).
MAX_LORAS = 16
#: Longest spec.model.loras[].path (bounds the cost of the CEL rule comparing the paths).
MAX_PATH = 1024

Schema = dict[str, Any]

#: A Service reachable from outside the cluster needs an API key, unless explicitly allowed without one.
EXTERNAL_SERVICE_TYPES = ("NodePort", "LoadBalancer")
EXTERNAL_SERVICE_RULE = ("!has(self.service) || !has(self.service.type) || self.service.type == 'ClusterIP' "
                         "|| has(self.apiKeySecretRef) || (has(self.service.allowUnauthenticated) "
                         "&& self.service.allowUnauthenticated)")
EXTERNAL_SERVICE_MESSAGE = ("a NodePort or LoadBalancer spec.service exposes the server outside the cluster: set "
                            "spec.apiKeySecretRef, or spec.service.allowUnauthenticated: true to serve without a key")


def _typed(type_: str, description: str = "", **kw: Any) -> Schema:
    out: Schema = {"type": type_}
    if description:
        out["description"] = description
    out.update(kw)
    return out


def _s(description: str = "", **kw: Any) -> Schema:
    return _typed("string", description, **kw)


def _b(description: str = "", **kw: Any) -> Schema:
    return _typed("boolean", description, **kw)


def _i(description: str = "", minimum: int | None = None, **kw: Any) -> Schema:
    return _typed("integer", description, **({"minimum": minimum} if minimum is not None else {}), **kw)


def _o(description: str, properties: dict[str, Schema], required: list[str] | None = None,
       rules: list[tuple[str, str]] | None = None, **kw: Any) -> Schema:
    out: Schema = {"type": "object", "description": description, "properties": properties}
    if required:
        out["required"] = required
    if rules:
        out["x-kubernetes-validations"] = [{"rule": r, "message": m} for r, m in rules]
    out.update(kw)
    return out


def _map(description: str) -> Schema:
    return {"type": "object", "description": description, "additionalProperties": {"type": "string"}}


def _quantity(description: str = "", **kw: Any) -> Schema:
    out: Schema = {"anyOf": [{"type": "integer"}, {"type": "string"}], "maxLength": 64,
                   "x-kubernetes-int-or-string": True,
                   "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"}
    if description:
        out["description"] = description
    out.update(kw)
    return out


def _secret_ref(description: str, default_key: str) -> Schema:
    return _o(description, {
        "name": _s("Secret name, in the LlamaServer's namespace.", minLength=1),
        "key": _s("Key inside the Secret.", default=default_key, minLength=1),
    }, required=["name"])


_HF_REPO = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"
_SHA256 = r"^[A-Fa-f0-9]{64}$"


def _mmproj_schema() -> Schema:
    return _o(
        "The multimodal projector (mmproj GGUF) that goes with the model, so that prompts may contain "
        "images (kubellama-server --mmproj): exactly one of url, huggingFace or path. url and huggingFace "
        "are downloaded by the fetch-mmproj init container (after fetch-model): for a url or huggingFace "
        "model into the model volume (its mmproj/ folder, kept across restarts like the model); for a pvc "
        "model, whose claim is mounted read-only, into an emptyDir, downloaded again whenever a pod "
        "starts (put the file on the claim and use path to avoid that). path is a file on the pvc "
        "model's claim (no download). Not with self-extend (--grp-attn-n > 1 in server.extraArgs).",
        {
            "url": _s("HTTP(S) URL of the projector's .gguf file. The file keeps the URL path's basename.",
                      pattern=r"^https?://.+", maxLength=2048),
            "huggingFace": _o("A file in a Hugging Face repository (spec.model.tokenSecretRef, when set, "
                              "is used for it too).", {
                "repo": _s("Repository id, e.g. ggml-org/gemma-3-4b-it-GGUF.", pattern=_HF_REPO),
                "file": _s("Path of the projector's .gguf file inside the repository, e.g. "
                           "mmproj-model-f16.gguf.", minLength=1),
                "revision": _s("Branch, tag or commit (default: main).", minLength=1),
            }, required=["repo", "file"]),
            "path": _s("Path of the projector's .gguf file inside spec.model.pvc's claim (pvc models only).",
                       minLength=1, pattern=r"^[^/].*$"),
            "sha256": _s("Expected SHA-256 of the projector file; the download fails on a mismatch.",
                         pattern=_SHA256),
            "offload": _b("Run the projector on the GPU with the model; false keeps it on the CPU "
                          "(--no-mmproj-offload).", default=True),
        },
        rules=[
            ("(has(self.url) ? 1 : 0) + (has(self.huggingFace) ? 1 : 0) + (has(self.path) ? 1 : 0) == 1",
             "spec.model.mmproj needs exactly one source: url, huggingFace or path"),
        ],
    )


# --- Models (issue 19): the model cache, downloads off the GPU, rollouts without downtime. ---
CACHE_MODES = ["perReplica", "shared", "claim", "image"]
CACHE_PVC_RULE = "!has(self.cache) || !has(self.cache.mode) || self.cache.mode == 'perReplica' || !has(self.pvc)"
CACHE_PVC_MESSAGE = ("spec.model.cache is for downloaded models; a pvc model is read from its own claim "
                     "(leave cache.mode perReplica)")
_SHARED_MODE = "(has({o}.model.cache) && has({o}.model.cache.mode) && {o}.model.cache.mode != 'perReplica')"
CACHE_TRANSITION_RULE = (f"!has(oldSelf.model) || {_SHARED_MODE.format(o='self')} == "
                         f"{_SHARED_MODE.format(o='oldSelf')}")
CACHE_TRANSITION_MESSAGE = ("switching spec.model.cache.mode between perReplica and a shared mode changes the "
                            "StatefulSet's volume claims, which Kubernetes forbids; create a new LlamaServer instead")
CACHE_STORAGE_RULE = (f"!{_SHARED_MODE.format(o='self')} || !has(self.storage) || !has(self.storage.model) || "
                      "!has(self.storage.model.claimName)")
CACHE_STORAGE_MESSAGE = ("spec.storage.model.claimName is unused with a shared spec.model.cache; remove it "
                         "(name the claim in spec.model.cache.claimName with mode claim)")
#: spec.model.loras[].scale: the adapter's default scale on every replica (--lora-scaled); no default (1.0).
LORA_SCALE_SCHEMA: Schema = {"type": "number", "minimum": -16, "maximum": 16,
                             "description": "The adapter's default scale on every replica (kubellama-server "
                                            "--lora-scaled; 1.0 when unset; 0 starts it switched off). A request's "
                                            "\"lora\" and POST /lora-adapters still change it."}
ROLLOUT_STRATEGIES = ["RollingUpdate", "Surge"]


def _cache_schema() -> Schema:
    return _o(
        "Where downloaded files (model, projector, LoRA adapters) are kept. perReplica (default): each replica "
        "downloads into its own claim (spec.storage.model) in init containers. shared: one ReadWriteMany claim "
        "per namespace that the operator creates (kubellama-model-cache, shared by every LlamaServer there); "
        "claim: a ReadWriteMany claim you name. In both a download Job (CPU only) fills the cache before any "
        "server pod is created, files are stored under a key (sha256-<hex> with a sha256, else a hash of the "
        "source and revision), the servers mount the claim read-only, and files no LlamaServer uses are removed "
        "after cleanupAfterSeconds. image: an OCI image volume holding the same layout (no download).", {
            "mode": _s("perReplica, shared, claim or image.", enum=CACHE_MODES, default="perReplica"),
            "claimName": _s("The ReadWriteMany claim of mode claim, in the LlamaServer's namespace.",
                            minLength=1, maxLength=253),
            "size": _quantity("Size of the claim the operator creates (mode shared; default 100Gi)."),
            "storageClassName": _s("StorageClass of the claim the operator creates (mode shared); it must "
                                   "provide ReadWriteMany volumes.", maxLength=253),
            "image": _o("The image volume of mode image (Kubernetes ImageVolume).", {
                "reference": _s("Image reference, e.g. registry.example/models/qwen:1.", minLength=1,
                                maxLength=1024),
                "pullPolicy": _s("Pull policy of the image volume.", enum=["Always", "IfNotPresent", "Never"]),
            }, required=["reference"]),
            "cleanupAfterSeconds": _i("Files of the shared cache no LlamaServer of the namespace references "
                                      "are removed this long after they stopped being used.", 0,
                                      maximum=30 * 86400, default=3600),
        }, rules=[
            ("!has(self.mode) || self.mode != 'claim' || has(self.claimName)",
             "spec.model.cache.mode claim needs spec.model.cache.claimName"),
            ("!has(self.claimName) || (has(self.mode) && self.mode == 'claim')",
             "spec.model.cache.claimName is only used with mode claim"),
            ("(has(self.mode) && self.mode == 'image') == has(self.image)",
             "spec.model.cache.mode image needs spec.model.cache.image, which no other mode uses"),
            ("(!has(self.size) && !has(self.storageClassName)) || (has(self.mode) && self.mode == 'shared')",
             "spec.model.cache.size and storageClassName are only used with mode shared"),
        ])


def _rollout_schema() -> Schema:
    return _o("How pods are replaced when their template changes (a new model, new flags).", {
        "strategy": _s("RollingUpdate: one pod at a time (with one replica the model is unavailable until the "
                       "new pod is Ready). Surge: first one extra pod with the new template (it needs room: one "
                       "more GPU), then the others one at a time, then the extra pod goes: the Service never "
                       "lacks a Ready endpoint, with one replica too.", enum=ROLLOUT_STRATEGIES,
                       default="RollingUpdate"),
    })


MODELS_STATUS: dict[str, Schema] = {
    "cache": _o("The model cache (spec.model.cache).", {
        "mode": _s(), "claimName": _s(),
        "keys": {"type": "array", "items": _s(), "description": "Cache keys of the files this LlamaServer uses."},
        "nearlyFull": _s("Set when the cache's free space is below what the next download needs."),
        "released": {"type": "array", "description": "Keys this LlamaServer no longer uses, since when; removed "
                                                     "after spec.model.cache.cleanupAfterSeconds unless another "
                                                     "LlamaServer uses them.",
                     "items": _o("A released key.", {"key": _s(), "since": _s(format="date-time")})},
        "removed": {"type": "array", "items": _s(), "description": "Keys removed by the last cleanup."},
    }),
    "download": _o("The download Job of a shared cache.", {
        "job": _s(), "state": _s(enum=["Pending", "Running", "Complete", "Failed"]), "message": _s(),
    }),
    "rollout": _o("A pod template change in progress.", {
        "phase": _s(enum=["Downloading", "Surge", "Replacing", "ScalingDown", "RollingUpdate"]),
        "message": _s(),
        "slots": _s("Why saved slots are not restored (a model change: the server refuses another model's)."),
    }),
}


def _lora_schema() -> Schema:
    return _o(
        "A LoRA adapter (GGUF) for the model, loaded at start-up with scale 1.0 (kubellama-server --lora): "
        "exactly one of url, huggingFace or path. url and huggingFace are downloaded by an init container "
        "of its own, fetch-lora-<i> (after fetch-model and fetch-mmproj), into the folder lora/<i>/ of the "
        "model volume, or, for a pvc model (mounted read-only), of an emptyDir downloaded again whenever a pod "
        "starts. path is a file on the pvc model's claim (no download).",
        {
            "name": _s("A label for people, shown in the status and in download messages. The server knows "
                       "the adapters by their position in spec.model.loras: id 0, 1, ... in GET /lora-adapters, "
                       "POST /lora-adapters and a request's \"lora\": [{\"id\": N, \"scale\": S}].",
                       minLength=1, maxLength=63),
            "url": _s("HTTP(S) URL of the adapter's .gguf file. The file keeps the URL path's basename.",
                      pattern=r"^https?://.+", maxLength=2048),
            "huggingFace": _o("A file in a Hugging Face repository (spec.model.tokenSecretRef, when set, "
                              "is used for it too).", {
                "repo": _s("Repository id, e.g. my-org/qwen2.5-1.5b-sql-lora-GGUF.",
                           pattern=_HF_REPO),
                "file": _s("Path of the adapter's .gguf file inside the repository.", minLength=1),
                "revision": _s("Branch, tag or commit (default: main).", minLength=1),
            }, required=["repo", "file"]),
            "path": _s("Path of the adapter's .gguf file inside spec.model.pvc's claim (pvc models only).",
                       minLength=1, maxLength=MAX_PATH, pattern=r"^[^/].*$"),
            "sha256": _s("Expected SHA-256 of the adapter file; the download fails on a mismatch.",
                         pattern=_SHA256),
            "scale": LORA_SCALE_SCHEMA,
        },
        rules=[
            ("(has(self.url) ? 1 : 0) + (has(self.huggingFace) ? 1 : 0) + (has(self.path) ? 1 : 0) == 1",
             "each spec.model.loras entry needs exactly one source: url, huggingFace or path"),
        ],
    )


def _model_schema() -> Schema:
    return _o(
        "Where the GGUF model comes from: exactly one of url, huggingFace or pvc.",
        {
            "url": _s("HTTP(S) URL of a .gguf file. The file keeps the URL path's basename.",
                      pattern=r"^https?://.+", maxLength=2048),
            "huggingFace": _o("A file in a Hugging Face repository.", {
                "repo": _s("Repository id, e.g. ggml-org/gemma-3-270m-it-GGUF.", pattern=_HF_REPO),
                "file": _s("Path of the .gguf file inside the repository.", minLength=1),
                "revision": _s("Branch, tag or commit (default: main).", minLength=1),
            }, required=["repo", "file"]),
            "pvc": _o("A model file already on an existing PersistentVolumeClaim (no download).", {
                "claimName": _s("Name of the claim, in the LlamaServer's namespace.", minLength=1),
                "path": _s("Path of the .gguf file inside the claim.", minLength=1,
                           pattern=r"^[^/].*$"),
            }, required=["claimName", "path"]),
            "sha256": _s("Expected SHA-256 of the file; the download fails on a mismatch.", pattern=_SHA256),
            "alias": _s("Model id served by /v1/models (default: the file name).", minLength=1),
            "tokenSecretRef": _secret_ref(
                "Secret with a Hugging Face access token, for gated repositories (sets HF_TOKEN); used "
                "for the model's, the projector's and the LoRA adapters' huggingFace downloads.",
                "token"),
            "mmproj": _mmproj_schema(),
            "cache": _cache_schema(),
            "loras": {"type": "array", "maxItems": MAX_LORAS, "items": _lora_schema(),
                      "description": "LoRA adapters for the model (kubellama-server --lora, in this order: the "
                                     "first is adapter id 0). One server then serves several fine-tunes of its "
                                     "model: a request picks adapters and scales with \"lora\": [{\"id\": N, "
                                     "\"scale\": S}], POST /lora-adapters changes the default scales."},
        },
        rules=[
            ("(has(self.url) ? 1 : 0) + (has(self.huggingFace) ? 1 : 0) + (has(self.pvc) ? 1 : 0) == 1",
             "spec.model needs exactly one source: url, huggingFace or pvc"),
            ("!has(self.tokenSecretRef) || has(self.huggingFace) || (has(self.mmproj) && has(self.mmproj.huggingFace))"
             " || (has(self.loras) && self.loras.exists(l, has(l.huggingFace)))",
             "spec.model.tokenSecretRef is only used with a huggingFace source (spec.model.huggingFace, "
             "spec.model.mmproj.huggingFace or spec.model.loras[].huggingFace)"),
            ("!has(self.mmproj) || !has(self.mmproj.path) || has(self.pvc)",
             "spec.model.mmproj.path is a file on the model's claim and needs a pvc model source; "
             "use mmproj.url or mmproj.huggingFace otherwise"),
            ("!has(self.loras) || has(self.pvc) || self.loras.all(l, !has(l.path))",
             "spec.model.loras[].path is a file on the model's claim and needs a pvc model source; "
             "use url or huggingFace for the adapter otherwise"),
            # Conditionals, not ||/&&: cel-python (the tests' evaluator) does not short-circuit errors.
            ("!has(self.loras) || self.loras.all(a, has(a.path) ? "
             "self.loras.exists_one(b, has(b.path) ? b.path == a.path : false) : true)",
             "two spec.model.loras entries name the same path: list each adapter once"),
            (CACHE_PVC_RULE, CACHE_PVC_MESSAGE),
        ],
    )


def _server_schema() -> Schema:
    return _o("llama.cpp server settings; unset fields keep the server's defaults.", {
        "contextSize": _i("Context size in tokens for all slots together (-c).", 0),
        "parallel": _i("Number of slots, i.e. requests decoded together (-np).", 1),
        "batchSize": _i("Logical batch size (-b).", 1),
        "ubatchSize": _i("Physical batch size (-ub).", 1),
        "threads": _i("CPU threads for generation (-t).", 1),
        "gpuLayers": _i("Layers offloaded to the GPU (-ngl); default: all when gpu.count > 0.", 0),
        "embedding": _b("Serve embeddings only (--embedding)."),
        "chatTemplate": _s("Chat template name or Jinja text (--chat-template).", minLength=1),
        "systemPrompt": _s("System prompt prepended to every conversation (-spf).", minLength=1),
        "nPredict": _i("Default maximum tokens to generate, -1 = unlimited (-n).", -1),
        "metrics": _b("Expose Prometheus metrics on /metrics (--metrics).", default=True),
        "shutdownTimeoutSeconds": _i(
            "On termination, how long running requests may finish (--shutdown-timeout). The pod's "
            "terminationGracePeriodSeconds is derived from it: 5 s preStop + this + 60 s slot save (with "
            "storage.slots.restoreOnStart) + 15 s to stop and exit.", 0,
            default=30),
        "startupTimeoutSeconds": _i(
            "How long the server may take to load the model before the pod is restarted.", 30,
            default=1800),
        "extraArgs": {"type": "array", "items": {"type": "string", "maxLength": 1024},
                      "description": "More kubellama-server flags, passed through as they are. The operator reads "
                                     "them with the server's own parser (flags in full, no abbreviations): an "
                                     "unknown flag, a bad value, a flag the operator sets from the spec (model, "
                                     "host, port, alias, slots, shutdown timeout, system prompt, projector, "
                                     "adapters) or --api-key*, --path or --ssl-* makes the LlamaServer Failed "
                                     "(reason InvalidSpec) instead of a crash-looping pod.",
                      "maxItems": MAX_EXTRA_ARGS,
                      "x-kubernetes-validations": [{
                          "rule": "self.all(a, !(a in FLAGS) && !FLAGS.exists(f, a.startsWith(f + '=')))"
                                  .replace("FLAGS", repr(_REFUSED_FLAGS).replace("'", '"')),
                          "message": "spec.server.extraArgs may not set flags the operator manages or refuses: "
                                     + ", ".join(_REFUSED_FLAGS)}]},
    })


def _gpu_schema() -> Schema:
    return _o("GPU scheduling. count 0 means a CPU server.", {
        "count": _i("GPUs per replica.", 0, default=0),
        "resourceName": _s("Extended resource to request.", default="nvidia.com/gpu", minLength=1),
        "product": _s("Required value of the node label nvidia.com/gpu.product, e.g. NVIDIA-L4."),
        "tensorSplit": {"type": "array", "items": {"type": "number", "minimum": 0}, "maxItems": 16,
                        "description": "Share of the model per GPU (-ts), e.g. [3, 1]."},
        "mainGpu": _i("GPU for small tensors and scratch (-mg).", 0),
    }, rules=[
        ("(has(self.count) && self.count > 0) || (!has(self.product) && !has(self.tensorSplit) && !has(self.mainGpu))",
         "spec.gpu.product, tensorSplit and mainGpu need spec.gpu.count > 0"),
        ("!has(self.tensorSplit) || (has(self.count) && size(self.tensorSplit) <= self.count)",
         "spec.gpu.tensorSplit has more entries than spec.gpu.count"),
    ])


def _resources_schema() -> Schema:
    qmap = {"type": "object", "additionalProperties": _quantity()}
    return _o("Compute resources of the server container (core ResourceRequirements).", {
        "limits": dict(qmap, description="Maximum resources."),
        "requests": dict(qmap, description="Requested resources."),
    })


def _tolerations_schema() -> Schema:
    return {"type": "array", "description": "Pod tolerations (the GPU taint is tolerated automatically).",
            "items": _o("A core Toleration.", {
                "key": _s(), "operator": _s(enum=["Exists", "Equal"]), "value": _s(),
                "effect": _s(enum=["NoSchedule", "PreferNoSchedule", "NoExecute"]),
                "tolerationSeconds": {"type": "integer", "format": "int64"},
            })}


def _storage_schema() -> Schema:
    size = _quantity("Volume size.")
    return _o("Volumes for the model cache and for saved slots (prompt caches).", {
        "model": _o("Model cache volume (unused for a pvc model source).", {
            "size": dict(size, default="20Gi"),
            "storageClassName": _s("StorageClass of the per-replica claims.", maxLength=253),
            "accessModes": {"type": "array", "items": _s(enum=["ReadWriteOnce", "ReadWriteOncePod",
                                                              "ReadWriteMany", "ReadOnlyMany"]),
                            "default": ["ReadWriteOnce"], "minItems": 1, "maxItems": 4},
            "claimName": _s("Existing claim shared by all replicas instead of one claim per replica; "
                            "use a ReadWriteMany claim when replicas > 1.", minLength=1, maxLength=253),
        }),
        "slots": _o("Slot (KV/prompt cache) persistence for warm restarts.", {
            "enabled": _b("Give each replica a volume for /slots/save files.", default=False),
            "size": dict(size, default="2Gi"),
            "storageClassName": _s("StorageClass of the slot claims.", maxLength=253),
            "restoreOnStart": _b("Save every slot on shutdown and restore them at start-up "
                                 "(--slot-persist).", default=False),
        }, rules=[("!has(self.restoreOnStart) || !self.restoreOnStart || (has(self.enabled) && self.enabled)",
                   "spec.storage.slots.restoreOnStart needs spec.storage.slots.enabled: true")]),
        "retention": _o("What happens to the per-replica claims (StatefulSet "
                        "persistentVolumeClaimRetentionPolicy).", {
            "whenDeleted": _s("When the LlamaServer is deleted.", enum=["Retain", "Delete"],
                              default="Retain"),
            "whenScaled": _s("When replicas are scaled down.", enum=["Retain", "Delete"],
                             default="Retain"),
        }),
    })


def _label_selector(description: str) -> Schema:
    return _o(description, {
        "matchLabels": _map("Labels the object must have."),
        "matchExpressions": {"type": "array", "maxItems": 16, "description": "Set-based requirements.",
                             "items": _o("A LabelSelectorRequirement.", {
                                 "key": _s(minLength=1), "operator": _s(enum=["In", "NotIn", "Exists", "DoesNotExist"]),
                                 "values": {"type": "array", "items": _s(), "maxItems": 64}},
                                 required=["key", "operator"])},
    })


def _network_policy_schema() -> Schema:
    return _o(
        "The NetworkPolicy (named after the LlamaServer) that admits traffic to the server pods' port: the "
        "router (pods labelled app.kubernetes.io/component: router in the same namespace), the Prometheus "
        "the operator is configured with (--prometheus-namespace-selector/--prometheus-pod-selector), and "
        "what is listed here; nothing else. With a NodePort or LoadBalancer service every source is admitted "
        "(the Service publishes the port outside the cluster; spec.apiKeySecretRef guards it).",
        {
            "enabled": _b("Create the NetworkPolicy; false leaves the pods open to every pod of the cluster.",
                          default=True),
            "allowedNamespaces": {"type": "array", "maxItems": 32, "items": _s(
                pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", maxLength=63),
                "description": "Namespaces (by name) whose pods may call the server."},
            "from": {"type": "array", "maxItems": 16, "description": "More sources (core NetworkPolicyPeer).",
                     "items": _o("A NetworkPolicyPeer: pods, namespaces or an IP block.", {
                         "podSelector": _label_selector("Pods (in the namespaces of namespaceSelector, else in "
                                                        "the LlamaServer's namespace)."),
                         "namespaceSelector": _label_selector("Namespaces."),
                         "ipBlock": _o("An IP range.", {
                             "cidr": _s("CIDR, e.g. 10.0.0.0/8.", minLength=1),
                             "except": {"type": "array", "items": _s(), "maxItems": 16,
                                        "description": "CIDRs inside cidr to leave out."},
                         }, required=["cidr"]),
                     })},
        })


def _self_extend_rule() -> tuple[str, str]:
    """With a projector, server.extraArgs may not turn self-extend on (`--grp-attn-n=N` or `--grp-attn-n N`, N > 1).

    Standard CEL only (no list/string extensions): the two-argument form is found by walking the
    indices of the list, which maxItems bounds. The list is taken through a conditional so that no
    step of the walk is an error (cel-python, the tests' evaluator, does not short-circuit errors).
    """
    args = "(has(self.server) && has(self.server.extraArgs) ? self.server.extraArgs : [])"
    flag, on = SELF_EXTEND_FLAG, SELF_EXTEND_ON
    inline = f"{args}.exists(a, a.matches('{on.replace('^', '^' + flag + '=')}'))"
    indices = "[" + ", ".join(str(i) for i in range(MAX_EXTRA_ARGS - 1)) + "]"
    split = (f"{indices}.exists(i, i + 1 < size({args}) && {args}[i] == '{flag}' "
             f"&& {args}[i + 1].matches('{on}'))")
    return (f"!has(self.model.mmproj) || !({inline} || {split})",
            f"spec.server.extraArgs turns on self-extend ({flag} > 1), which kubellama-server refuses "
            "together with a multimodal projector (spec.model.mmproj); remove one of them")


def spec_schema() -> Schema:
    return _o("Desired state of a LlamaServer.", {
        "model": _model_schema(),
        "replicas": _i("Number of server pods.", 0, default=1),
        "server": _server_schema(),
        "gpu": _gpu_schema(),
        "resources": _resources_schema(),
        "nodeSelector": _map("Extra node selector labels."),
        "tolerations": _tolerations_schema(),
        "affinity": {"type": "object", "description": "Core Affinity of the pods.",
                     "x-kubernetes-preserve-unknown-fields": True},
        "runtimeClassName": _s("RuntimeClass of the pods (e.g. nvidia)."),
        "priorityClassName": _s("PriorityClass of the pods."),
        "podAnnotations": _map("Extra pod annotations."),
        "podLabels": _map("Extra pod labels."),
        "serviceAccountName": _s("ServiceAccount of the pods."),
        "image": _s("Server image; overrides the operator's default CPU/CUDA image.", minLength=1),
        "imagePullSecrets": {"type": "array", "description": "Pull secrets for the image.",
                             "items": _o("A LocalObjectReference.", {"name": _s(minLength=1)},
                                         required=["name"])},
        "storage": _storage_schema(),
        "rollout": _rollout_schema(),
        "apiKeySecretRef": _secret_ref("Secret holding the API key clients must send.", "api-key"),
        "service": _o("The ClusterIP (or other) Service named after the LlamaServer.", {
            "type": _s("Service type.", enum=["ClusterIP", "NodePort", "LoadBalancer"],
                       default="ClusterIP"),
            "port": _i("Service port.", 1, maximum=65535, default=8080),
            "annotations": _map("Service annotations."),
            "allowUnauthenticated": _b("Allow a NodePort or LoadBalancer Service without spec.apiKeySecretRef "
                                       "(the server is then open to whoever reaches the node or load "
                                       "balancer). Without it, such a Service needs an API key."),
        }),
        "networkPolicy": _network_policy_schema(),
        "routing": _routing_schema(),
        "autoscaling": _autoscaling_schema(),
        "inferencePool": _inferencepool_schema(),
        "monitoring": _o("Prometheus scraping.", {
            "serviceMonitor": _b("Create a ServiceMonitor (when its CRD is installed; pod scrape "
                                 "annotations otherwise).", default=False),
            "interval": _s("Scrape interval.", pattern=r"^[0-9]+(ms|s|m|h)$", default="30s"),
        }),
    }, required=["model"], rules=[
        ("!has(self.autoscaling) || !has(self.autoscaling.enabled) || !self.autoscaling.enabled || "
         "(has(self.routing) && has(self.routing.enabled) && self.routing.enabled)",
         "spec.autoscaling needs spec.routing.enabled: true (the router measures the load and holds requests)"),
        ("!has(oldSelf.model) || has(self.model.pvc) == has(oldSelf.model.pvc)",
         "switching between a pvc model source and a downloaded one changes the StatefulSet's "
         "volume claims, which Kubernetes forbids; create a new LlamaServer instead"),
        ("!has(self.storage) || !has(self.storage.model) || !has(self.storage.model.claimName) || !has(self.model.pvc)",
         "spec.storage.model.claimName is unused with a pvc model source; remove one of them"),
        _self_extend_rule(),
        (EXTERNAL_SERVICE_RULE, EXTERNAL_SERVICE_MESSAGE),
        (CACHE_TRANSITION_RULE, CACHE_TRANSITION_MESSAGE),
        (CACHE_STORAGE_RULE, CACHE_STORAGE_MESSAGE),
    ])


#: kubellama-router's strategies (kubellama_router.strategies.NAMES; a test checks they agree).
ROUTING_STRATEGIES = ["prefix", "least-load", "session", "round-robin", "random", "kubeai-prefixhash"]


def _routing_schema() -> Schema:
    return _o("A cache-aware router in front of the replicas (kubellama-router): keeps a conversation on the "
              "replica holding its prompt cache, spreads load, retries refused requests. status.endpoint then "
              "points at the router's Service (<name>-router).", {
                  "enabled": _b("Run the router.", default=False),
                  "strategy": _s("prefix: longest cached prompt prefix under a bounded load; least-load; session "
                                 "(x-session-id header or the OpenAI user field); round-robin; random; "
                                 "kubeai-prefixhash (KubeAI's PrefixHash, for comparison).",
                                 enum=ROUTING_STRATEGIES, default="prefix"),
                  "replicas": _i("Router pods.", 1, maximum=16, default=1),
              })


#: Who sets the replicas under spec.autoscaling: the router itself, an HPA, or KEDA.
AUTOSCALING_DRIVERS = ["router", "hpa", "keda"]
#: The metric an HPA reads (through a metrics adapter): the router's in-flight + queued requests of a LlamaServer.
HPA_METRIC = "kubellama_router_load"
HPA_MIN_REPLICAS_RULE = ("!has(self.enabled) || !self.enabled || !has(self.driver) || self.driver != 'hpa' || "
                         "!has(self.minReplicas) || self.minReplicas >= 1")
HPA_MIN_REPLICAS_MESSAGE = ("spec.autoscaling.minReplicas: 0 needs driver router or keda (an HPA cannot scale to zero "
                            "without the HPAScaleToZero feature gate)")
KEDA_ADDRESS_RULE = ("!has(self.enabled) || !self.enabled || !has(self.driver) || self.driver != 'keda' || "
                     "has(self.prometheusAddress)")
KEDA_ADDRESS_MESSAGE = "spec.autoscaling.driver keda needs spec.autoscaling.prometheusAddress (where KEDA queries)"


def _autoscaling_schema() -> Schema:
    return _o("Replicas follow the load the router sees (needs routing.enabled): ceil(moving average of "
              "in-flight + queued requests / targetRequests), within [minReplicas, maxReplicas]. With "
              "minReplicas 0 the router holds requests while the first replica starts. driver router: the "
              "router sets spec.replicas through the scale subresource; hpa: an autoscaling/v2 "
              "HorizontalPodAutoscaler on the metric " + HPA_METRIC + " (needs a metrics adapter); keda: a "
              "KEDA ScaledObject with a Prometheus trigger (needs KEDA's CRD).", {
                  "enabled": _b("Autoscale.", default=False),
                  "driver": _s("Who scales: router (the router itself), hpa (a HorizontalPodAutoscaler named "
                               "after the LlamaServer; minReplicas >= 1) or keda (a KEDA ScaledObject named after "
                               "the LlamaServer).", enum=AUTOSCALING_DRIVERS, default="router"),
                  "prometheusAddress": _s("driver keda: the Prometheus KEDA queries for the router's metrics, e.g. "
                                          "http://prometheus-operated.monitoring.svc:9090.",
                                          pattern=r"^https?://.+", maxLength=2048),
                  "minReplicas": _i("Fewest replicas; 0 scales to zero when idle (router or keda).", 0, maximum=1000,
                                    default=1),
                  "maxReplicas": _i("Most replicas.", 1, maximum=1000, default=3),
                  "targetRequests": _i("In-flight + queued requests per replica to aim for.", 1, maximum=100000,
                                       default=4),
                  "windowSeconds": _i("Seconds of the moving average (driver router).", 1, maximum=3600, default=60),
                  "scaleDownDelaySeconds": _i("Seconds the lower count must hold before scaling down (hpa: the "
                                              "scale-down stabilization window, at most 3600; keda: the cooldown).",
                                              0, maximum=86400, default=120),
                  "holdSeconds": _i("Seconds the router holds a request while no replica can take it "
                                    "(scale from zero: the model must load meanwhile), then 503.", 1,
                                    maximum=3600, default=300),
              }, rules=[("!has(self.enabled) || !self.enabled || !has(self.minReplicas) || !has(self.maxReplicas) || "
                         "self.minReplicas <= self.maxReplicas",
                         "spec.autoscaling.minReplicas must not exceed maxReplicas"),
                        (HPA_MIN_REPLICAS_RULE, HPA_MIN_REPLICAS_MESSAGE),
                        (KEDA_ADDRESS_RULE, KEDA_ADDRESS_MESSAGE)])


def _inferencepool_schema() -> Schema:
    return _o("A Gateway API Inference Extension InferencePool (inference.networking.k8s.io/v1) named after the "
              "LlamaServer, selecting its server pods on the server port, for clusters that route through an "
              "inference gateway. Written only when the cluster serves the InferencePool CRD.", {
                  "enabled": _b("Write the InferencePool when its CRD is installed.", default=True),
                  "endpointPickerRef": _o(
                      "The endpoint picker (EPP) Service the gateway asks which pod takes a request. Optional in "
                      "the v1 schema since v1.5.0 of the extension; most gateways still need one, and older CRDs "
                      "(< v1.5.0) refuse a pool without it.", {
                          "name": _s("Service name, in the LlamaServer's namespace.", minLength=1, maxLength=253),
                          "port": _i("The Service's port (not the target port).", 1, maximum=65535),
                          "failureMode": _s("What the gateway does when the picker does not answer.",
                                            enum=["FailOpen", "FailClose"], default="FailClose"),
                      }, required=["name", "port"]),
              })


def _claim_rules_note() -> str:
    return ("volume claim settings are immutable (a StatefulSet's volumeClaimTemplates cannot "
            "change); create a new LlamaServer or resize the PVCs directly")


def status_schema() -> Schema:
    condition = _o("A status condition.", {
        "type": _s(), "status": _s(enum=["True", "False", "Unknown"]), "reason": _s(),
        "message": _s(), "lastTransitionTime": _s(format="date-time"),
        "observedGeneration": {"type": "integer", "format": "int64"},
    }, required=["type", "status"])
    return _o("Observed state, written by the operator.", {
        "phase": _s("Pending, Downloading, Loading, Ready, Degraded or Failed.", enum=PHASES),
        "message": _s("Human-readable summary of the phase."),
        "conditions": {"type": "array", "items": condition, "x-kubernetes-list-type": "map",
                       "x-kubernetes-list-map-keys": ["type"]},
        "replicas": _i("Pods that exist.", 0),
        "readyReplicas": _i("Pods whose model is loaded.", 0),
        "ready": _s("readyReplicas/replicas, for kubectl get."),
        "selector": _s("Label selector of the pods (scale subresource)."),
        "endpoint": _s("Cluster-internal OpenAI base URL."),
        "observedGeneration": {"type": "integer", "format": "int64"},
        "model": _o("The resolved model.", {
            "name": _s("Served model id."),
            "file": _s("Model file name."),
            "path": _s("Path of the file inside the server container."),
            "source": _s("Where it comes from."),
            "sizeBytes": {"type": "integer", "format": "int64"},
            "sha256": _s("SHA-256 of the fetched file (from the fetcher)."),
            "mmproj": _s("File name of the multimodal projector (spec.model.mmproj), when there is one."),
            "loras": {"type": "array", "description": "The LoRA adapters (spec.model.loras), in order: id is the "
                                                      "adapter's id on the server.",
                      "items": _o("A LoRA adapter.", {
                          "id": _i("Adapter id (its position in spec.model.loras)."),
                          "name": _s("Its name (spec.model.loras[].name), when set."),
                          "file": _s("Adapter file name."),
                      })},
        }),
        **MODELS_STATUS,
    })


def _immutable_storage(schema: Schema) -> Schema:
    """Claim templates of a StatefulSet cannot change: make the schema say so up front."""
    props = schema["properties"]["storage"]["properties"]
    props["model"].setdefault("x-kubernetes-validations", []).append(
        {"rule": "self == oldSelf", "message": "spec.storage.model: " + _claim_rules_note()})
    # Cheap rules (CEL cost is estimated from maxLength/maxItems): restoreOnStart may still change.
    slots = props["slots"]
    slots.setdefault("x-kubernetes-validations", []).append(
        {"rule": "(has(self.enabled) && self.enabled) == (has(oldSelf.enabled) && oldSelf.enabled) && "
                 "has(self.size) == has(oldSelf.size) && has(self.storageClassName) == has(oldSelf.storageClassName)",
         "message": "spec.storage.slots.enabled/size/storageClassName: " + _claim_rules_note()})
    for key in ("size", "storageClassName"):
        slots["properties"][key].setdefault("x-kubernetes-validations", []).append(
            {"rule": "self == oldSelf", "message": f"spec.storage.slots.{key}: " + _claim_rules_note()})
    return schema


#: Objects defaulted to {} so that their fields' defaults apply when the user omits them.
_DEFAULT_EMPTY = ["server", "gpu", "storage", "storage.model", "storage.slots", "storage.retention", "rollout",
                  "service", "networkPolicy", "monitoring", "routing", "autoscaling", "inferencePool"]


def _with_empty_defaults(schema: Schema) -> Schema:
    for dotted in _DEFAULT_EMPTY:
        node = schema
        for part in dotted.split("."):
            node = node["properties"][part]
        node["default"] = {}
    return schema


def build_crd() -> dict[str, Any]:
    spec = _immutable_storage(_with_empty_defaults(spec_schema()))
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": CRD_NAME,
            "labels": {"app.kubernetes.io/name": "kubellama", "app.kubernetes.io/part-of": "kubellama",
                       "app.kubernetes.io/version": __version__},
        },
        "spec": {
            "group": GROUP,
            "scope": "Namespaced",
            "names": {"kind": KIND, "listKind": f"{KIND}List", "plural": PLURAL,
                      "singular": SINGULAR, "shortNames": list(SHORT_NAMES),
                      "categories": ["kubellama"]},
            "versions": [{
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {
                    "status": {},
                    "scale": {"specReplicasPath": ".spec.replicas",
                              "statusReplicasPath": ".status.replicas",
                              "labelSelectorPath": ".status.selector"},
                },
                "additionalPrinterColumns": [
                    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                    {"name": "Model", "type": "string", "jsonPath": ".status.model.name"},
                    {"name": "Ready", "type": "string", "jsonPath": ".status.ready"},
                    {"name": "Endpoint", "type": "string", "jsonPath": ".status.endpoint"},
                    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    {"name": "Message", "type": "string", "jsonPath": ".status.message",
                     "priority": 1},
                ],
                "schema": {"openAPIV3Schema": {
                    "type": "object",
                    "description": "A llama.cpp-compatible inference server for one GGUF model.",
                    "properties": {
                        "apiVersion": {"type": "string"},
                        "kind": {"type": "string"},
                        "metadata": {"type": "object"},
                        "spec": spec,
                        "status": status_schema(),
                    },
                    "required": ["spec"],
                }},
            }],
        },
    }


def render() -> str:
    header = ("# Generated by `python -m kubellama_operator.crd`; edit operator/kubellama_operator/crd.py.\n")
    return header + yaml.safe_dump(build_crd(), sort_keys=False, width=100)


def main() -> None:
    sys.stdout.write(render())


if __name__ == "__main__":
    main()
