"""`-hf org/name[:QUANT]`: pick the model file (and its projector) from a Hugging Face repo's files.

As today's llama.cpp: the quantization tag is matched case-insensitively against the GGUF file
names; without a tag Q4_K_M is taken when the repo has it, else the first GGUF file. A
`mmproj*.gguf` beside the model is the multimodal projector (F16 preferred). Split models
are named by their first shard.

Each pick is remembered in `.hf-picks.json` in the cache folder, so a restart while the
Hub is unreachable, or with `--offline`, finds the same files without listing the repo.
"""

from __future__ import annotations

import re

from pathlib import Path

from .errors import NetworkError, NotFoundError, OfflineMissError, ServerError, UsageError

DEFAULT_QUANT = "Q4_K_M"
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.I)
_PROJECTOR_PREFERENCE = ("f16", "bf16", "f32", "q8_0")


def split_spec(spec: str) -> tuple[str, str | None]:
    """`org/name:Q8_0` -> ("org/name", "Q8_0")."""
    repo, _, quant = spec.partition(":")
    if not repo or (_ and not quant):
        raise UsageError(f"{spec!r} is not org/name or org/name:QUANT (e.g. ggml-org/gemma-3-1b-it-GGUF:Q8_0)")
    return repo, quant or None


def _is_projector(name: str) -> bool:
    return "mmproj" in name.rsplit("/", 1)[-1].lower()


def _models(files: list[str]) -> list[str]:
    """GGUF model files, a split model by its first shard only."""
    out = []
    for f in sorted(files):
        if not f.lower().endswith(".gguf") or _is_projector(f):
            continue
        shard = _SHARD.search(f)
        if shard and int(shard.group(1)) != 1:
            continue
        out.append(f)
    return out


def _has_tag(name: str, tag: str) -> bool:
    """The tag as a whole part of the file name: `-Q4_K_M.gguf`, `.Q4_K_M-00001-of-...`, `/Q4_K_M/...`."""
    return re.search(rf"(^|[-._/]){re.escape(tag)}([-._/]|$)", name, re.I) is not None


def pick_model(repo: str, files: list[str], quant: str | None) -> str:
    models = _models(files)
    if not models:
        raise NotFoundError(f"Hugging Face repo {repo} has no GGUF model file (files: {', '.join(sorted(files)[:10]) or 'none'})")
    if quant:
        matches = [f for f in models if _has_tag(f, quant)]
        if not matches:
            raise NotFoundError(f"{repo} has no {quant} file; its GGUF files are: {', '.join(models[:20])} "
                                "(use org/name:QUANT with one of their quantizations, or --hf-file)")
        return min(matches, key=lambda f: (len(f), f))
    default = [f for f in models if _has_tag(f, DEFAULT_QUANT)]
    return min(default, key=lambda f: (len(f), f)) if default else models[0]


def pick_projector(files: list[str]) -> str | None:
    projectors = sorted(f for f in files if f.lower().endswith(".gguf") and _is_projector(f))
    for pref in _PROJECTOR_PREFERENCE:
        for f in projectors:
            if _has_tag(f, pref):
                return f
    return projectors[0] if projectors else None


def list_files(repo: str, revision: str | None) -> list[str]:
    """The repo's files at `revision` (the Hub's tree API), with the fetcher's error messages."""
    from huggingface_hub import HfApi

    from . import hf

    base = hf.endpoint()
    token = hf.resolve_token()
    try:
        return list(HfApi(endpoint=base, token=token or False).list_repo_files(repo, revision=revision or "main"))
    except Exception as exc:  # noqa: BLE001 - huggingface_hub raises many kinds
        err = hf._map_error(exc, repo, "(file list)", revision or "main", base, token)
        raise err from exc


PICKS = ".hf-picks.json"


def resolve_files(spec: str, revision: str | None, *, projector: bool, offline: bool = False,
                  cache_dir: Path | None = None) -> tuple[str, str, str | None]:
    """(repo, model file, projector file or None) for `org/name[:QUANT]`."""
    from .cache import default_cache_dir, read_json, write_json_atomic

    repo, quant = split_spec(spec)
    store = Path(cache_dir or default_cache_dir()) / PICKS
    key = f"{repo}:{quant or ''}@{revision or 'main'}"
    picks = read_json(store) or {}
    if offline:
        if key not in picks:
            raise OfflineMissError(f"{spec} was never picked online, so its file is not known offline; run once "
                                   "with the network, or name the file with --hf-file")
        picked = picks[key]
    else:
        try:
            files = list_files(repo, revision)
        except (NetworkError, ServerError):
            if key not in picks:
                raise
            picked = picks[key]  # the Hub is unreachable: the files picked last time (they are cached)
        else:
            picked = {"model": pick_model(repo, files, quant), "projector": pick_projector(files)}
            if picks.get(key) != picked:
                try:
                    store.parent.mkdir(parents=True, exist_ok=True)
                    write_json_atomic(store, {**picks, key: picked})
                except OSError:
                    pass  # remembering is a convenience
    return repo, picked["model"], picked["projector"] if projector else None
