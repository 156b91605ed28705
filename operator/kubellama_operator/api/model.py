"""spec.model: the GGUF model, its multimodal projector and its LoRA adapters (one fetched-file type for all)."""

from __future__ import annotations

from typing import Literal, get_args

from .schema import Quantity, Rule, SpecModel, field, one_source

HF_REPO = r"^[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*$"
SHA256 = r"^[A-Fa-f0-9]{64}$"
RELATIVE = r"^[^/].*$"
#: Most LoRA adapters in spec.model.loras (one fetch init container each).
MAX_LORAS = 16
#: Longest path of a file on the model's claim (bounds the cost of the CEL rule comparing adapter paths).
MAX_PATH = 1024
#: Where downloaded files are kept (spec.model.cache.mode): per replica, or in a cache the pods share.
CacheMode = Literal["perReplica", "shared", "claim", "image"]
CACHE_MODES = list(get_args(CacheMode))
#: Longest spec.model.cache.cleanupAfterSeconds: 30 days.
MAX_CLEANUP_SECONDS = 30 * 86400


class HuggingFaceFile(SpecModel):
    """A file in a Hugging Face repository (downloaded with spec.model.tokenSecretRef, when set)."""

    repo: str = field("Repository id, e.g. ggml-org/gemma-3-270m-it-GGUF.", pattern=HF_REPO)
    file: str = field("Path of the .gguf file inside the repository.", minLength=1)
    revision: str | None = field("Branch, tag or commit (default: main).", None, minLength=1)


class FileSource(SpecModel):
    """A GGUF file that kubellama-fetch downloads (url or huggingFace), checked against sha256 when set."""

    url: str | None = field("HTTP(S) URL of the .gguf file. The file keeps the URL path's basename.", None,
                            pattern=r"^https?://.+", maxLength=2048)
    hugging_face: HuggingFaceFile | None = field(default=None)
    sha256: str | None = field("Expected SHA-256 of the file; the download fails on a mismatch.", None,
                               pattern=SHA256)


class ClaimFileSource(FileSource):
    """A file that goes with the model: downloaded, or a file on the pvc model's claim (path)."""

    path: str | None = field("Path of the .gguf file inside spec.model.pvc's claim (pvc models only; no download).",
                             None, minLength=1, maxLength=MAX_PATH, pattern=RELATIVE)


class ProjectorSource(ClaimFileSource):
    """The multimodal projector (mmproj GGUF) that goes with the model, so that prompts may contain
    images (kubellama-server --mmproj): exactly one of url, huggingFace or path. url and huggingFace
    are downloaded by the fetch-mmproj init container (after fetch-model): for a url or huggingFace
    model into the model volume (its mmproj/ folder, kept across restarts like the model); for a pvc
    model, whose claim is mounted read-only, into an emptyDir, downloaded again whenever a pod
    starts (put the file on the claim and use path to avoid that). path is a file on the pvc
    model's claim (no download). Not with self-extend (--grp-attn-n > 1 in server.extraArgs)."""

    offload: bool = field("Run the projector on the GPU with the model; false keeps it on the CPU "
                          "(--no-mmproj-offload).", True)

    rules = (one_source("spec.model.mmproj needs exactly one source: url, huggingFace or path",
                        "url", "hugging_face", "path"),)


class LoraSource(ClaimFileSource):
    """A LoRA adapter (GGUF) for the model, loaded at start-up with scale 1.0 (kubellama-server --lora; with
    scale set: --lora-scaled):
    exactly one of url, huggingFace or path. url and huggingFace are downloaded by an init container
    of its own, fetch-lora-<i> (after fetch-model and fetch-mmproj), into the folder lora/<i>/ of the
    model volume, or, for a pvc model (mounted read-only), of an emptyDir downloaded again whenever a pod
    starts. path is a file on the pvc model's claim (no download)."""

    name: str | None = field("A label for people, shown in the status and in download messages. The server knows "
                             "the adapters by their position in spec.model.loras: id 0, 1, ... in GET /lora-adapters, "
                             "POST /lora-adapters and a request's \"lora\": [{\"id\": N, \"scale\": S}].", None,
                             minLength=1, maxLength=63)
    scale: float | None = field("The adapter's default scale on every replica (kubellama-server --lora-scaled; 1.0 "
                                "when unset; 0 starts it switched off). A request's \"lora\" and POST "
                                "/lora-adapters still change it.", None, minimum=-16, maximum=16)

    rules = (one_source("each spec.model.loras entry needs exactly one source: url, huggingFace or path",
                        "url", "hugging_face", "path"),)


class CacheImage(SpecModel):
    """The image volume of mode image (Kubernetes ImageVolume)."""

    reference: str = field("Image reference, e.g. registry.example/models/qwen:1.", minLength=1, maxLength=1024)
    pull_policy: Literal["Always", "IfNotPresent", "Never"] | None = field("Pull policy of the image volume.", None)


class ModelCache(SpecModel):
    """Where downloaded files (model, projector, LoRA adapters) are kept. perReplica (default): each replica
    downloads into its own claim (spec.storage.model) in init containers. shared: one ReadWriteMany claim
    per namespace that the operator creates (kubellama-model-cache, shared by every LlamaServer there);
    claim: a ReadWriteMany claim you name. In both a download Job (CPU only) fills the cache before any
    server pod is created, files are stored under a key (sha256-<hex> with a sha256, else a hash of the
    source and revision), the servers mount the claim read-only, and files no LlamaServer uses are removed
    after cleanupAfterSeconds. image: an OCI image volume holding the same layout (no download)."""

    mode: CacheMode = field("perReplica, shared, claim or image.", "perReplica")
    claim_name: str | None = field("The ReadWriteMany claim of mode claim, in the LlamaServer's namespace.", None,
                                   minLength=1, maxLength=253)
    size: Quantity | None = field("Size of the claim the operator creates (mode shared; default 100Gi).", None)
    storage_class_name: str | None = field("StorageClass of the claim the operator creates (mode shared); it must "
                                           "provide ReadWriteMany volumes.", None, maxLength=253)
    image: CacheImage | None = field(default=None)
    cleanup_after_seconds: int = field("Files of the shared cache no LlamaServer of the namespace references are "
                                       "removed this long after they stopped being used.", 3600, minimum=0,
                                       maximum=MAX_CLEANUP_SECONDS)

    rules = (
        Rule("spec.model.cache.mode claim needs spec.model.cache.claimName",
             "!has(self.mode) || self.mode != 'claim' || has(self.claimName)",
             lambda c: c.mode != "claim" or c.claim_name is not None),
        Rule("spec.model.cache.claimName is only used with mode claim",
             "!has(self.claimName) || (has(self.mode) && self.mode == 'claim')",
             lambda c: c.claim_name is None or c.mode == "claim"),
        Rule("spec.model.cache.mode image needs spec.model.cache.image, which no other mode uses",
             "(has(self.mode) && self.mode == 'image') == has(self.image)",
             lambda c: (c.mode == "image") == (c.image is not None)),
        Rule("spec.model.cache.size and storageClassName are only used with mode shared",
             "(!has(self.size) && !has(self.storageClassName)) || (has(self.mode) && self.mode == 'shared')",
             lambda c: (c.size is None and c.storage_class_name is None) or c.mode == "shared"),
    )


class PvcFile(SpecModel):
    """A model file already on an existing PersistentVolumeClaim (no download)."""

    claim_name: str = field("Name of the claim, in the LlamaServer's namespace.", minLength=1)
    path: str = field("Path of the .gguf file inside the claim.", minLength=1, pattern=RELATIVE)


class SecretKeyRef(SpecModel):
    name: str = field("Secret name, in the LlamaServer's namespace.", minLength=1)


class TokenSecretRef(SecretKeyRef):
    key: str = field("Key inside the Secret.", "token", minLength=1)


CACHE_PVC_MESSAGE = ("spec.model.cache is for downloaded models; a pvc model is read from its own claim "
                     "(leave cache.mode perReplica)")


def _lora_paths(model: ModelSource) -> list[str]:
    return [lora.path for lora in model.loras or [] if lora.path is not None]


def _twice(model: ModelSource) -> list[str]:
    paths = _lora_paths(model)
    return sorted({p for p in paths if paths.count(p) > 1})


class ModelSource(FileSource):
    """Where the GGUF model comes from: exactly one of url, huggingFace or pvc."""

    pvc: PvcFile | None = field(default=None)
    alias: str | None = field("Model id served by /v1/models (default: the file name).", None, minLength=1)
    token_secret_ref: TokenSecretRef | None = field(
        "Secret with a Hugging Face access token, for gated repositories (sets HF_TOKEN); used for the model's, "
        "the projector's and the LoRA adapters' huggingFace downloads.", None)
    mmproj: ProjectorSource | None = field(default=None)
    cache: ModelCache | None = field(default=None)
    loras: list[LoraSource] | None = field(
        "LoRA adapters for the model (kubellama-server --lora, in this order: the first is adapter id 0). One "
        "server then serves several fine-tunes of its model: a request picks adapters and scales with \"lora\": "
        "[{\"id\": N, \"scale\": S}], POST /lora-adapters changes the default scales.", None, maxItems=MAX_LORAS)

    @property
    def cache_mode(self) -> CacheMode:
        """spec.model.cache.mode (perReplica when unset; a pvc model is never downloaded: perReplica)."""
        return "perReplica" if self.pvc is not None or self.cache is None else self.cache.mode

    @property
    def shared_cache(self) -> bool:
        """Whether the pods share the files (a cache filled by a download Job, or an image)."""
        return self.cache_mode != "perReplica"

    def huggingface_sources(self) -> bool:
        """Whether anything is downloaded from Hugging Face (the model, its projector or an adapter)."""
        return (self.hugging_face is not None or (self.mmproj is not None and self.mmproj.hugging_face is not None)
                or any(lora.hugging_face is not None for lora in self.loras or []))

    rules = (
        one_source("spec.model needs exactly one source: url, huggingFace or pvc", "url", "hugging_face", "pvc"),
        Rule("spec.model.tokenSecretRef is only used with a huggingFace source (spec.model.huggingFace, "
             "spec.model.mmproj.huggingFace or spec.model.loras[].huggingFace)",
             "!has(self.tokenSecretRef) || has(self.huggingFace) || (has(self.mmproj) && has(self.mmproj.huggingFace))"
             " || (has(self.loras) && self.loras.exists(l, has(l.huggingFace)))",
             lambda m: m.token_secret_ref is None or m.huggingface_sources()),
        Rule("spec.model.mmproj.path is a file on the model's claim and needs a pvc model source; "
             "use mmproj.url or mmproj.huggingFace otherwise",
             "!has(self.mmproj) || !has(self.mmproj.path) || has(self.pvc)",
             lambda m: m.mmproj is None or m.mmproj.path is None or m.pvc is not None),
        Rule("spec.model.loras[].path is a file on the model's claim and needs a pvc model source; "
             "use url or huggingFace for the adapter otherwise",
             "!has(self.loras) || has(self.pvc) || self.loras.all(l, !has(l.path))",
             lambda m: m.pvc is not None or not _lora_paths(m),
             lambda m, where: [f"{where}.loras[{i}].path is a file on the model's claim and needs a pvc model source; "
                               "use url or huggingFace for the adapter otherwise"
                               for i, lora in enumerate(m.loras or []) if lora.path is not None]),
        # Conditionals, not ||/&&: cel-python (the tests' evaluator) does not short-circuit errors. As this rule,
        # the operator compares strings (kubectl apply cannot tell that a/b and ./a/b are one file).
        Rule("two spec.model.loras entries name the same path: list each adapter once",
             "!has(self.loras) || self.loras.all(a, has(a.path) ? "
             "self.loras.exists_one(b, has(b.path) ? b.path == a.path : false) : true)",
             lambda m: not _twice(m),
             lambda m, where: f"two spec.model.loras entries name the same path ({', '.join(_twice(m))}): "
                              "list each adapter once"),
        Rule(CACHE_PVC_MESSAGE,
             "!has(self.cache) || !has(self.cache.mode) || self.cache.mode == 'perReplica' || !has(self.pvc)",
             lambda m: m.cache is None or m.cache.mode == "perReplica" or m.pvc is None),
    )
