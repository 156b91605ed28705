"""The status a shared cache's download and a rollout add to `status.compute_status`'s (a pure function)."""

from __future__ import annotations

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


def _set(status: dict[str, Any], type_: str, ok: bool | None, reason: str, message: str,
         generation: int | None, previous: dict[str, Any]) -> None:
    prev = {c.get("type"): c for c in previous.get("conditions") or []}
    new = condition(type_, ok, reason, message, generation, prev)
    status["conditions"] = [new if c.get("type") == type_ else c for c in status.get("conditions") or []]
    if not any(c.get("type") == type_ for c in status["conditions"]):
        status["conditions"].append(new)


def merge(status: dict[str, Any], *, generation: int | None, previous: dict[str, Any],
          cache: dict[str, Any] | None = None, download: Download | None = None,
          progress: dict[str, Any] | None = None, plan: Plan | None = None, slots: str = "") -> dict[str, Any]:
    """`status` (from compute_status) with the cache, the download Job and the rollout step (in place)."""
    ready = int(status.get("readyReplicas") or 0)
    if cache:
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
