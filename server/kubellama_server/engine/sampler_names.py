"""Sampler names and llama.cpp's sampling flags as the server's request defaults (pure functions).

Names follow today's llama.cpp (`common_sampler_types_from_names`): canonical names, their
kebab-case and no-dash forms, `nucleus`/`temp`/`typ`, case-insensitive; the seed's
`typical_p` and `tfs_z` are accepted too. `--sampling-seq` uses llama.cpp's letters.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

# today's llama.cpp default order (common_params_sampling.samplers)
DEFAULT_SAMPLERS = ["penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature"]
CANONICAL = ("penalties", "dry", "top_n_sigma", "top_k", "typ_p", "top_p", "min_p", "xtc", "temperature", "tfs_z")
UNSUPPORTED = {"infill": "the infill sampler", "adaptive_p": "the adaptive-p sampler"}
CHARS = {"e": "penalties", "d": "dry", "s": "top_n_sigma", "k": "top_k", "y": "typ_p", "p": "top_p",
         "m": "min_p", "x": "xtc", "t": "temperature", "f": "tfs_z", "i": "infill", "a": "adaptive_p"}


def _aliases() -> dict[str, str]:
    out: dict[str, str] = {}
    for name in CANONICAL + tuple(UNSUPPORTED):
        out[name] = name
        out[name.replace("_", "-")] = name
        out[name.replace("_", "")] = name
    out.update(nucleus="top_p", temp="temperature", typ="typ_p", typical_p="typ_p", typical="typ_p",
               **{"typical-p": "typ_p"})
    return out


ALIASES = _aliases()


def sampler_names(names: list[str], what: str) -> list[str]:
    """Canonical names of a sampler list; ValueError names the first unknown or unsupported one."""
    out = []
    for raw in names:
        name = ALIASES.get(raw.strip().lower())
        if name is None:
            raise ValueError(f"{what}: unknown sampler name {raw!r}; known: {', '.join(DEFAULT_SAMPLERS)}")
        if name in UNSUPPORTED:
            raise ValueError(f"{what}: {UNSUPPORTED[name]} ({raw!r}) is not supported by this server")
        out.append(name)
    return out


def sampler_chars(seq: str, what: str) -> list[str]:
    """`--sampling-seq edskypmxt`: one letter per sampler."""
    unknown = [c for c in seq if c not in CHARS]
    if unknown:
        raise ValueError(f"{what}: unknown sampler letter {unknown[0]!r}; known: {''.join(CHARS)}")
    return sampler_names([CHARS[c] for c in seq], what)


_BIAS = re.compile(r"^\s*(\d+)\s*([+-])\s*(\S+)\s*$")


def logit_bias_flag(value: str) -> tuple[int, float | bool]:
    """`-l 15043+1` / `-l 15043-inf`: (token id, bias); -inf is `false` (the token is banned)."""
    m = _BIAS.match(value)
    try:
        if not m:
            raise ValueError
        bias = float(m.group(3)) * (-1.0 if m.group(2) == "-" else 1.0)
        if math.isnan(bias) or bias == math.inf:
            raise ValueError
    except ValueError:
        raise ValueError(f"--logit-bias {value!r}: expected TOKEN_ID+BIAS or TOKEN_ID-BIAS, e.g. 15043+1 or 15043-inf") from None
    return int(m.group(1)), False if bias == -math.inf else bias


def _read(path: str, flag: str) -> str:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except OSError as exc:
        raise ValueError(f"{flag} {path}: {exc.strerror or exc}") from None


def default_params(s: Any):
    """The request defaults given by the sampling flags of `ServerSettings` `s` (ValueError: a bad flag)."""
    from .params import SlotParams

    if s.repeat_last_n < 0:
        raise ValueError(f"--repeat-last-n must be >= 0, got {s.repeat_last_n}")
    if not (math.isfinite(s.repeat_penalty) and s.repeat_penalty > 0):
        raise ValueError("--repeat-penalty must be finite and greater than 0")
    if not (math.isfinite(s.presence_penalty) and math.isfinite(s.frequency_penalty)):
        raise ValueError("--presence-penalty and --frequency-penalty must be finite")
    if s.dry_penalty_last_n < 0:
        raise ValueError(f"--dry-penalty-last-n must be >= 0, got {s.dry_penalty_last_n}")
    if s.mirostat not in (0, 1, 2):
        raise ValueError(f"--mirostat must be 0, 1 or 2, got {s.mirostat}")
    if not (-1 <= s.seed <= 2**32 - 1):
        raise ValueError(f"--seed must be -1 (random) or 0..4294967295, got {s.seed}")
    for name, v in (("--temp", s.temp), ("--top-p", s.top_p), ("--min-p", s.min_p), ("--typical", s.typical),
                    ("--dynatemp-range", s.dynatemp_range), ("--dynatemp-exp", s.dynatemp_exp),
                    ("--mirostat-lr", s.mirostat_lr), ("--mirostat-ent", s.mirostat_ent),
                    ("--dry-multiplier", s.dry_multiplier), ("--dry-base", s.dry_base),
                    ("--xtc-probability", s.xtc_probability), ("--xtc-threshold", s.xtc_threshold),
                    ("--top-nsigma", s.top_nsigma)):
        if not math.isfinite(v):
            raise ValueError(f"{name} must be a finite number, got {v}")
    if s.samplers and s.sampling_seq:
        raise ValueError("give --samplers or --sampling-seq, not both")
    samplers = list(DEFAULT_SAMPLERS)
    if s.samplers:
        samplers = sampler_names([n for n in re.split(r"[;,]", s.samplers) if n.strip()], "--samplers")
    elif s.sampling_seq:
        samplers = sampler_chars(s.sampling_seq, "--sampling-seq")
    grammars = [bool(s.grammar), bool(s.grammar_file), bool(s.json_schema), bool(s.json_schema_file)]
    if sum(grammars) > 1:
        raise ValueError("give only one of --grammar, --grammar-file, --json-schema and --json-schema-file")
    grammar = s.grammar or (_read(s.grammar_file, "--grammar-file") if s.grammar_file else "")
    schema_text = s.json_schema or (_read(s.json_schema_file, "--json-schema-file") if s.json_schema_file else "")
    schema = None
    if schema_text:
        flag = "--json-schema" if s.json_schema else "--json-schema-file"
        try:
            schema = json.loads(schema_text)
        except ValueError as exc:
            raise ValueError(f"{flag} is not valid JSON: {exc}") from None
        if not isinstance(schema, (dict, bool)):
            raise ValueError(f"{flag} must be a JSON schema object")
    breakers = list(s.dry_sequence_breaker) if s.dry_sequence_breaker else ["\n", ":", "\"", "*"]
    if "none" in breakers:
        breakers = []
    return SlotParams(
        temperature=max(0.0, s.temp),
        seed=-1 if s.seed == 2**32 - 1 else s.seed,
        top_k=s.top_k,
        top_p=s.top_p,
        min_p=s.min_p,
        typical_p=s.typical,
        repeat_penalty=s.repeat_penalty,
        repeat_last_n=s.repeat_last_n,
        presence_penalty=s.presence_penalty,
        frequency_penalty=s.frequency_penalty,
        dynatemp_range=s.dynatemp_range,
        dynatemp_exponent=s.dynatemp_exp,
        mirostat=s.mirostat,
        mirostat_eta=s.mirostat_lr,
        mirostat_tau=s.mirostat_ent,
        samplers=samplers,
        dry_multiplier=s.dry_multiplier,
        dry_base=s.dry_base if s.dry_base >= 1.0 else 1.75,  # llama.cpp ignores a base below 1
        dry_allowed_length=s.dry_allowed_length,
        dry_penalty_last_n=s.dry_penalty_last_n,
        dry_sequence_breakers=breakers,
        xtc_probability=s.xtc_probability,
        xtc_threshold=s.xtc_threshold,
        top_n_sigma=s.top_nsigma,
        ignore_eos=s.ignore_eos,
        logit_bias=[logit_bias_flag(v) for v in s.logit_bias],
        grammar=grammar,
        json_schema=schema,
    )
