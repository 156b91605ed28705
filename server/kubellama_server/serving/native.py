"""The llama.cpp-native endpoints' serving logic: /completion, /tokenize, /detokenize, /props."""

from __future__ import annotations

import math
from typing import Any

from ..engine.engine import Engine
from ..engine.params import parse_prompt, parse_slot_params
from ..engine.task import CompletionResult, PartialResult, Task, TaskSink, TokenInfo
from ..errors import invalid
from .media import completion_images, multimodal_prompt, require_multimodal
from .system_prompt import SystemPrompt, props as system_prompt_props


MAX_PROMPTS = 64  # prompts in one /completion request (each takes a slot in turn)


def split_prompts(value: Any) -> list[Any]:
    """llama.cpp's prompt forms: a string, token ids, token ids mixed with strings, or a prompt
    object are one prompt; any other array (only strings, or token arrays, mixed arrays and
    prompt objects) holds several."""
    if not isinstance(value, list) or not value:
        return [value]
    has_int = any(isinstance(x, int) and not isinstance(x, bool) for x in value)
    if has_int and all(isinstance(x, (int, str)) and not isinstance(x, bool) for x in value):
        return [value]  # token ids, or token ids mixed with strings: one prompt
    if has_int:
        raise invalid("'prompt' mixes token ids with arrays or objects: give one prompt (ids and strings) or an "
                      "array of prompts")
    if len(value) > MAX_PROMPTS:
        raise invalid(f"'prompt' holds {len(value)} prompts; at most {MAX_PROMPTS} per request")
    return list(value)


def completion_task(engine: Engine, body: dict, *, kind: str = "completion", prompt: Any = None) -> Task:
    if "prompt" not in body:
        raise invalid("'prompt' is required")
    images: list[bytes] = []
    prompt = body["prompt"] if prompt is None else prompt
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


MAX_CMPL = 16  # n_cmpl: completions per prompt


def completion_tasks(engine: Engine, body: dict) -> list[Task]:
    """`n_cmpl` tasks per prompt, result index = prompt index * n_cmpl + k (llama.cpp answers several
    with an array of results); with a `seed`, completion k uses seed + k."""
    if "prompt" not in body:
        raise invalid("'prompt' is required")
    n = body.get("n_cmpl", 1)
    if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= MAX_CMPL:
        raise invalid(f"'n_cmpl' must be an integer between 1 and {MAX_CMPL}")
    prompts = split_prompts(body["prompt"])
    if len(prompts) * n > MAX_PROMPTS:
        raise invalid(f"'prompt' and 'n_cmpl' ask for {len(prompts) * n} completions; at most {MAX_PROMPTS} per request")
    tasks = []
    for p in prompts:
        for k in range(n):
            task = completion_task(engine, body, prompt=p)
            if k and task.params.seed >= 0:
                task.params.seed = (task.params.seed + k) % 2**32
            tasks.append(task)
    return tasks


def _logprob(p: float) -> float:
    return math.log(p) if p > 0 else -3.4028234663852886e38  # llama.cpp: the lowest float, never -inf


def probs_json(probs: list[TokenInfo], fmt: str = "today") -> list[dict[str, Any]]:
    """`completion_probabilities`: today's shape (id, token, bytes, logprob, top_logprobs; prob and
    top_probs with post_sampling_probs), or the seed's (content, probs with tok_str and prob)."""
    if fmt == "seed":
        return [{"content": p.text, "id": p.id, "prob": p.prob,
                 "probs": [{"tok_str": t.text, "id": t.id, "prob": t.prob} for t in p.top]} for p in probs]

    def entry(id_: int, text: str, raw: bytes, prob: float, post: bool) -> dict[str, Any]:
        return {"id": id_, "token": text, "bytes": list(raw), **({"prob": prob} if post else {"logprob": _logprob(prob)})}

    out = []
    for p in probs:
        e = entry(p.id, p.text, p.raw, p.prob, p.post_sampling)
        e["top_probs" if p.post_sampling else "top_logprobs"] = [entry(t.id, t.text, t.raw, t.prob, p.post_sampling) for t in p.top]
        out.append(e)
    return out


def final_json(engine: Engine, res: CompletionResult, prompt: Any, *, streamed: bool, index: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {
        "index": index,
        "content": "" if streamed else res.content,
        "tokens": [] if streamed else res.tokens,
        "id_slot": res.id_slot,
        "stop": True,
        "model": res.settings["model"],
        "tokens_predicted": res.tokens_predicted,
        "tokens_evaluated": res.tokens_evaluated,
        "generation_settings": res.settings,
        "prompt": prompt if isinstance(prompt, str) else res.prompt_text or "",
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
        out["completion_probabilities"] = probs_json(res.probs, engine.settings.probs_format)
    return out


def partial_json(part: PartialResult, id_slot: int, probs_format: str = "today", index: int = 0) -> dict[str, Any]:
    out: dict[str, Any] = {
        "index": index,
        "content": part.content,
        "tokens": part.tokens,
        "stop": False,
        "id_slot": id_slot,
        "multimodal": False,
        "tokens_predicted": part.n_decoded,
    }
    if part.probs:
        out["completion_probabilities"] = probs_json(part.probs, probs_format)
    if part.timings is not None:
        out["timings"] = part.timings
    return out


def default_settings_json(engine: Engine) -> dict[str, Any]:
    """The seed's flat settings plus today's slot-shaped view (`params`, `id`, `n_ctx`, `next_token`, ...)."""
    d = engine.generation_settings()
    params = {k: v for k, v in d.items() if k not in ("model", "n_ctx")}
    return {**d, "id": 0, "id_task": -1, "speculative": False, "is_processing": False, "params": params,
            "prompt": "", "next_token": {"has_next_token": True, "has_new_line": False, "n_remain": -1,
                                         "n_decoded": 0, "stopping_word": ""}}


def progress_json(progress: dict[str, Any], id_slot: int, index: int = 0) -> dict[str, Any]:
    """A streamed prompt-progress chunk (`return_progress`)."""
    return {"index": index, "content": "", "tokens": [], "stop": False, "id_slot": id_slot, "tokens_predicted": 0,
            "tokens_evaluated": progress["total"], "prompt_progress": progress}


def props_json(engine: Engine, sp: SystemPrompt) -> dict[str, Any]:
    """GET /props (`sp`: the server's -spf system prompt)."""
    s = engine.settings
    mm = engine.multimodal
    out: dict[str, Any] = {
        **system_prompt_props(sp),
        "default_generation_settings": default_settings_json(engine),
        "total_slots": s.parallel,
        "model_path": engine.model_path,
        "chat_template": engine.model.chat_template if engine.model else "",
        "modalities": {"vision": bool(mm and mm.vision), "audio": False},
        "build_info": "kubellama",
        "model_alias": s.aliases,
        "model_tags": s.tag_list,
        "is_sleeping": False,
    }
    return out
