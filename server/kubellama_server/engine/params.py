"""Parse and validate `/completion` options into `SlotParams`.

Defaults follow the llama.cpp server reference. Every client mistake raises an
`APIError` naming the field; nothing here touches llama.cpp (strings in prompts
and logit biases are tokenized later, on the scheduler thread).
"""

from __future__ import annotations

import math
import re
from dataclasses import asdict, dataclass, field
from typing import Any

from ..errors import invalid

from .sampler_names import DEFAULT_SAMPLERS, sampler_chars, sampler_names

PromptPiece = int | str
Prompt = str | list[PromptPiece]


@dataclass
class SlotParams:
    """Per-request generation settings (echoed as `generation_settings`)."""

    n_predict: int = -1
    n_keep: int = 0
    stream: bool = False
    stop: list[str] = field(default_factory=list)
    temperature: float = 0.8
    dynatemp_range: float = 0.0
    dynatemp_exponent: float = 1.0
    top_k: int = 40
    top_p: float = 0.95
    min_p: float = 0.05
    tfs_z: float = 1.0
    typical_p: float = 1.0
    repeat_penalty: float = 1.1
    repeat_last_n: int = 64
    penalize_nl: bool = True
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    penalty_prompt: Prompt | None = None
    mirostat: int = 0
    mirostat_tau: float = 5.0
    mirostat_eta: float = 0.1
    grammar: str = ""
    json_schema: Any = None
    seed: int = -1
    ignore_eos: bool = False
    logit_bias: list[tuple[PromptPiece, float | bool]] = field(default_factory=list)
    n_probs: int = 0
    min_keep: int = 0
    id_slot: int = -1
    cache_prompt: bool = False
    samplers: list[str] = field(default_factory=lambda: list(DEFAULT_SAMPLERS))
    lora: list[tuple[int, float]] | None = None  # [(adapter id, scale)]: this request's adapters (others off)
    # today's llama.cpp samplers and fields
    dry_multiplier: float = 0.0
    dry_base: float = 1.75
    dry_allowed_length: int = 2
    dry_penalty_last_n: int = 64
    dry_sequence_breakers: list[str] = field(default_factory=lambda: ["\n", ":", "\"", "*"])
    xtc_probability: float = 0.0
    xtc_threshold: float = 0.1
    top_n_sigma: float = -1.0
    return_tokens: bool = False
    t_max_predict_ms: int = 0
    n_indent: int = 0
    post_sampling_probs: bool = False
    return_progress: bool = False
    timings_per_token: bool = False

    def settings(self) -> dict[str, Any]:
        """The JSON view used in `generation_settings`, `/props` and `/slots`."""
        d = asdict(self)
        d["max_tokens"] = self.n_predict
        d["logit_bias"] = [[t, b] for t, b in self.logit_bias]
        d["penalty_prompt_tokens"] = self.penalty_prompt if isinstance(self.penalty_prompt, list) else []
        d["use_penalty_prompt_tokens"] = self.penalty_prompt is not None
        d.pop("penalty_prompt")
        d.pop("json_schema")
        d.pop("id_slot")
        d.pop("cache_prompt")
        d["lora"] = [{"id": i, "scale": s} for i, s in self.lora] if self.lora is not None else []
        return d


# -- field readers ----------------------------------------------------------


def _is_num(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _float(body: dict, key: str, default: float, lo: float = -math.inf, hi: float = math.inf) -> float:
    v = body.get(key, default)
    if v is None:
        return default
    if not _is_num(v) or not math.isfinite(v):
        raise invalid(f"'{key}' must be a number, got {v!r}")
    if not lo <= v <= hi:
        raise invalid(f"'{key}' must be between {lo} and {hi}, got {v}")
    return float(v)


def _int(body: dict, key: str, default: int, lo: int = -(2**31), hi: int = 2**31 - 1) -> int:
    v = body.get(key, default)
    if v is None:
        return default
    if isinstance(v, float) and v.is_integer():
        v = int(v)
    if not isinstance(v, int) or isinstance(v, bool):
        raise invalid(f"'{key}' must be an integer, got {v!r}")
    if not lo <= v <= hi:
        raise invalid(f"'{key}' must be between {lo} and {hi}, got {v}")
    return v


def _bool(body: dict, key: str, default: bool) -> bool:
    v = body.get(key, default)
    if v is None:
        return default
    if not isinstance(v, bool):
        raise invalid(f"'{key}' must be a boolean, got {v!r}")
    return v


def parse_prompt(value: Any, key: str = "prompt") -> Prompt:
    """A string, a token array, or a mixed array of strings and tokens."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        if len(value) == 1 and isinstance(value[0], list):  # [[tokens]] from OpenAI clients
            value = value[0]
        for item in value:
            if isinstance(item, bool) or not isinstance(item, (int, str)):
                raise invalid(f"'{key}' must be a string or an array of strings and token ids, got an element {item!r}")
            if isinstance(item, int) and item < 0:
                raise invalid(f"'{key}' contains an invalid token id {item}")
        return value
    raise invalid(f"'{key}' must be a string or an array of strings and token ids")


def _stop(body: dict) -> list[str]:
    v = body.get("stop")
    if v is None:
        return []
    if isinstance(v, str):
        return [v] if v else []
    if isinstance(v, list) and all(isinstance(s, str) for s in v):
        return [s for s in v if s]
    raise invalid("'stop' must be a string or an array of strings")


def _logit_bias(body: dict) -> list[tuple[PromptPiece, float | bool]]:
    v = body.get("logit_bias")
    if v is None:
        return []
    out: list[tuple[PromptPiece, float | bool]] = []
    if isinstance(v, dict):  # OpenAI form: {"token_id": bias}; other keys are text (llama.cpp's strtol rule)
        for k, b in v.items():
            tok: PromptPiece = int(k) if _TOKEN_KEY.match(k) else k
            out.append((tok, _bias_value(b)))
        return out
    if not isinstance(v, list):
        raise invalid("'logit_bias' must be an array of [token, bias] pairs or an object")
    for pair in v:
        if not (isinstance(pair, list) and len(pair) == 2):
            raise invalid(f"'logit_bias' entries must be [token, bias] pairs, got {pair!r}")
        tok, b = pair
        if isinstance(tok, bool) or not isinstance(tok, (int, str)):
            raise invalid(f"'logit_bias' token must be a token id or a string, got {tok!r}")
        out.append((tok, _bias_value(b)))
    return out


_TOKEN_KEY = re.compile(r"^\s*[+-]?[0-9]+$")  # what strtol reads whole (no "6_0", no trailing blanks)


def _bias_value(b: Any) -> float | bool:
    if b is False:
        return False
    if _is_num(b) and math.isfinite(b):
        return float(b)
    raise invalid(f"'logit_bias' values must be numbers or false, got {b!r}")


def _samplers(body: dict, default: list[str]) -> list[str]:
    """An array of sampler names, or a string of llama.cpp's sampler letters ("kypmt")."""
    v = body.get("samplers")
    if v is None:
        return list(default)
    try:
        if isinstance(v, str):
            return sampler_chars(v, "'samplers'")
        if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
            raise ValueError("'samplers' must be an array of sampler names or a string of sampler letters")
        return sampler_names(v, "'samplers'")
    except ValueError as exc:
        raise invalid(str(exc)) from None


def _breakers(body: dict, default: list[str]) -> list[str]:
    v = body.get("dry_sequence_breakers")
    if v is None:
        return list(default)
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        raise invalid("'dry_sequence_breakers' must be an array of strings")
    return list(v)  # counted and sized by serving.limits (the `stop` string limits)


def _lora(body: dict) -> list[tuple[int, float]] | None:
    """`lora: [{"id": N, "scale": S}, ...]` (ids are checked against the loaded adapters at launch)."""
    value = body.get("lora")
    if value is None:
        return None
    if not isinstance(value, list):
        raise invalid("'lora' must be an array of {\"id\": adapter id, \"scale\": number} objects")
    out = []
    for k, item in enumerate(value):
        i, scale = (item.get("id"), item.get("scale")) if isinstance(item, dict) else (None, None)
        if isinstance(i, bool) or not isinstance(i, int) or i < 0:
            raise invalid(f"'lora.{k}.id' must be the id of a loaded adapter (GET /lora-adapters lists them)")
        if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not math.isfinite(scale):
            raise invalid(f"'lora.{k}.scale' must be a finite number")
        out.append((i, float(scale)))
    return out


def parse_slot_params(body: dict, defaults: SlotParams, *, n_slots: int) -> SlotParams:
    """Build the generation settings of one request, starting from the server defaults."""
    if not isinstance(body, dict):
        raise invalid("request body must be a JSON object")
    d = defaults
    n_predict = body.get("n_predict", body.get("max_tokens", body.get("max_completion_tokens")))
    own_grammar = body.get("grammar") is not None or body.get("json_schema") is not None  # else the server's
    p = SlotParams(
        n_predict=_int({"n_predict": n_predict}, "n_predict", d.n_predict, lo=-1),
        n_keep=_int(body, "n_keep", d.n_keep, lo=-1),
        stream=_bool(body, "stream", False),
        stop=_stop(body),
        temperature=_float(body, "temperature", d.temperature),
        dynatemp_range=_float(body, "dynatemp_range", d.dynatemp_range, lo=0.0),
        dynatemp_exponent=_float(body, "dynatemp_exponent", d.dynatemp_exponent),
        top_k=_int(body, "top_k", d.top_k),
        top_p=_float(body, "top_p", d.top_p, lo=0.0, hi=1.0),
        min_p=_float(body, "min_p", d.min_p, lo=0.0, hi=1.0),
        tfs_z=_float(body, "tfs_z", d.tfs_z),
        typical_p=_float(body, "typical_p", d.typical_p, lo=0.0, hi=1.0),
        repeat_penalty=_float(body, "repeat_penalty", d.repeat_penalty, lo=0.0),
        repeat_last_n=_int(body, "repeat_last_n", d.repeat_last_n, lo=-1),
        penalize_nl=_bool(body, "penalize_nl", d.penalize_nl),
        presence_penalty=_float(body, "presence_penalty", d.presence_penalty, lo=-2.0, hi=2.0),
        frequency_penalty=_float(body, "frequency_penalty", d.frequency_penalty, lo=-2.0, hi=2.0),
        penalty_prompt=None if body.get("penalty_prompt") is None else parse_prompt(body["penalty_prompt"], "penalty_prompt"),
        mirostat=_int(body, "mirostat", d.mirostat, lo=0, hi=2),
        mirostat_tau=_float(body, "mirostat_tau", d.mirostat_tau, lo=0.0),
        mirostat_eta=_float(body, "mirostat_eta", d.mirostat_eta, lo=0.0),
        grammar=(body.get("grammar") or "") if own_grammar else d.grammar,
        json_schema=body.get("json_schema") if own_grammar else d.json_schema,
        seed=_int(body, "seed", d.seed, lo=-1, hi=2**32 - 1),
        ignore_eos=_bool(body, "ignore_eos", d.ignore_eos),
        logit_bias=_logit_bias(body) if body.get("logit_bias") is not None else list(d.logit_bias),  # replaces, as llama.cpp
        n_probs=_int(body, "n_probs", d.n_probs, lo=0, hi=100),
        min_keep=_int(body, "min_keep", d.min_keep, lo=0),
        id_slot=_int(body, "id_slot", -1, lo=-1),
        cache_prompt=_bool(body, "cache_prompt", d.cache_prompt),
        samplers=_samplers(body, d.samplers),
        lora=_lora(body),
        dry_multiplier=_float(body, "dry_multiplier", d.dry_multiplier, lo=0.0),
        dry_base=_float(body, "dry_base", d.dry_base, lo=0.0),
        dry_allowed_length=_int(body, "dry_allowed_length", d.dry_allowed_length, lo=0),
        dry_penalty_last_n=_int(body, "dry_penalty_last_n", d.dry_penalty_last_n, lo=-1),
        dry_sequence_breakers=_breakers(body, d.dry_sequence_breakers),
        xtc_probability=_float(body, "xtc_probability", d.xtc_probability, lo=0.0, hi=1.0),
        xtc_threshold=_float(body, "xtc_threshold", d.xtc_threshold, lo=0.0),
        top_n_sigma=_float(body, "top_n_sigma", d.top_n_sigma),
        return_tokens=_bool(body, "return_tokens", d.return_tokens),
        t_max_predict_ms=_int(body, "t_max_predict_ms", d.t_max_predict_ms, lo=0),
        n_indent=_int(body, "n_indent", d.n_indent, lo=0),
        post_sampling_probs=_bool(body, "post_sampling_probs", d.post_sampling_probs),
        return_progress=_bool(body, "return_progress", d.return_progress),
        timings_per_token=_bool(body, "timings_per_token", d.timings_per_token),
    )
    if not isinstance(p.grammar, str):
        raise invalid("'grammar' must be a string (GBNF)")
    if p.json_schema is not None and not isinstance(p.json_schema, (dict, bool)):
        raise invalid("'json_schema' must be a JSON schema object")
    if p.tfs_z != 1.0:
        raise invalid(
            "'tfs_z' (tail-free sampling) was removed from llama.cpp; only 1.0 (disabled) is supported"
        )
    if p.id_slot >= n_slots:
        raise invalid(f"'id_slot' {p.id_slot} does not exist: this server has {n_slots} slots (0..{n_slots - 1})")
    return p
