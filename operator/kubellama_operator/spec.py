"""A LlamaServer's spec: defaulting (from the CRD schema), checks, and model resolution.

The API server applies the schema's defaults and CEL rules before the operator sees an object;
`normalize` and `problems` repeat them so that the operator behaves the same where they did not
run (emulators, old API servers, objects stored before a CRD upgrade).
"""

from __future__ import annotations

import copy
import ipaddress
import posixpath
import re
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import urlparse

from . import extraargs
from .crd import (EXTERNAL_SERVICE_MESSAGE, EXTERNAL_SERVICE_TYPES, HPA_MIN_REPLICAS_MESSAGE, KEDA_ADDRESS_MESSAGE,
                  MAX_LORAS, SELF_EXTEND_FLAG, SELF_EXTEND_ON, build_crd)

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
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]


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


def problems(spec: Spec) -> list[str]:
    """What is wrong with a (normalized) spec, as messages that say how to fix it; [] when fine.

    Mirrors the CRD's CEL rules and required fields (the tests check both agree).
    """
    out: list[str] = []
    model = spec.get("model")
    if not isinstance(model, dict):
        return ["spec.model is required: set one of url, huggingFace or pvc"]
    sources = [k for k in ("url", "huggingFace", "pvc") if k in model]
    if len(sources) != 1:
        out.append("spec.model needs exactly one source: url, huggingFace or pvc"
                   + (f" (found {', '.join(sources)})" if sources else ""))
    if "huggingFace" in model and not (model["huggingFace"] or {}).get("file"):
        out.append("spec.model.huggingFace needs repo and file")
    if "pvc" in model and not (model["pvc"] or {}).get("claimName"):
        out.append("spec.model.pvc needs claimName (and path)")
    mmproj = model.get("mmproj")
    loras = model.get("loras")
    hf_loras = isinstance(loras, list) and any(isinstance(a, dict) and "huggingFace" in a for a in loras)
    if ("tokenSecretRef" in model and "huggingFace" not in model and "huggingFace" not in (mmproj or {})
            and not hf_loras):
        out.append("spec.model.tokenSecretRef is only used with a huggingFace source (spec.model.huggingFace, "
                   "spec.model.mmproj.huggingFace or spec.model.loras[].huggingFace)")
    if mmproj is not None:
        out += _mmproj_problems(model, mmproj, spec.get("server", {}).get("extraArgs") or [])
    if loras is not None:
        out += _lora_problems(model, loras)
    if int(spec.get("replicas", 1)) < 0:
        out.append("spec.replicas must be >= 0")
    gpu = spec.get("gpu", {})
    count = int(gpu.get("count", 0))
    if count < 0:
        out.append("spec.gpu.count must be >= 0")
    if count <= 0 and any(k in gpu for k in ("product", "tensorSplit", "mainGpu")):
        out.append("spec.gpu.product, tensorSplit and mainGpu need spec.gpu.count > 0")
    if "tensorSplit" in gpu and len(gpu["tensorSplit"]) > count:
        out.append("spec.gpu.tensorSplit has more entries than spec.gpu.count")
    slots = spec.get("storage", {}).get("slots", {})
    if slots.get("restoreOnStart") and not slots.get("enabled"):
        out.append("spec.storage.slots.restoreOnStart needs spec.storage.slots.enabled: true")
    if "pvc" in model and spec.get("storage", {}).get("model", {}).get("claimName"):
        out.append("spec.storage.model.claimName is unused with a pvc model source; remove one of them")
    service = spec.get("service", {})
    if (service.get("type") in EXTERNAL_SERVICE_TYPES and not spec.get("apiKeySecretRef")
            and not service.get("allowUnauthenticated")):
        out.append(EXTERNAL_SERVICE_MESSAGE)
    out += _network_policy_problems(spec.get("networkPolicy") or {})
    auto = spec.get("autoscaling") or {}
    if auto.get("enabled"):
        if not (spec.get("routing") or {}).get("enabled"):
            out.append("spec.autoscaling needs spec.routing.enabled: true (the router measures the load and holds "
                       "requests)")
        if int(auto.get("minReplicas", 1)) > int(auto.get("maxReplicas", 3)):
            out.append("spec.autoscaling.minReplicas must not exceed maxReplicas")
        driver = auto.get("driver", "router")
        if driver == "hpa" and int(auto.get("minReplicas", 1)) < 1:
            out.append(HPA_MIN_REPLICAS_MESSAGE)
        if driver == "keda" and not auto.get("prometheusAddress"):
            out.append(KEDA_ADDRESS_MESSAGE)
    out += extraargs.problems(list(spec.get("server", {}).get("extraArgs") or []))
    from .model_cache import problems as cache_problems  # noqa: PLC0415 (model_cache imports this module)
    out += cache_problems(spec)
    return out


def _network_policy_problems(policy: Spec) -> list[str]:
    """What the API server would refuse in the NetworkPolicy built from spec.networkPolicy.from (CEL cannot
    check CIDRs on every API server version): said up front instead of failing the apply."""
    out = []
    for i, peer in enumerate(policy.get("from") or []):
        where = f"spec.networkPolicy.from[{i}]"
        if not isinstance(peer, dict) or not peer:
            out.append(f"{where} needs podSelector, namespaceSelector or ipBlock")
            continue
        if "ipBlock" in peer and len(peer) > 1:
            out.append(f"{where}: ipBlock cannot be combined with podSelector or namespaceSelector")
        block = peer.get("ipBlock")
        cidrs = [block.get("cidr", ""), *(block.get("except") or [])] if isinstance(block, dict) else []
        for cidr in cidrs:
            try:
                ipaddress.ip_network(cidr, strict=False)
            except ValueError:
                out.append(f"{where}.ipBlock: {cidr!r} is not a CIDR (e.g. 10.0.0.0/8)")
        for key in ("podSelector", "namespaceSelector"):
            for expr in (peer.get(key) or {}).get("matchExpressions") or []:
                has_values = bool(expr.get("values"))
                if has_values != (expr.get("operator") in ("In", "NotIn")):
                    out.append(f"{where}.{key}: operator {expr.get('operator')} "
                               + ("needs values" if not has_values else "takes no values"))
    return out


def _mmproj_problems(model: Spec, mmproj: Any, extra_args: list[str]) -> list[str]:
    if not isinstance(mmproj, dict):
        return ["spec.model.mmproj needs exactly one source: url, huggingFace or path"]
    out = []
    sources = [k for k in ("url", "huggingFace", "path") if k in mmproj]
    if len(sources) != 1:
        out.append("spec.model.mmproj needs exactly one source: url, huggingFace or path"
                   + (f" (found {', '.join(sources)})" if sources else ""))
    if "huggingFace" in mmproj and not ((mmproj["huggingFace"] or {}).get("repo")
                                        and (mmproj["huggingFace"] or {}).get("file")):
        out.append("spec.model.mmproj.huggingFace needs repo and file")
    if "path" in mmproj and "pvc" not in model:
        out.append("spec.model.mmproj.path is a file on the model's claim and needs a pvc model source; "
                   "use mmproj.url or mmproj.huggingFace otherwise")
    if turns_on_self_extend(extra_args):
        out.append(f"spec.server.extraArgs turns on self-extend ({SELF_EXTEND_FLAG} > 1), which kubellama-server "
                   "refuses together with a multimodal projector (spec.model.mmproj); remove one of them")
    return out


def _lora_problems(model: Spec, loras: Any) -> list[str]:
    """spec.model.loras: the CRD's rules (one source each, path only with a pvc model, no path twice)."""
    if not isinstance(loras, list):
        return ["spec.model.loras must be a list of adapters, each with one source: url, huggingFace or path"]
    out = []
    if len(loras) > MAX_LORAS:
        out.append(f"spec.model.loras has {len(loras)} adapters; at most {MAX_LORAS} are allowed")
    paths: list[str] = []
    for i, lora in enumerate(loras):
        where = f"spec.model.loras[{i}]"
        if not isinstance(lora, dict):
            out.append(f"{where} needs exactly one source: url, huggingFace or path")
            continue
        sources = [k for k in ("url", "huggingFace", "path") if k in lora]
        if len(sources) != 1:
            out.append(f"{where} needs exactly one source: url, huggingFace or path"
                       + (f" (found {', '.join(sources)})" if sources else ""))
        if "huggingFace" in lora and not ((lora["huggingFace"] or {}).get("repo")
                                          and (lora["huggingFace"] or {}).get("file")):
            out.append(f"{where}.huggingFace needs repo and file")
        if "path" in lora:
            paths.append(lora["path"])
            if "pvc" not in model:
                out.append(f"{where}.path is a file on the model's claim and needs a pvc model source; "
                           "use url or huggingFace for the adapter otherwise")
    # As the CRD's rule: the same string twice (kubectl apply cannot tell that a/b and ./a/b are one file).
    twice = sorted({p for p in paths if paths.count(p) > 1})
    if twice:
        out.append(f"two spec.model.loras entries name the same path ({', '.join(twice)}): list each adapter once")
    return out


def turns_on_self_extend(args: list[str]) -> bool:
    """Whether server flags set `--grp-attn-n` above 1 (`--grp-attn-n=N` or `--grp-attn-n N`).

    Reads them as the CRD's rule does (crd._self_extend_rule; the tests check both agree).
    """
    on = re.compile(SELF_EXTEND_ON)
    for i, arg in enumerate(args):
        if arg.startswith(SELF_EXTEND_FLAG + "=") and on.match(arg[len(SELF_EXTEND_FLAG) + 1:]):
            return True
        if arg == SELF_EXTEND_FLAG and i + 1 < len(args) and on.match(args[i + 1]):
            return True
    return False


@dataclass(frozen=True)
class Mmproj:
    """Where the multimodal projector comes from and where the server finds it."""

    source: str          # "url" | "huggingFace" | "path"
    file: str            # file name (basename)
    path: str            # absolute path in the server container
    description: str     # human-readable origin, for status
    fetch_args: tuple[str, ...]  # kubellama-fetch flags; () for a file on the model's claim
    #: Its folder: MMPROJ_SUBDIR (downloaded into the model volume), MMPROJ_DIR (downloaded into an emptyDir
    #: of its own, for pvc models) or MODEL_DIR (a file on the pvc model's claim).
    dest: str
    offload: bool        # on the GPU with the model; False: --no-mmproj-offload


@dataclass(frozen=True)
class Lora:
    """A LoRA adapter: where it comes from and where the server finds it (`--lora`, id = index)."""

    index: int           # its position in spec.model.loras: the adapter's id on the server
    name: str            # spec.model.loras[].name ("" when unset): a label for people
    source: str          # "url" | "huggingFace" | "path"
    file: str            # file name (basename)
    path: str            # absolute path in the server container
    description: str     # human-readable origin, for status
    fetch_args: tuple[str, ...]  # kubellama-fetch flags; () for a file on the model's claim
    #: Its folder: LORA_SUBDIR/<i> (downloaded into the model volume), LORA_DIR/<i> (downloaded into an emptyDir
    #: of its own, for pvc models) or MODEL_DIR (a file on the pvc model's claim).
    dest: str
    scale: float = 1.0   # spec.model.loras[].scale: its default scale (--lora-scaled when any is not 1.0)

    @property
    def label(self) -> str:
        """"LoRA adapter 1 (sql)", or "LoRA adapter 1" without a name: how messages name it."""
        return f"LoRA adapter {self.index}" + (f" ({self.name})" if self.name else "")


@dataclass(frozen=True)
class Model:
    """Where the model file comes from and where the server finds it."""

    source: str          # "url" | "huggingFace" | "pvc"
    file: str            # file name (basename)
    path: str            # absolute path in the server container
    name: str            # model id served by /v1/models
    description: str     # human-readable origin, for status
    fetch_args: tuple[str, ...]  # kubellama-fetch flags; () for pvc sources
    mmproj: Mmproj | None = None  # the multimodal projector, when spec.model.mmproj is set
    loras: tuple[Lora, ...] = ()  # the LoRA adapters of spec.model.loras, in order


def _fetch_source(src: Spec, sha256: str | None, dest: str) -> tuple[str, str, tuple[str, ...]]:
    """(file name, description, kubellama-fetch flags) of a url or huggingFace source."""
    sha = ("--sha256", sha256.lower()) if sha256 else ()
    if "url" in src:
        url = src["url"]
        return (posixpath.basename(urlparse(url).path) or "model.gguf", url,
                ("--url", url, *sha, "--dest", dest))
    hf = src["huggingFace"]
    rev = ("--hf-revision", hf["revision"]) if hf.get("revision") else ()
    desc = f"hf://{hf['repo']}/{hf['file']}" + (f"@{hf['revision']}" if hf.get("revision") else "")
    return (posixpath.basename(hf["file"]), desc,
            ("--hf-repo", hf["repo"], "--hf-file", hf["file"], *rev, *sha, "--dest", dest))


def _resolve_file(src: Spec, model: Spec, subdir: str, own_dir: str) -> tuple[str, str, str, str, tuple[str, ...], str]:
    """(source, file, path, description, fetch flags, folder) of a file that goes with the model.

    `path`: a file on the pvc model's claim. url/huggingFace: downloaded into `subdir` (a folder of the
    model volume), or into `own_dir` (an emptyDir) for a pvc model, whose claim is mounted read-only.
    """
    if "path" in src:
        rel = posixpath.normpath(src["path"]).lstrip("/")
        return ("path", posixpath.basename(rel), f"{MODEL_DIR}/{rel}", f"pvc://{model['pvc']['claimName']}/{rel}",
                (), MODEL_DIR)
    dest = own_dir if "pvc" in model else subdir
    file, desc, args = _fetch_source(src, src.get("sha256"), dest)
    return "url" if "url" in src else "huggingFace", file, f"{dest}/{file}", desc, args, dest


def resolve_mmproj(model: Spec) -> Mmproj | None:
    """Resolve `spec.model.mmproj` (None when unset) into paths and fetch flags."""
    mm = model.get("mmproj")
    if not mm:
        return None
    return Mmproj(*_resolve_file(mm, model, MMPROJ_SUBDIR, MMPROJ_DIR), offload=mm.get("offload", True) is not False)


def resolve_loras(model: Spec) -> tuple[Lora, ...]:
    """Resolve `spec.model.loras` into paths and fetch flags (adapter i is downloaded into a folder `<i>/`)."""
    return tuple(Lora(i, lora.get("name") or "", *_resolve_file(lora, model, f"{LORA_SUBDIR}/{i}", f"{LORA_DIR}/{i}"),
                      scale=float(lora.get("scale", 1.0)))
                 for i, lora in enumerate(model.get("loras") or []))


def resolve_model(spec: Spec) -> Model:
    """Resolve `spec.model` (which must have exactly one source) into paths and fetch flags."""
    model = spec["model"]
    mmproj, loras = resolve_mmproj(model), resolve_loras(model)
    alias = model.get("alias")
    if "url" in model or "huggingFace" in model:
        file, desc, args = _fetch_source(model, model.get("sha256"), MODEL_DIR)
        return Model("url" if "url" in model else "huggingFace", file, f"{MODEL_DIR}/{file}", alias or file,
                     desc, args, mmproj, loras)
    pvc = model["pvc"]
    rel = posixpath.normpath(pvc["path"]).lstrip("/")
    file = posixpath.basename(rel)
    return Model("pvc", file, f"{MODEL_DIR}/{rel}", alias or file,
                 f"pvc://{pvc['claimName']}/{rel}", (), mmproj, loras)


def uses_gpu(spec: Spec) -> bool:
    return int(spec.get("gpu", {}).get("count", 0)) > 0


def endpoint(name: str, namespace: str, spec: Spec) -> str:
    """The cluster-internal OpenAI base URL of the Service (the router's with `spec.routing.enabled`)."""
    port = spec.get("service", {}).get("port", SERVER_PORT)
    host = f"{name}-router" if (spec.get("routing") or {}).get("enabled") else name
    return f"http://{host}.{namespace}.svc:{port}/v1"
