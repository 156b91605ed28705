"""POST /infill: fill-in-the-middle from the model's FIM tokens.

The prompt is [BOS] <FIM_PRE> prefix <FIM_SUF> suffix <FIM_MID> [prompt], built on
the scheduler thread (`Task.build_prompt`), as llama.cpp's server does.
"""

from __future__ import annotations

from ..engine.params import parse_slot_params
from ..engine.task import Task, TaskSink
from ..errors import invalid
from .media import require_multimodal


def missing_fim_tokens(model) -> list[str]:
    names = {"fim_pre": model.fim_pre, "fim_suf": model.fim_suf, "fim_mid": model.fim_mid}
    return [name for name, tok in names.items() if tok is None or tok < 0]


def build_task(engine, body: dict) -> Task:
    engine.require_ready()
    missing = missing_fim_tokens(engine.model)
    if missing:
        raise invalid(
            f"this model has no fill-in-the-middle tokens (missing: {', '.join(missing)}); "
            "use a code model with FIM tokens for /infill"
        )
    if body.get("image_data"):
        require_multimodal(engine, "'image_data'")
        raise invalid("'image_data' is not supported on /infill yet: send images to /completion or /v1/chat/completions")
    texts = {}
    for key in ("input_prefix", "input_suffix", "prompt"):
        v = body.get(key, "")
        if v is None:
            v = ""
        if not isinstance(v, str):
            raise invalid(f"'{key}' must be a string")
        texts[key] = v
    if "input_prefix" not in body and "input_suffix" not in body:
        raise invalid("'input_prefix' or 'input_suffix' is required")
    params = parse_slot_params(body, engine.default_params, n_slots=engine.n_slots)
    prefix, suffix, extra = texts["input_prefix"], texts["input_suffix"], texts["prompt"]

    def build(model) -> list[int]:
        tokens = [model.bos] if model.add_bos and model.bos >= 0 else []
        tokens.append(model.fim_pre)
        tokens += model.tokenize(prefix, add_special=False, parse_special=False)
        tokens.append(model.fim_suf)
        tokens += model.tokenize(suffix, add_special=False, parse_special=False)
        tokens.append(model.fim_mid)
        if extra:
            tokens += model.tokenize(extra, add_special=False, parse_special=False)
        return tokens

    return Task(kind="completion", prompt=prefix, params=params, sink=TaskSink(), build_prompt=build, use_system_prompt=False)
