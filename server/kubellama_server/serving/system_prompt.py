"""The shared system prompt: `-spf FILE` at start-up and the `system_prompt` request field.

Shared by all slots: the scheduler evaluates it once and copies its KV into each
slot's sequence (`Scheduler.set_system_prompt`). A change applies between two
scheduler steps to tasks tokenized afterwards; requests in flight keep theirs.
"""

from __future__ import annotations

import asyncio
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
    engine.system_prompt = sp
    engine.scheduler.set_system_prompt(sp.prompt)


async def apply_from_body(engine, body: dict) -> None:
    """Handle a request's `system_prompt` field: switch the shared prompt if it changed."""
    if "system_prompt" not in body or body["system_prompt"] is None:
        return
    try:
        sp = parse(body["system_prompt"])
    except ValueError as exc:
        raise invalid(str(exc)) from None
    if sp == getattr(engine, "system_prompt", None):
        return

    def switch(sched) -> None:
        sched.set_system_prompt(sp.prompt)

    await asyncio.wrap_future(engine.call(switch))
    engine.system_prompt = sp


def props(engine) -> dict[str, Any]:
    sp = getattr(engine, "system_prompt", None) or SystemPrompt()
    return {"system_prompt": sp.prompt, "assistant_name": sp.assistant_name, "user_name": sp.anti_prompt}
