"""The llama.cpp-native endpoints' serving logic: /completion, /tokenize, /detokenize, /props."""

from __future__ import annotations

from typing import Any

from ..engine.engine import Engine
from ..engine.params import parse_prompt, parse_slot_params
from ..engine.task import CompletionResult, PartialResult, Task, TaskSink, TokenInfo
from ..errors import invalid
from .media import completion_images, multimodal_prompt, require_multimodal


def completion_task(engine: Engine, body: dict, *, kind: str = "completion") -> Task:
    if "prompt" not in body:
        raise invalid("'prompt' is required")
    images: list[bytes] = []
    prompt = body["prompt"]
    if body.get("image_data"):
        require_multimodal(engine, "'image_data'")
        prompt, images = completion_images(prompt, body["image_data"])
    elif isinstance(prompt, dict):
        prompt, images = multimodal_prompt(prompt)
        if images:
            require_multimodal(engine, "'prompt.multimodal_data'")
    prompt = parse_prompt(prompt)
    params = parse_slot_params(body, engine.default_params, n_slots=engine.n_slots)
    return Task(kind=kind, prompt=prompt, params=params, sink=TaskSink(), images=images)


def probs_json(probs: list[TokenInfo]) -> list[dict[str, Any]]:
    """`completion_probabilities` in the reference's shape (plus token ids)."""
    return [
        {
            "content": p.text,
            "id": p.id,
            "prob": p.prob,
            "probs": [{"tok_str": t.text, "id": t.id, "prob": t.prob} for t in p.top],
        }
        for p in probs
    ]


def final_json(engine: Engine, res: CompletionResult, prompt: Any, *, streamed: bool) -> dict[str, Any]:
    out: dict[str, Any] = {
        "index": 0,
        "content": "" if streamed else res.content,
        "tokens": [] if streamed else res.tokens,
        "id_slot": res.id_slot,
        "stop": True,
        "model": res.settings["model"],
        "tokens_predicted": res.tokens_predicted,
        "tokens_evaluated": res.tokens_evaluated,
        "generation_settings": res.settings,
        "prompt": prompt if isinstance(prompt, str) else engine.model.detokenize(res.prompt_tokens),
        "has_new_line": "\n" in res.content,
        "truncated": res.truncated,
        "stopped_eos": res.stopped_eos,
        "stopped_word": res.stopped_word,
        "stopped_limit": res.stopped_limit,
        "stop_type": res.stop_type,
        "stopping_word": res.stopping_word,
        "tokens_cached": res.tokens_cached,
        "timings": res.timings.to_json(),
    }
    if res.settings.get("n_probs", 0) > 0 and not streamed:
        out["completion_probabilities"] = probs_json(res.probs)
    return out


def partial_json(part: PartialResult, id_slot: int) -> dict[str, Any]:
    out: dict[str, Any] = {
        "index": 0,
        "content": part.content,
        "tokens": part.tokens,
        "stop": False,
        "id_slot": id_slot,
        "multimodal": False,
        "tokens_predicted": part.n_decoded,
    }
    if part.probs:
        out["completion_probabilities"] = probs_json(part.probs)
    return out


def props_json(engine: Engine) -> dict[str, Any]:
    s = engine.settings
    mm = engine.multimodal
    from .system_prompt import props as system_prompt_props

    out: dict[str, Any] = {
        **system_prompt_props(engine),
        "default_generation_settings": engine.generation_settings(),
        "total_slots": s.parallel,
        "model_path": engine.model_path,
        "chat_template": engine.model.chat_template if engine.model else "",
        "modalities": {"vision": bool(mm and mm.vision), "audio": False},
        "build_info": "kubellama",
    }
    return out
