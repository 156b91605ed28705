"""A LlamaServer's spec: defaulting (from the CRD schema), the typed spec with its checks, and where the
model's files come from and go.

The API server applies the schema's defaults and CEL rules before the operator sees an object;
`normalize` and `load` repeat them (the rules' operator side, declared next to each CEL rule in `api`)
so that the operator behaves the same where they did not run (emulators, old API servers, objects
stored before a CRD upgrade).
"""

from __future__ import annotations

import copy
import posixpath
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlparse

from pydantic import ValidationError

from .api import LlamaServerSpec, check
from .api.model import ClaimFileSource, FileSource, ModelSource
from .crd import spec_schema

#: The raw spec, as the API server stores it.
Spec = dict[str, Any]

#: Where volumes are mounted in the server pod.
MODEL_DIR = "/models"
#: Where a downloaded projector goes: a folder of the model volume (downloaded models), or an
#: emptyDir of its own (pvc models, whose claim is mounted read-only).
MMPROJ_SUBDIR = f"{MODEL_DIR}/mmproj"
MMPROJ_DIR = "/mmproj"
#: Where downloaded LoRA adapters go, adapter i in the folder <i>/ (files of the same name never meet):
#: under the model volume (downloaded models), or an emptyDir of their own (pvc models).
LORA_SUBDIR = f"{MODEL_DIR}/lora"
LORA_DIR = "/lora"
SLOTS_DIR = "/slots"
CONFIG_DIR = "/etc/kubellama"
#: llama.cpp's -spf format: JSON {"prompt": ...}.
SYSTEM_PROMPT_FILE = "system-prompt.json"
API_KEY_DIR = "/var/run/secrets/kubellama/api-key"
API_KEY_FILE = "api-key"
SERVER_PORT = 8080


@lru_cache(maxsize=1)
def _spec_schema() -> dict[str, Any]:
    return spec_schema()


def apply_defaults(schema: dict[str, Any], value: Any) -> Any:
    """Fill schema defaults into `value` (a copy), the way the API server's structural defaulting does."""
    if isinstance(value, dict) and "properties" in schema:
        out = dict(value)
        for key, sub in schema["properties"].items():
            if key not in out and "default" in sub:
                out[key] = copy.deepcopy(sub["default"])
            if key in out:
                out[key] = apply_defaults(sub, out[key])
        return out
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        return [apply_defaults(schema["items"], v) for v in value]
    return value


def normalize(spec: Spec | None) -> Spec:
    """The spec with every schema default applied (the input is not modified)."""
    return apply_defaults(_spec_schema(), copy.deepcopy(dict(spec or {})))


#: What to say about a missing required field, beyond "is required".
_REQUIRED_HINTS = {"spec.model": ": set one of url, huggingFace or pvc"}


def _where(loc: tuple[Any, ...]) -> str:
    return "spec" + "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc)


def load(raw: Spec | None) -> tuple[LlamaServerSpec | None, list[str]]:
    """(the typed spec, what is wrong with it as messages that say how to fix it): the spec is None when it
    does not even have the schema's shape; the messages are [] when it is fine (the CRD's CEL rules and
    required fields, checked by the operator: the tests check both agree)."""
    try:
        spec = LlamaServerSpec.model_validate(normalize(raw))
    except ValidationError as exc:
        out = []
        for err in exc.errors():
            where = _where(err["loc"])
            if err["type"] == "missing":
                out.append(f"{where} is required{_REQUIRED_HINTS.get(where, '')}")
            elif err["type"] in ("model_type", "model_attributes_type", "dict_type"):
                out.append(f"{where} must be an object")
            else:
                out.append(f"{where}: {err['msg']}")
        return None, out
    return spec, check(spec, "spec")


def problems(raw: Spec | None) -> list[str]:
    """What is wrong with a spec (see `load`); [] when fine."""
    return load(raw)[1]


def parse(raw: Spec | None) -> LlamaServerSpec:
    """The typed spec, defaults applied; ValueError when it does not have the schema's shape."""
    spec, found = load(raw)
    if spec is None:
        raise ValueError("; ".join(found))
    return spec


@dataclass(frozen=True)
class FetchedFile:
    """A file the server loads (the model, its projector, an adapter): where it comes from, where it goes."""

    source: str          # "url" | "huggingFace" | "pvc" (the model on its claim) | "path" (a file on that claim)
    file: str            # file name (basename)
    path: str            # absolute path in the server container
    description: str     # human-readable origin, for status
    fetch_args: tuple[str, ...]  # kubellama-fetch flags; () for a file on the model's claim
    #: Its folder: MODEL_DIR (the model; a file on the pvc model's claim), MMPROJ_SUBDIR or LORA_SUBDIR/<i>
    #: (downloaded into the model volume), MMPROJ_DIR or LORA_DIR/<i> (an emptyDir of their own, for pvc models).
    dest: str


@dataclass(frozen=True)
class Mmproj(FetchedFile):
    """The multimodal projector."""

    offload: bool = True  # on the GPU with the model; False: --no-mmproj-offload


@dataclass(frozen=True)
class Lora(FetchedFile):
    """A LoRA adapter (`--lora`, id = index)."""

    index: int = 0       # its position in spec.model.loras: the adapter's id on the server
    name: str = ""       # spec.model.loras[].name ("" when unset): a label for people
    scale: float = 1.0   # spec.model.loras[].scale: its default scale (--lora-scaled when any is not 1.0)

    @property
    def label(self) -> str:
        """"LoRA adapter 1 (sql)", or "LoRA adapter 1" without a name: how messages name it."""
        return f"LoRA adapter {self.index}" + (f" ({self.name})" if self.name else "")


@dataclass(frozen=True)
class Model(FetchedFile):
    """The model file, with the files that go with it."""

    name: str = ""       # model id served by /v1/models
    mmproj: Mmproj | None = None  # the multimodal projector, when spec.model.mmproj is set
    loras: tuple[Lora, ...] = ()  # the LoRA adapters of spec.model.loras, in order


def _fetched(src: FileSource, dest: str) -> dict[str, Any]:
    """The FetchedFile fields of a url or huggingFace source downloaded into `dest`."""
    sha = ("--sha256", src.sha256.lower()) if src.sha256 else ()
    if src.url is not None:
        file = posixpath.basename(urlparse(src.url).path) or "model.gguf"
        return dict(source="url", file=file, path=f"{dest}/{file}", description=src.url,
                    fetch_args=("--url", src.url, *sha, "--dest", dest), dest=dest)
    hf = src.hugging_face
    assert hf is not None
    rev = ("--hf-revision", hf.revision) if hf.revision else ()
    file = posixpath.basename(hf.file)
    return dict(source="huggingFace", file=file, path=f"{dest}/{file}",
                description=f"hf://{hf.repo}/{hf.file}" + (f"@{hf.revision}" if hf.revision else ""),
                fetch_args=("--hf-repo", hf.repo, "--hf-file", hf.file, *rev, *sha, "--dest", dest), dest=dest)


def _on_claim(model: ModelSource, path: str, source: str) -> dict[str, Any]:
    assert model.pvc is not None
    rel = posixpath.normpath(path).lstrip("/")
    return dict(source=source, file=posixpath.basename(rel), path=f"{MODEL_DIR}/{rel}",
                description=f"pvc://{model.pvc.claim_name}/{rel}", fetch_args=(), dest=MODEL_DIR)


def _with_model(src: ClaimFileSource, model: ModelSource, subdir: str, own_dir: str) -> dict[str, Any]:
    """A file that goes with the model: `path` is on the pvc model's claim; a download goes into `subdir` (a
    folder of the model volume), or into `own_dir` (an emptyDir) for a pvc model, whose claim is read-only."""
    if src.path is not None:
        return _on_claim(model, src.path, "path")
    return _fetched(src, own_dir if model.pvc is not None else subdir)


def resolve_mmproj(model: ModelSource) -> Mmproj | None:
    """Resolve `spec.model.mmproj` (None when unset) into paths and fetch flags."""
    mm = model.mmproj
    if mm is None:
        return None
    return Mmproj(**_with_model(mm, model, MMPROJ_SUBDIR, MMPROJ_DIR), offload=mm.offload is not False)


def resolve_loras(model: ModelSource) -> tuple[Lora, ...]:
    """Resolve `spec.model.loras` into paths and fetch flags (adapter i is downloaded into a folder `<i>/`)."""
    return tuple(Lora(**_with_model(lora, model, f"{LORA_SUBDIR}/{i}", f"{LORA_DIR}/{i}"), index=i,
                      name=lora.name or "", scale=1.0 if lora.scale is None else float(lora.scale))
                 for i, lora in enumerate(model.loras or []))


def resolve_model(spec: LlamaServerSpec) -> Model:
    """Resolve `spec.model` (which must have exactly one source) into paths and fetch flags."""
    model = spec.model
    found = _on_claim(model, model.pvc.path, "pvc") if model.pvc is not None else _fetched(model, MODEL_DIR)
    return Model(**found, name=model.alias or found["file"], mmproj=resolve_mmproj(model),
                 loras=resolve_loras(model))


def endpoint(name: str, namespace: str, spec: LlamaServerSpec) -> str:
    """The cluster-internal OpenAI base URL of the Service (the router's with `spec.routing.enabled`)."""
    host = f"{name}-router" if spec.routing.enabled else name
    return f"http://{host}.{namespace}.svc:{spec.service.port}/v1"
