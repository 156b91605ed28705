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

from .api import LlamaServerSpec
from .api.model import CACHE_MODES, FileSource
from .containers import FETCH_MMPROJ, FETCH_MODEL, fetch_lora
from .spec import MODEL_DIR, Mmproj, Model, parse, resolve_model

MODES = tuple(CACHE_MODES)
#: The claim the operator creates in a namespace for `mode: shared` (shared by every LlamaServer there).
SHARED_CLAIM = "kubellama-model-cache"
DEFAULT_SHARED_SIZE = "100Gi"
DEFAULT_CLEANUP_SECONDS = 3600
#: Query parameters that carry credentials (a presigned URL's signature): left out of a source's key.
_SECRET_PARTS = ("token", "key", "sig", "secret", "pass", "auth", "credential", "session", "code", "jwt", "bearer")


def mode(spec: LlamaServerSpec) -> str:
    """The cache mode of a spec; pvc models are never downloaded: perReplica."""
    return spec.model.cache_mode


def is_shared(spec: LlamaServerSpec) -> bool:
    """Whether files come from a cache shared by the pods (filled by a Job, or an image)."""
    return spec.model.shared_cache


def claim_name(spec: LlamaServerSpec) -> str | None:
    """The shared cache's claim (`shared`, `claim`), else None."""
    m = mode(spec)
    if m == "shared":
        return SHARED_CLAIM
    if m == "claim":
        assert spec.model.cache is not None
        return spec.model.cache.claim_name
    return None


def cleanup_after(spec: LlamaServerSpec) -> int:
    """spec.model.cache.cleanupAfterSeconds (its default without a cache)."""
    cache = spec.model.cache
    return cache.cleanup_after_seconds if cache is not None else DEFAULT_CLEANUP_SECONDS


def _source_url(url: str) -> str:
    """`url` without user info or credential-like query parameters (a rotated token is the same file)."""
    p = urlparse(url)
    pairs = [(k, v) for k, v in parse_qsl(p.query, keep_blank_values=True)
             if not any(part in k.lower() for part in _SECRET_PARTS)]
    return urlunparse(p._replace(netloc=p.netloc.rpartition("@")[2], query=urlencode(pairs), fragment=""))


def source_identity(src: FileSource) -> dict[str, str]:
    """What identifies a url or huggingFace source (its key when no sha256 is given)."""
    if src.url is not None:
        return {"url": _source_url(src.url)}
    hf = src.hugging_face
    assert hf is not None
    return {"hf_repo": hf.repo, "hf_file": hf.file, "hf_revision": hf.revision or "main"}


def file_key(src: FileSource) -> str:
    """The cache key of a url/huggingFace source: `sha256-<hex>` with spec's sha256, else `src-<hash>`."""
    sha = (src.sha256 or "").lower()
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


def place(model: Model, spec: LlamaServerSpec, root: str = MODEL_DIR) -> Model:
    """`model` with every downloaded file under `<root>/<key>/` (the shared cache's layout).

    Only for the shared modes; files on a pvc model's claim (`path` sources) are left as they are.
    """
    m = spec.model

    def moved(obj: Any, src: FileSource) -> Any:
        key = file_key(src)
        dest = f"{root}/{key}"
        return dataclasses.replace(obj, path=f"{dest}/{obj.file}", dest=dest,
                                   fetch_args=_with_dest(obj.fetch_args, dest))

    mmproj: Mmproj | None = model.mmproj
    if mmproj is not None and mmproj.fetch_args:
        assert m.mmproj is not None
        mmproj = moved(mmproj, m.mmproj)
    loras = tuple(moved(lora, (m.loras or [])[lora.index]) if lora.fetch_args else lora for lora in model.loras)
    key = file_key(m)
    dest = f"{root}/{key}"
    return dataclasses.replace(model, path=f"{dest}/{model.file}", fetch_args=_with_dest(model.fetch_args, dest),
                               mmproj=mmproj, loras=loras)


def model_key(spec: LlamaServerSpec) -> str:
    """The cache key of the model file itself (pvc models: their claim and path)."""
    m = spec.model
    if m.pvc is not None:
        return "pvc-" + hashlib.sha256(json.dumps(m.pvc.to_dict(), sort_keys=True).encode()).hexdigest()[:32]
    return file_key(m)


def cache_files(spec: LlamaServerSpec, model: Model) -> list[CacheFile]:
    """The files a LlamaServer needs from the shared cache, in download order (model, projector, adapters).

    `model` must be `place`d already.
    """
    m = spec.model
    out = [CacheFile(file_key(m), "model", FETCH_MODEL, model.path, model.fetch_args, m.hugging_face is not None)]
    if model.mmproj is not None and model.mmproj.fetch_args:
        mm = m.mmproj
        assert mm is not None
        out.append(CacheFile(file_key(mm), "multimodal projector", FETCH_MMPROJ, model.mmproj.path,
                             model.mmproj.fetch_args, mm.hugging_face is not None))
    for lora in model.loras:
        if lora.fetch_args:
            src = (m.loras or [])[lora.index]
            out.append(CacheFile(file_key(src), lora.label, fetch_lora(lora.index), lora.path, lora.fetch_args,
                                 src.hugging_face is not None))
    return out


def keys_digest(files: list[CacheFile]) -> str:
    """A short digest of what a download Job fetches (its name changes with the files)."""
    ident = json.dumps([[f.key, posixpath.basename(f.path)] for f in files])
    return hashlib.sha256(ident.encode()).hexdigest()[:10]


def resolve(spec: LlamaServerSpec) -> Model:
    """The spec's model with its files where the pods find them (`place`d for a shared cache)."""
    model = resolve_model(spec)
    return place(model, spec) if is_shared(spec) else model


def layout(spec: LlamaServerSpec) -> list[str]:
    """`<key>/<file name>` of each downloaded file of a spec: where an image (mode image) must hold them."""
    placed = place(resolve_model(spec), spec)
    return [f.path.removeprefix(MODEL_DIR + "/") for f in cache_files(spec, placed)]


def main(argv: list[str] | None = None) -> int:
    """`python -m kubellama_operator.model_cache FILE.yaml`: the cache layout of a LlamaServer's files, one
    `<key>/<file>` per line (build a model image with that layout, or look files up in a shared claim)."""
    import sys  # noqa: PLC0415

    import yaml  # noqa: PLC0415

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m kubellama_operator.model_cache LLAMASERVER.yaml", file=sys.stderr)
        return 2
    with open(args[0], encoding="utf-8") as f:
        for doc in yaml.safe_load_all(f):
            if isinstance(doc, dict) and doc.get("kind") == "LlamaServer":
                spec = parse(doc.get("spec"))
                if spec.model.pvc is None:
                    print("\n".join(layout(spec)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
