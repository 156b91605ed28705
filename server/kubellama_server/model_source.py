"""Resolve the files the server loads: `-m` or a download for `-mu` / `-hfr -hff`; `--mmproj` or `-mmu`."""

from __future__ import annotations

import logging

from .settings import ServerSettings

log = logging.getLogger("kubellama.model")


def needs_download(settings: ServerSettings) -> bool:
    return bool(settings.model_url or settings.hf_repo)


def resolve_model_path(settings: ServerSettings) -> str:
    """Download (or find in the cache) the model of -mu/-hfr; -m alone is used as given.

    With -m and a download source together, -m names where the download lands.
    Runs on the loader thread, so /health answers 503 "loading model" meanwhile.
    """
    if not needs_download(settings):
        return settings.model
    from pathlib import Path

    from .fetch import FetchError, ModelSource
    from .fetch.hf_pick import resolve_files

    hf_repo, hf_file = settings.hf_repo, settings.hf_file
    dest = Path(settings.model).parent if settings.model else None
    if hf_repo and not hf_file:  # -hf org/name[:QUANT]: pick the file (and the projector) from the repo's list
        # (no projector with self-extend: the server refuses the two together)
        want_projector = not (settings.no_mmproj or settings.mmproj or settings.mmproj_url or settings.grp_attn_n > 1)
        try:
            hf_repo, hf_file, projector = resolve_files(hf_repo, settings.hf_revision, projector=want_projector,
                                                        offline=settings.offline, cache_dir=dest)
        except FetchError as exc:
            raise RuntimeError(f"model download failed: {exc}") from exc
        settings.hf_repo, settings.hf_file, settings.hf_mmproj_file = hf_repo, hf_file, projector or ""
        log.info("picked %s from %s%s", hf_file, hf_repo, f" with the projector {projector}" if projector else "")
    source = ModelSource(
        url=settings.model_url or None,
        hf_repo=hf_repo or None,
        hf_file=hf_file or None,
        hf_revision=settings.hf_revision or None,
    )
    log.info("fetching model from %s", source.describe())
    return _fetch(source, settings.model, "model", sha256=settings.model_sha256 or None, offline=settings.offline)


def resolve_mmproj_path(settings: ServerSettings) -> str:
    """The projector of `-mmu URL` (downloaded or found in the cache), else `--mmproj` as given.

    With --mmproj and -mmu together, --mmproj names where the download lands.
    """
    if not (settings.mmproj_url or settings.hf_mmproj_file):
        return settings.mmproj
    from .fetch import ModelSource

    if settings.mmproj_url:
        source = ModelSource(url=settings.mmproj_url)
    else:  # the projector -hf found beside the model
        source = ModelSource(hf_repo=settings.hf_repo, hf_file=settings.hf_mmproj_file, hf_revision=settings.hf_revision or None)
    log.info("fetching the multimodal projector from %s", source.describe())
    return _fetch(source, settings.mmproj, "multimodal projector", sha256=None, offline=settings.offline)


def _fetch(source, wanted: str, what: str, *, sha256: str | None, offline: bool) -> str:
    """Download `source` (or find it in the cache). `wanted` (-m / --mmproj), when given, names where
    it lands: its folder, and a link by that name when the file's own name differs."""
    from pathlib import Path

    from .fetch import FetchError, fetch_model

    try:
        path = fetch_model(source, dest=Path(wanted).parent if wanted else None, sha256=sha256, offline=offline)
    except FetchError as exc:
        raise RuntimeError(f"{what} download failed: {exc}") from exc
    if wanted and Path(wanted).name != path.name:
        target = Path(wanted)
        if not target.exists():
            target.symlink_to(path)
        return str(target)
    return str(path)
