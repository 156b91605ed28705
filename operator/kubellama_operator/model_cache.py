"""The model cache (`spec.model.cache`): where downloaded files live, under keys that say what they are.

Modes: `perReplica` (each replica downloads into its own claim, in its init containers: the default),
`shared` (one ReadWriteMany claim per namespace that the operator creates, `kubellama-model-cache`),
`claim` (a ReadWriteMany claim the user names) and `image` (an OCI image volume holding the same layout).
In the three shared modes a download Job fills the cache before any server pod exists, and the servers
mount it read-only.

Layout of a shared cache: `<root>/<key>/<file name>`. The key says what the file is:
`sha256-<hex>` when its sha256 is known (the same bytes share one folder whatever their URL), else
`src-<32 hex>`, a hash of its source (URL without credentials, or Hub repo + file + revision). Files keep
their own names inside the folder (llama.cpp finds the shards of a split model next to the first one).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
from dataclasses import dataclass
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlparse, urlunparse

from .spec import MODEL_DIR, Lora, Mmproj, Model, Spec

MODES = ("perReplica", "shared", "claim", "image")
#: The claim the operator creates in a namespace for `mode: shared` (shared by every LlamaServer there).
SHARED_CLAIM = "kubellama-model-cache"
DEFAULT_SHARED_SIZE = "100Gi"
#: Query parameters that carry credentials (a presigned URL's signature): left out of a source's key.
_SECRET_PARTS = ("token", "key", "sig", "secret", "pass", "auth", "credential", "session", "code", "jwt", "bearer")


def mode(spec: Spec) -> str:
    """The cache mode of a (normalized) spec; pvc models are never downloaded: perReplica."""
    if "pvc" in spec["model"]:
        return "perReplica"
    return ((spec["model"].get("cache") or {}).get("mode")) or "perReplica"


def is_shared(spec: Spec) -> bool:
    """Whether files come from a cache shared by the pods (filled by a Job, or an image)."""
    return mode(spec) != "perReplica"


def claim_name(spec: Spec) -> str | None:
    """The shared cache's claim (`shared`, `claim`), else None."""
    m = mode(spec)
    if m == "shared":
        return SHARED_CLAIM
    if m == "claim":
        return spec["model"]["cache"]["claimName"]
    return None


def _source_url(url: str) -> str:
    """`url` without user info or credential-like query parameters (a rotated token is the same file)."""
    p = urlparse(url)
    pairs = [(k, v) for k, v in parse_qsl(p.query, keep_blank_values=True)
             if not any(part in k.lower() for part in _SECRET_PARTS)]
    return urlunparse(p._replace(netloc=p.netloc.rpartition("@")[2], query=urlencode(pairs), fragment=""))


def source_identity(src: Spec) -> dict[str, str]:
    """What identifies a url or huggingFace source (its key when no sha256 is given)."""
    if "url" in src:
        return {"url": _source_url(src["url"])}
    hf = src["huggingFace"]
    return {"hf_repo": hf["repo"], "hf_file": hf["file"], "hf_revision": hf.get("revision") or "main"}


def file_key(src: Spec) -> str:
    """The cache key of a url/huggingFace source: `sha256-<hex>` with spec's sha256, else `src-<hash>`."""
    sha = (src.get("sha256") or "").lower()
    if sha:
        return f"sha256-{sha}"
    ident = json.dumps(source_identity(src), sort_keys=True, separators=(",", ":"))
    return "src-" + hashlib.sha256(ident.encode()).hexdigest()[:32]


@dataclass(frozen=True)
class CacheFile:
    """A file of the shared cache a LlamaServer needs."""

    key: str
    what: str                    # "model", "multimodal projector", "LoRA adapter 0 (sql)"
    container: str               # the download Job's init container that fetches it
    path: str                    # absolute path in the server (and Job) container
    fetch_args: tuple[str, ...]  # kubellama-fetch flags, --dest <root>/<key>
    hf: bool                     # a Hugging Face download (gets the token and the Hub mirror)


def _with_dest(args: tuple[str, ...], dest: str) -> tuple[str, ...]:
    out = list(args)
    i = out.index("--dest")
    out[i + 1] = dest
    return tuple(out)


def _sources(model_spec: Spec) -> list[tuple[str, Spec | None]]:
    """("model" | "mmproj" | "lora-<i>", its spec entry) of every downloaded file."""
    out: list[tuple[str, Spec | None]] = [("model", model_spec)]
    out.append(("mmproj", model_spec.get("mmproj")))
    out += [(f"lora-{i}", lora) for i, lora in enumerate(model_spec.get("loras") or [])]
    return out


def place(model: Model, spec: Spec, root: str = MODEL_DIR) -> Model:
    """`model` with every downloaded file under `<root>/<key>/` (the shared cache's layout).

    Only for the shared modes; files on a pvc model's claim (`path` sources) are left as they are.
    """
    m = spec["model"]

    def moved(obj: Any, src: Spec) -> Any:
        key = file_key(src)
        dest = f"{root}/{key}"
        return dataclasses.replace(obj, path=f"{dest}/{obj.file}", dest=dest,
                                   fetch_args=_with_dest(obj.fetch_args, dest))

    mmproj: Mmproj | None = model.mmproj
    if mmproj is not None and mmproj.fetch_args:
        mmproj = moved(mmproj, m["mmproj"])
    loras = tuple(moved(lora, m["loras"][lora.index]) if lora.fetch_args else lora for lora in model.loras)
    key = file_key(m)
    dest = f"{root}/{key}"
    return dataclasses.replace(model, path=f"{dest}/{model.file}", fetch_args=_with_dest(model.fetch_args, dest),
                               mmproj=mmproj, loras=loras)


def model_key(spec: Spec) -> str:
    """The cache key of the model file itself (pvc models: their claim and path)."""
    m = spec["model"]
    if "pvc" in m:
        return "pvc-" + hashlib.sha256(json.dumps(m["pvc"], sort_keys=True).encode()).hexdigest()[:32]
    return file_key(m)


def cache_files(spec: Spec, model: Model) -> list[CacheFile]:
    """The files a LlamaServer needs from the shared cache, in download order (model, projector, adapters).

    `model` must be `place`d already.
    """
    from .builders.statefulset import FETCH_MMPROJ, FETCH_MODEL, fetch_lora  # noqa: PLC0415 (no import cycle)

    m = spec["model"]
    out = [CacheFile(file_key(m), "model", FETCH_MODEL, model.path, model.fetch_args, "huggingFace" in m)]
    if model.mmproj is not None and model.mmproj.fetch_args:
        mm = m["mmproj"]
        out.append(CacheFile(file_key(mm), "multimodal projector", FETCH_MMPROJ, model.mmproj.path,
                             model.mmproj.fetch_args, "huggingFace" in mm))
    for lora in model.loras:
        if lora.fetch_args:
            src = m["loras"][lora.index]
            out.append(CacheFile(file_key(src), lora.label, fetch_lora(lora.index), lora.path, lora.fetch_args,
                                 "huggingFace" in src))
    return out


def keys_digest(files: list[CacheFile]) -> str:
    """A short digest of what a download Job fetches (its name changes with the files)."""
    ident = json.dumps([[f.key, posixpath.basename(f.path)] for f in files])
    return hashlib.sha256(ident.encode()).hexdigest()[:10]


def problems(spec: Spec) -> list[str]:
    """spec.model.cache's CEL rules, for where they did not run (see `spec.problems`)."""
    from .crd import CACHE_PVC_MESSAGE, CACHE_STORAGE_MESSAGE  # noqa: PLC0415

    cache = spec["model"].get("cache")
    if cache is None:
        return []
    if not isinstance(cache, dict):
        return ["spec.model.cache must be an object (mode: perReplica, shared, claim or image)"]
    out = []
    m = cache.get("mode") or "perReplica"
    if m not in MODES:
        out.append(f"spec.model.cache.mode {m!r} is not one of {', '.join(MODES)}")
    if m == "claim" and not cache.get("claimName"):
        out.append("spec.model.cache.mode claim needs spec.model.cache.claimName")
    if cache.get("claimName") and m != "claim":
        out.append("spec.model.cache.claimName is only used with mode claim")
    if (m == "image") != bool(cache.get("image")):
        out.append("spec.model.cache.mode image needs spec.model.cache.image, which no other mode uses")
    if (cache.get("size") or cache.get("storageClassName")) and m != "shared":
        out.append("spec.model.cache.size and storageClassName are only used with mode shared")
    if m != "perReplica" and "pvc" in spec["model"]:
        out.append(CACHE_PVC_MESSAGE)
    if m != "perReplica" and spec.get("storage", {}).get("model", {}).get("claimName"):
        out.append(CACHE_STORAGE_MESSAGE)
    return out


def resolve(spec: Spec) -> Model:
    """The spec's model with its files where the pods find them (`place`d for a shared cache)."""
    from .spec import resolve_model  # noqa: PLC0415

    model = resolve_model(spec)
    return place(model, spec) if is_shared(spec) else model


def layout(spec: Spec) -> list[str]:
    """`<key>/<file name>` of each downloaded file of a spec: where an image (mode image) must hold them."""
    from .spec import resolve_model  # noqa: PLC0415

    placed = place(resolve_model(spec), spec)
    return [f.path.removeprefix(MODEL_DIR + "/") for f in cache_files(spec, placed)]


def main(argv: list[str] | None = None) -> int:
    """`python -m kubellama_operator.model_cache FILE.yaml`: the cache layout of a LlamaServer's files, one
    `<key>/<file>` per line (build a model image with that layout, or look files up in a shared claim)."""
    import sys  # noqa: PLC0415

    import yaml  # noqa: PLC0415

    from .spec import normalize  # noqa: PLC0415

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m kubellama_operator.model_cache LLAMASERVER.yaml", file=sys.stderr)
        return 2
    with open(args[0], encoding="utf-8") as f:
        for doc in yaml.safe_load_all(f):
            if isinstance(doc, dict) and doc.get("kind") == "LlamaServer":
                spec = normalize(doc.get("spec"))
                if "pvc" not in spec["model"]:
                    print("\n".join(layout(spec)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
