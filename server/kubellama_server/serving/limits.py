"""Per-request limits, checked once before tasks reach the scheduler (README "Limits and security").

`check_tasks` is the policy (pure: settings and tasks in, a 4xx or clamped parameters out);
`admit` applies it off the event loop, with the engine's slot context and queue length.
Whatever it refuses never costs the scheduler thread time or memory, and whatever could
crash llama.cpp (deep grammars) never gets there.
"""

from __future__ import annotations

import asyncio
import contextvars
from dataclasses import dataclass
from typing import Any

from ..engine.task import Task, bind_loop
from ..errors import APIError, invalid
from ..settings import ServerSettings
from .grammar_guard import check_grammar, check_schema, schema_key
from .image_info import image_size

RETRY_AFTER_S = 2  # what a 503 for a full queue tells the client to wait


@dataclass(frozen=True)
class Limits:
    """The per-request limits of `ServerSettings` (which holds their defaults and flags)."""

    max_prompt_bytes: int
    max_images: int
    max_image_bytes: int
    max_image_pixels: int
    max_stop_strings: int
    max_stop_length: int
    max_logit_bias: int
    max_request_tasks: int
    max_queued_tasks: int
    max_grammar_bytes: int
    max_grammar_depth: int
    n_predict: int  # the server's -n: caps every request's n_predict

    @classmethod
    def from_settings(cls, s: ServerSettings | None = None, **overrides: int) -> "Limits":
        """`s`'s limits (the defaults when None), `overrides` replacing some."""
        s = s or ServerSettings()
        return cls(**{k: overrides.get(k, getattr(s, k)) for k in cls.__dataclass_fields__})


class QueueFull(APIError):
    """503 with Retry-After: every slot is busy and the queue holds --max-queued-tasks tasks."""

    def __init__(self, limit: int):
        super().__init__(f"the server is busy: {limit} tasks are already waiting for a slot (--max-queued-tasks); "
                         f"retry in {RETRY_AFTER_S} s", "unavailable_error")
        self.headers = {"Retry-After": str(RETRY_AFTER_S)}


def prompt_bytes(prompt: Any) -> int:
    """UTF-8 bytes of a prompt's text (token ids count 4 bytes each)."""
    if isinstance(prompt, str):
        return len(prompt.encode("utf-8", "surrogatepass"))
    if isinstance(prompt, list):
        return sum(prompt_bytes(p) if isinstance(p, str) else 4 for p in prompt)
    return 0


def check_prompt_bytes(n: int, limits: Limits, what: str = "the prompt") -> None:
    if n > limits.max_prompt_bytes:
        raise APIError(f"{what} is {n} bytes; this server accepts up to {limits.max_prompt_bytes} bytes "
                       "(--max-prompt-bytes)", "invalid_request_error", code=413)


def max_predict(limits: Limits, n_ctx_slot: int, grp_attn_n: int = 1) -> int:
    """The most tokens one request may generate: the server's -n, else 4 slot contexts
    (context shifts let a request with `ignore_eos` run on; it must end some day)."""
    return limits.n_predict if limits.n_predict >= 0 else 4 * n_ctx_slot * max(1, grp_attn_n)


def _check_count(n: int, max_request_tasks: int, max_queued_tasks: int) -> None:
    limit, flag = min((max_request_tasks, "--max-request-tasks"), (max_queued_tasks, "--max-queued-tasks"))
    if n > limit:
        raise invalid(f"the request makes {n} tasks (prompts x n, inputs or documents); this server "
                      f"accepts up to {limit} ({flag})")


def check_task_count(settings: ServerSettings, n: int) -> None:
    """--max-request-tasks, before a request's tasks are even built (a million prompts would be a million tasks)."""
    _check_count(n, settings.max_request_tasks, settings.max_queued_tasks)


def check_tasks(limits: Limits, tasks: list[Task], *, n_ctx_slot: int, queued: int = 0, grp_attn_n: int = 1) -> None:
    """Refuse (4xx) or bound one request's tasks; clamps parameters in place and converts JSON
    schemas to grammars (once per distinct schema)."""
    _check_count(len(tasks), limits.max_request_tasks, limits.max_queued_tasks)  # more than the queue holds: never
    if queued + len(tasks) > limits.max_queued_tasks:
        raise QueueFull(limits.max_queued_tasks)
    grammars: dict[str, str] = {}
    cap = max_predict(limits, n_ctx_slot, grp_attn_n)
    for task in tasks:
        n = task.prompt_bytes if task.prompt_bytes >= 0 else prompt_bytes(task.prompt)
        check_prompt_bytes(n + prompt_bytes(task.system_prompt or ""), limits)
        _check_images(limits, task.images)
        if task.kind == "completion":
            _check_params(limits, task.params, n_ctx_slot, cap, grammars)


def _check_images(limits: Limits, images: list[bytes]) -> None:
    if len(images) > limits.max_images:
        raise invalid(f"the request has {len(images)} images; this server accepts up to {limits.max_images} (--max-images)")
    for k, data in enumerate(images):
        if len(data) > limits.max_image_bytes:
            raise APIError(f"image {k} is {len(data)} bytes; this server accepts images up to {limits.max_image_bytes} "
                           "bytes (--max-image-bytes)", "invalid_request_error", code=413)
        size = image_size(data)
        if size is None:
            raise invalid(f"image {k} could not be decoded: not a PNG, JPEG, GIF, BMP or WebP file (or a damaged header)")
        w, h = size
        if w * h > limits.max_image_pixels:
            raise invalid(f"image {k} is {w}x{h} pixels; this server accepts up to {limits.max_image_pixels} pixels "
                          "(--max-image-pixels)")


def _check_strings(limits: Limits, strings: list[str], what: str) -> None:
    """`stop` and `dry_sequence_breakers`: --max-stop-strings strings of --max-stop-length characters each."""
    if len(strings) > limits.max_stop_strings:
        raise invalid(f"'{what}' has {len(strings)} strings; this server accepts up to {limits.max_stop_strings} "
                      "(--max-stop-strings)")
    longest = max((len(s) for s in strings), default=0)
    if longest > limits.max_stop_length:
        raise invalid(f"a '{what}' string is {longest} characters; this server accepts up to {limits.max_stop_length} "
                      "(--max-stop-length)")


def _check_params(limits: Limits, p, n_ctx_slot: int, cap: int, grammars: dict[str, str]) -> None:
    _check_strings(limits, p.stop, "stop")
    _check_strings(limits, p.dry_sequence_breakers, "dry_sequence_breakers")
    if len(p.logit_bias) > limits.max_logit_bias:
        raise invalid(f"'logit_bias' has {len(p.logit_bias)} entries; this server accepts up to {limits.max_logit_bias} "
                      "(--max-logit-bias)")
    # texts the scheduler tokenizes besides the prompt
    check_prompt_bytes(prompt_bytes([t for t, _ in p.logit_bias if isinstance(t, str)]), limits, "the 'logit_bias' strings")
    check_prompt_bytes(prompt_bytes(p.penalty_prompt or ""), limits, "'penalty_prompt'")
    if p.n_predict == -1 and limits.n_predict >= 0 or p.n_predict > cap:
        p.n_predict = cap
    if p.repeat_last_n > n_ctx_slot:  # the penalty window is allocated at this size
        p.repeat_last_n = n_ctx_slot
    if p.dry_penalty_last_n > n_ctx_slot:  # so is DRY's
        p.dry_penalty_last_n = n_ctx_slot
    if p.json_schema is not None:
        key = schema_key(p.json_schema)
        if key not in grammars:
            check_schema(p.json_schema, max_depth=limits.max_grammar_depth, max_bytes=limits.max_grammar_bytes)
            from ..engine.sampling import schema_gbnf

            try:
                gbnf = schema_gbnf(p.json_schema)
            except RecursionError:
                raise invalid("'json_schema' nests too deeply to be converted to a grammar") from None
            check_grammar(gbnf, max_bytes=limits.max_grammar_bytes, max_depth=limits.max_grammar_depth,
                          what="'json_schema' (as a grammar)")
            grammars[key] = gbnf
        p.grammar, p.json_schema = grammars[key], None
    elif p.grammar:
        if p.grammar not in grammars:
            check_grammar(p.grammar, max_bytes=limits.max_grammar_bytes, max_depth=limits.max_grammar_depth)
            grammars[p.grammar] = p.grammar


def queued_tasks(engine) -> int:
    """Tasks submitted and not yet in a slot (a racy read: admission is approximate)."""
    sched = engine.scheduler
    return sched.queued() if sched is not None else 0


async def admit(engine, tasks: list[Task]) -> None:
    """`check_tasks` with the engine's numbers, then `Engine.prepare` (tokenize, validate), on one
    of the engine's prepare threads (schemas convert in Python, grammars parse, prompts tokenize:
    never on the event loop, never behind a decode step)."""
    engine.require_ready()
    limits = Limits.from_settings(engine.settings)
    work = asyncio.ensure_future(engine.off_thread(_check_and_prepare, engine, limits, tasks))
    try:
        await asyncio.shield(work)
    except asyncio.CancelledError:  # the client left: what the worker prepares is never submitted
        work.add_done_callback(lambda _f: [t.discard() for t in tasks])
        raise


def _check_and_prepare(engine, limits: Limits, tasks: list[Task]) -> None:
    check_tasks(limits, tasks, n_ctx_slot=engine.n_ctx_slot(), queued=queued_tasks(engine),
                grp_attn_n=engine.settings.grp_attn_n)
    engine.prepare(tasks)  # tokenized and validated here: a client mistake is this request's 4xx


async def off_loop(fn, *args, **kwargs):
    """Run `fn` on a worker thread; tasks it creates deliver their results to this event loop."""
    loop = asyncio.get_running_loop()
    ctx = contextvars.copy_context()
    ctx.run(bind_loop, loop)
    return await loop.run_in_executor(None, lambda: ctx.run(fn, *args, **kwargs))
