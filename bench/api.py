"""The HTTP API flavours the peers speak: request bodies and streamed-event parsing.

Every peer gets the same sampling settings; the end-of-generation tokens are banned
with ``logit_bias`` (and ``ignore_eos`` where the server knows it) so that every
request generates exactly ``n_predict`` tokens on every peer."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

NATIVE = "native"  # llama.cpp's POST /completion
COMPLETIONS = "completions"  # OpenAI POST /v1/completions
CHAT = "chat"  # OpenAI POST /v1/chat/completions
PATHS = {NATIVE: "/completion", COMPLETIONS: "/v1/completions", CHAT: "/v1/chat/completions"}


@dataclass(frozen=True)
class Sampling:
    temperature: float = 0.8
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    repeat_penalty: float = 1.0


@dataclass
class Event:
    """What one server-sent event carried."""

    text: str = ""
    n_generated: int | None = None  # server-reported generated tokens (final event)
    n_prompt: int | None = None  # server-reported prompt tokens (final event)
    done: bool = False


def build_body(api: str, prompt: str, n_predict: int, seed: int, sampling: Sampling,
               eog_tokens: list[int], cache_prompt: bool = True,
               system: str | None = None) -> dict[str, Any]:
    """The JSON body of one streaming request; ``system`` becomes a system message
    for chat and a plain prefix of the prompt otherwise."""
    common: dict[str, Any] = {
        "stream": True,
        "seed": seed,
        "temperature": sampling.temperature,
        "top_k": sampling.top_k,
        "top_p": sampling.top_p,
        "min_p": sampling.min_p,
        "repeat_penalty": sampling.repeat_penalty,
        "ignore_eos": True,
        "cache_prompt": cache_prompt,
    }
    if api == NATIVE:
        return common | {
            "prompt": (system or "") + prompt,
            "n_predict": n_predict,
            "logit_bias": [[t, False] for t in eog_tokens],
        }
    openai = common | {
        "max_tokens": n_predict,
        "logit_bias": {str(t): -100 for t in eog_tokens},
        "stream_options": {"include_usage": True},
    }
    if api == COMPLETIONS:
        return openai | {"prompt": (system or "") + prompt}
    if api == CHAT:
        messages = [{"role": "system", "content": system}] if system else []
        return openai | {"messages": messages + [{"role": "user", "content": prompt}]}
    raise ValueError(f"unknown API flavour {api!r}; expected one of {sorted(PATHS)}")


def parse_event(api: str, data: str) -> Event:
    """Parse the payload of one ``data:`` line of a stream."""
    if data.strip() == "[DONE]":
        return Event(done=True)
    try:
        obj = json.loads(data)
    except json.JSONDecodeError as exc:
        raise ValueError(f"stream event is not JSON: {data[:120]!r}") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"stream event is not a JSON object: {data[:120]!r}")
    if "error" in obj:
        err = obj["error"]
        raise ValueError(f"server error in stream: {err.get('message', err) if isinstance(err, dict) else err}")
    if api == NATIVE:
        ev = Event(text=obj.get("content") or "")
        if obj.get("stop"):
            ev.done = True
            timings = obj.get("timings") or {}
            ev.n_generated = obj.get("tokens_predicted", timings.get("predicted_n"))
            ev.n_prompt = obj.get("tokens_evaluated", timings.get("prompt_n"))
        return ev
    ev = Event()
    for choice in obj.get("choices") or []:
        if api == CHAT:
            ev.text += (choice.get("delta") or {}).get("content") or ""
        else:
            ev.text += choice.get("text") or ""
    usage = obj.get("usage")
    if usage:
        ev.n_generated = usage.get("completion_tokens")
        ev.n_prompt = usage.get("prompt_tokens")
    return ev


def sse_data(line: str) -> str | None:
    """The payload of an SSE ``data:`` line, or None for other lines."""
    if line.startswith("data:"):
        return line[5:].lstrip(" ")
    return None
