"""The status a shared cache's download and a rollout add to `status.compute_status`'s (a pure function)."""

from __future__ import annotations

import json
from typing import Any

from .builders.download_job import Download
from .rollout import Plan
from .status import condition, describe_progress


def slots_note(slots_enabled: bool, old_model: str, new_model: str) -> str:
    """What status says about saved slots when the model changes (the server refuses another model's slots)."""
    if not slots_enabled or not old_model or old_model == new_model:
        return ""
    return (f"saved slots of the previous model ({old_model}) are not restored into {new_model}: "
            "kubellama-server refuses a slot file saved by another model")


_FREE_SPACE = "files no LlamaServer uses are removed after spec.model.cache.cleanupAfterSeconds, or enlarge the claim"


def nearly_full(fetch_log: str | None) -> str:
    """The fetcher's last "nearly_full" warning in its JSON-lines log, or ""."""
    for line in reversed((fetch_log or "").splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict) and record.get("event") == "nearly_full":
            return str(record.get("message") or "")
    return ""


def _set(status: dict[str, Any], type_: str, ok: bool | None, reason: str, message: str,
         generation: int | None, previous: dict[str, Any]) -> None:
    prev = {c.get("type"): c for c in previous.get("conditions") or []}
    new = condition(type_, ok, reason, message, generation, prev)
    status["conditions"] = [new if c.get("type") == type_ else c for c in status.get("conditions") or []]
    if not any(c.get("type") == type_ for c in status["conditions"]):
        status["conditions"].append(new)


def merge(status: dict[str, Any], *, generation: int | None, previous: dict[str, Any],
          cache: dict[str, Any] | None = None, download: Download | None = None,
          progress: dict[str, Any] | None = None, plan: Plan | None = None, slots: str = "",
          fetch_log: str | None = None) -> dict[str, Any]:
    """`status` (from compute_status) with the cache, the download Job and the rollout step (in place).

    The cache is reported nearly full from the fetcher's warning (kept until a cleanup removes files) or full
    from a DiskFull failure, with what to do."""
    ready = int(status.get("readyReplicas") or 0)
    if cache:
        cache = dict(cache)
        before = (previous.get("cache") or {}).get("nearlyFull", "")
        warning = nearly_full(fetch_log)
        if download is not None and download.reason == "DiskFull":
            warning = download.message
        if warning:
            cache["nearlyFull"] = f"{warning}; {_FREE_SPACE}"
        elif before and not cache.get("removed"):
            cache["nearlyFull"] = before  # until a cleanup removes files
        status["cache"] = cache
    rollout: dict[str, Any] = {}
    if download is not None:
        message = download.message
        if download.state == "Running" and download.fetcher:
            message = describe_progress(progress, download.fetching or "model")
        status["download"] = {"job": download.job, "state": download.state, "message": message}
        if download.state in ("Pending", "Running"):
            _set(status, "ModelReady", False, "Downloading", message, generation, previous)
            _set(status, "Progressing", True, "Downloading", message, generation, previous)
            rollout = {"phase": "Downloading", "message": message}
            if ready:
                status["message"] = f"{status['message']}; downloading the new files first: {message}"
            else:
                status["phase"], status["message"] = "Downloading", message
        elif download.state == "Failed":
            _set(status, "ModelReady", False, download.reason, download.message, generation, previous)
            _set(status, "Progressing", False, "Failed", download.message, generation, previous)
            if ready:
                status["phase"] = "Degraded"
                status["message"] = f"{status['message']}; still serving the previous model: {download.message}"
            else:
                status["phase"], status["message"] = "Failed", download.message
        elif not any(c.get("type") == "ModelReady" and c.get("status") == "True" for c in status["conditions"]):
            _set(status, "ModelReady", True, "InCache", "every file is in the shared cache", generation, previous)
    if plan is not None and plan.step and not rollout:
        rollout = {"phase": plan.step, "message": plan.message}
        _set(status, "Progressing", True, "RollingOut", plan.message, generation, previous)
        status["message"] = f"{status['message']}; {plan.message}"
    if rollout:
        if slots:
            rollout["slots"] = slots
        status["rollout"] = rollout
    return status
