"""What the OpenAI-style endpoints share: body -> native options and tasks, usage, logprobs.

OpenAI field names are mapped onto the native `/completion` options (llama.cpp extras kept);
`n` tasks per prompt run in their own slots.
"""

from __future__ import annotations

import math
from typing import Any

from ..engine.params import parse_slot_params
from ..engine.task import CompletionResult, Task, TaskSink
from ..errors import invalid
from .. import __version__
from .. import protocol as P
from .limits import check_task_count

SYSTEM_FINGERPRINT = f"kubellama-{__version__}"


def native_options(req: P._Sampling, body: dict, *, n_probs: int) -> dict[str, Any]:
    """The body as native options: OpenAI names mapped, llama.cpp extras kept.

    `cache_prompt` defaults to true here (unlike the native /completion, where the
    reference makes it false): chat prompts share long template and history prefixes,
    and OpenAI clients cannot send the option.
    """
    opts = dict(body)
    opts.setdefault("cache_prompt", True)
    for key in ("messages", "prompt", "n", "stream_options", "user", "response_format", "logprobs",
                "top_logprobs", "echo", "suffix", "model", "system_prompt", "tools", "tool_choice",
                "parallel_tool_calls", "reasoning_format", "chat_template_kwargs"):
        opts.pop(key, None)
    if getattr(req, "max_completion_tokens", None) is not None:
        opts["n_predict"] = req.max_completion_tokens
    elif req.max_tokens is not None:
        opts["n_predict"] = req.max_tokens
    opts.pop("max_tokens", None)
    opts.pop("max_completion_tokens", None)
    if n_probs:
        opts["n_probs"] = n_probs
    opts["stream"] = req.stream
    return opts


def response_schema(fmt: P.ResponseFormat | None) -> Any:
    """`response_format` -> the JSON schema to constrain output with (None: unconstrained)."""
    if fmt is None or fmt.type == "text":
        return None
    if fmt.type == "json_object":
        schema = fmt.schema_ if fmt.schema_ is not None else {}
    elif fmt.json_schema is None:
        raise invalid("'response_format' of type 'json_schema' needs a 'json_schema' object with a 'schema'")
    else:
        schema = fmt.json_schema.schema_ if fmt.json_schema.schema_ is not None else {}
    check_enforceable(schema)
    return schema


# Keywords llama-cpp-python's schema-to-grammar converter ignores: output could break them.
UNENFORCEABLE = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf", "uniqueItems",
                 "not", "if", "then", "else", "minProperties", "maxProperties", "dependentRequired", "dependentSchemas")


def check_enforceable(schema: Any, path: str = "schema") -> None:
    """400 when the schema uses a keyword the grammar cannot enforce (the output must validate)."""
    if isinstance(schema, list):
        for i, item in enumerate(schema):
            check_enforceable(item, f"{path}[{i}]")
        return
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        if key in UNENFORCEABLE and path.split(".")[-1] != "properties":
            raise invalid(
                f"'response_format' {path} uses '{key}', which the output grammar cannot enforce; "
                "remove it (or validate that constraint yourself)"
            )
        if key in ("const", "enum", "default", "examples"):
            continue
        check_enforceable(value, f"{path}.{key}")


def make_tasks(engine, req: P._Sampling, body: dict, prompts: list[Any], *, n_probs: int, json_schema: Any = None,
               allow_truncate: bool, images: list[bytes] | None = None, constraint: dict | None = None) -> list[Task]:
    """`n` tasks per prompt (choice index = prompt index * n + k), each for its own slot."""
    check_task_count(engine.settings, len(prompts) * req.n)
    opts = native_options(req, body, n_probs=n_probs)
    if json_schema is not None:
        opts["json_schema"] = json_schema
    if constraint:  # the tool format's grammar or schema
        if opts.get("grammar") or opts.get("json_schema") is not None:
            raise invalid("'grammar' and 'json_schema' cannot be combined with 'tools' here: the tool format "
                          "constrains the reply (use tool_choice \"none\", or leave them out)")
        opts.update(constraint)
    if req.n > 1 and opts.get("id_slot", -1) not in (-1, None):
        raise invalid("'id_slot' cannot be combined with 'n' > 1 (the choices run in parallel slots)")
    base = parse_slot_params(opts, engine.default_params, n_slots=engine.n_slots)
    tasks = []
    for prompt in prompts:
        for k in range(req.n):
            params = parse_slot_params(opts, engine.default_params, n_slots=engine.n_slots)
            if base.seed >= 0 and k:
                params.seed = (base.seed + k) % 2**32  # different but reproducible choices
            tasks.append(Task(kind="completion", prompt=prompt, params=params, sink=TaskSink(), allow_truncate=allow_truncate,
                              images=images or []))
    return tasks


def logprob(p: float) -> float:
    return math.log(p) if p > 0 else -9999.0


def usage(tasks: list[Task], results: list[CompletionResult]) -> P.Usage:
    """Prompt tokens once per distinct prompt (system prompt excluded); completion tokens summed."""
    seen: dict[int, tuple[int, int]] = {}
    for t, r in zip(tasks, results):
        seen[id(t.prompt)] = (r.tokens_evaluated - t.n_system, max(0, r.tokens_cached - t.n_system))
    prompt = sum(n for n, _ in seen.values())
    cached = sum(c for _, c in seen.values())
    completion = sum(r.tokens_predicted for r in results)
    return P.Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion,
                   prompt_tokens_details=P.PromptTokensDetails(cached_tokens=cached))
