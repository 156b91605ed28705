"""The system prompt: `-spf FILE` at start-up (shared), and the `system_prompt` request field (per request).

The server's prompt is shared by all slots: the scheduler evaluates it once and copies
its KV into each slot's sequence (`Scheduler.set_system_prompt`). A request's own
`system_prompt` replaces it for that request only; its KV is shared the same way with
other requests that send the same text.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from ..errors import invalid


@dataclass(frozen=True)
class SystemPrompt:
    prompt: str = ""
    anti_prompt: str = ""  # the user's name in the conversation (reported as `user_name`)
    assistant_name: str = ""


def parse(value: Any, where: str = "'system_prompt'") -> SystemPrompt:
    """A string, or an object with `prompt`, `anti_prompt`, `assistant_name`. Raises ValueError."""
    if isinstance(value, str):
        return SystemPrompt(prompt=value)
    if not isinstance(value, dict):
        raise ValueError(f"{where} must be a string or an object with 'prompt', 'anti_prompt', 'assistant_name'")
    unknown = set(value) - {"prompt", "anti_prompt", "assistant_name"}
    if unknown:
        raise ValueError(f"{where} has unknown fields {sorted(unknown)}; expected 'prompt', 'anti_prompt', 'assistant_name'")
    fields = {}
    for key in ("prompt", "anti_prompt", "assistant_name"):
        v = value.get(key, "")
        if not isinstance(v, str):
            raise ValueError(f"{where}: '{key}' must be a string, got {v!r}")
        fields[key] = v
    return SystemPrompt(**fields)


def load_file(path: str) -> SystemPrompt:
    """`-spf FILE`: JSON like {"prompt": ..., "anti_prompt": ..., "assistant_name": ...}. Raises ValueError."""
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
    except FileNotFoundError:
        raise ValueError(f"-spf: system prompt file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"-spf: cannot read {path}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise ValueError(f"-spf: {path} is not valid JSON ({exc}); expected {{\"prompt\": ..., \"anti_prompt\": ..., \"assistant_name\": ...}}") from None
    return parse(data, f"-spf {path}")


def install(engine, sp: SystemPrompt) -> None:
    """Set it before the scheduler starts (an `Engine.on_ready` hook)."""
    engine.scheduler.set_system_prompt(sp.prompt)


def from_body(body: dict) -> str | None:
    """A request's `system_prompt` (None when it has none): in front of that request's prompt only.

    Older llama.cpp servers switched the shared prompt of every slot with it, so one client
    changed what every later request of every client evaluated; here it never leaves the request.
    """
    if body.get("system_prompt") is None:
        return None
    try:
        return parse(body["system_prompt"]).prompt
    except ValueError as exc:
        raise invalid(str(exc)) from None


def apply_to(tasks, text: str | None) -> None:
    """Give the request's tasks its own system prompt (see `from_body`)."""
    if text is not None:
        for task in tasks:
            if task.use_system_prompt:
                task.system_prompt = text


def props(sp: SystemPrompt) -> dict[str, Any]:
    return {"system_prompt": sp.prompt, "assistant_name": sp.assistant_name, "user_name": sp.anti_prompt}
