"""POST /v1/completions (OpenAI text completions) and GET /v1/models."""

from __future__ import annotations

from typing import Any

from ..engine.params import parse_prompt
from ..engine.task import CompletionResult, PartialResult, Task, TokenInfo
from ..errors import invalid
from .. import protocol as P
from .chat_service import served_model
from .openai_common import SYSTEM_FINGERPRINT, logprob as _logprob, make_tasks, usage


def prompts_of(value: Any) -> list[Any]:
    """OpenAI's prompt forms: a string, strings, tokens, or lists of tokens (one choice set each)."""
    if isinstance(value, list) and value and all(isinstance(x, str) for x in value):
        return list(value)
    if isinstance(value, list) and value and all(isinstance(x, list) for x in value):
        return [parse_prompt(x) for x in value]
    return [parse_prompt(value)]


def build(engine, body: dict) -> tuple[P.CompletionRequest, list[Task]]:
    req = P.parse_request(P.CompletionRequest, body)
    if req.suffix:
        raise invalid("'suffix' is not supported on /v1/completions: use POST /infill with 'input_prefix' and 'input_suffix'")
    prompts = prompts_of(req.prompt)
    n_probs = max(req.logprobs, 1) if req.logprobs is not None else 0
    tasks = make_tasks(engine, req, body, prompts, n_probs=n_probs, allow_truncate=True)
    return req, tasks


def completion_logprobs(probs: list[TokenInfo], top: int, offset: int = 0) -> P.CompletionLogprobs:
    offsets, pos = [], offset
    for p in probs:
        offsets.append(pos)
        pos += len(p.text)
    return P.CompletionLogprobs(
        tokens=[p.text for p in probs],
        token_logprobs=[_logprob(p.prob) for p in probs],
        top_logprobs=[{t.text: _logprob(t.prob) for t in p.top[:top]} for p in probs],
        text_offset=offsets,
    )


def _echo(req: P.CompletionRequest, task: Task) -> str:
    return task.prompt if req.echo and isinstance(task.prompt, str) else ""


def response(engine, req: P.CompletionRequest, tasks: list[Task], results: list[CompletionResult]) -> dict:
    choices = []
    for i, (task, res) in enumerate(zip(tasks, results)):
        echo = _echo(req, task)
        lp = completion_logprobs(res.probs, req.logprobs or 0, len(echo)) if req.logprobs is not None else None
        choices.append(P.CompletionChoice(index=i, text=echo + res.content, finish_reason=res.finish_reason, logprobs=lp))
    return P.dump(P.Completion(id=P.new_id("cmpl"), created=P.now(), model=served_model(engine), choices=choices,
                               usage=usage(tasks, results), system_fingerprint=SYSTEM_FINGERPRINT))


class CompletionStream:
    def __init__(self, engine, req: P.CompletionRequest, tasks: list[Task]):
        self.req = req
        self.tasks = tasks
        self.id = P.new_id("cmpl")
        self.created = P.now()
        self.model = served_model(engine)
        self.results: dict[int, CompletionResult] = {}
        self.echoed: set[int] = set()

    def _chunk(self, index: int, text: str, finish: str | None, lp=None) -> dict:
        d = P.dump(P.Completion(id=self.id, created=self.created, model=self.model, system_fingerprint=SYSTEM_FINGERPRINT,
                                choices=[P.CompletionChoice(index=index, text=text, finish_reason=finish, logprobs=lp)]))
        d.pop("usage")
        return d

    def render(self, index: int, kind: str, payload: Any) -> list[dict]:
        out = []
        if index not in self.echoed:
            self.echoed.add(index)
            echo = _echo(self.req, self.tasks[index])
            if echo:
                out.append(self._chunk(index, echo, None))
        if kind == "partial":
            part: PartialResult = payload
            if part.content or part.probs:
                lp = completion_logprobs(part.probs, self.req.logprobs or 0) if self.req.logprobs is not None else None
                out.append(self._chunk(index, part.content, None, lp))
        elif kind == "final":
            self.results[index] = payload
            out.append(self._chunk(index, "", payload.finish_reason))
        return out

    def tail(self) -> list[dict]:
        opts = self.req.stream_options
        if not (opts and opts.include_usage):
            return []
        results = [self.results[i] for i in range(len(self.tasks))]
        d = P.dump(P.Completion(id=self.id, created=self.created, model=self.model, choices=[], usage=usage(self.tasks, results),
                                system_fingerprint=SYSTEM_FINGERPRINT))
        return [d]


def models(engine) -> dict:
    """GET /v1/models: the one served model with its metadata."""
    engine.require_ready()
    model = engine.model
    meta = {
        "vocab_type": 1,
        "n_vocab": model.n_vocab,
        "n_ctx_train": model.n_ctx_train,
        "n_embd": model.n_embd,
        "n_params": model.n_params,
        "size": model.size,
    }
    card = P.ModelCard(id=served_model(engine), created=int(engine.t_loaded), owned_by="kubellama", meta=meta)
    out = P.dump(P.ModelList(data=[card]))
    out["data"][0].update(aliases=engine.settings.aliases, tags=engine.settings.tag_list,
                          architecture={"input_modalities": ["text"] + (["image"] if engine.multimodal else []),
                                        "output_modalities": ["text"]})
    return out


Stream = CompletionStream  # the streaming renderer of this endpoint family (http.routes_openai)
