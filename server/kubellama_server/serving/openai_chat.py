"""POST /v1/chat/completions: messages -> chat template -> `n` tasks -> OpenAI responses.

The request becomes a `ChatRun` and its prompt (`chat_prompt`); the reply is read into
neutral deltas and messages (`reply`), which this module renders in OpenAI's wire format.
"""

from __future__ import annotations

from typing import Any

from ..engine.task import CompletionResult, Task, TokenInfo
from ..errors import invalid
from .. import protocol as P
from .chat_prompt import parse_and_render
from .chat_service import ChatService
from .openai_common import SYSTEM_FINGERPRINT, logprob, make_tasks, response_schema, usage
from .reply import ChatRun, ReplyDelta, ReplyStream, ToolCall, final_message
from . import reasoning


def build(chat: ChatService, body: dict) -> tuple[ChatRun, list[Task]]:
    run, prompt, images = parse_and_render(chat, body)
    req = run.request
    n_probs = (req.top_logprobs or 1) if req.logprobs else 0
    if req.top_logprobs and not req.logprobs:
        raise invalid("'top_logprobs' needs 'logprobs': true")
    tasks = make_tasks(chat.engine, req, body, [prompt], n_probs=n_probs, json_schema=response_schema(req.response_format),
                       allow_truncate=False, images=images,
                       constraint=run.tool_plan.constraint() if run.tool_plan else None)
    p = tasks[0].params if tasks else None
    if p is not None and (p.json_schema is not None or (p.grammar and reasoning.CLOSE not in p.grammar)):
        # constrained from the first token and unable to write </think>: the reply is the answer
        run.thinking = False
    return run, tasks


# -- wire format ------------------------------------------------------------------


def logprobs_json(probs: list[TokenInfo], top: int) -> dict:
    """A choice's `logprobs` object."""
    return {"content": [
        {"token": p.text, "logprob": logprob(p.prob), "bytes": list(p.text.encode()),
         "top_logprobs": [{"token": t.text, "logprob": logprob(t.prob), "bytes": list(t.text.encode())} for t in p.top[:top]]}
        for p in probs
    ]}


def tool_call_delta(call: ToolCall) -> dict:
    return {"id": call.id, "type": "function", "function": {"name": call.name, "arguments": call.arguments},
            "index": call.index}


def response(chat: ChatService, run: ChatRun, tasks: list[Task], results: list[CompletionResult]) -> dict:
    req = run.request
    choices, logprobs = [], []
    for i, res in enumerate(results):
        msg = final_message(run, res.content, res.finish_reason)
        calls = [P.ToolCall(id=c.id, function=P.ToolCallFunction(name=c.name, arguments=c.arguments))
                 for c in msg.tool_calls]
        choices.append(P.ChatChoice(
            index=i,
            message=P.AssistantMessage(content=msg.content, reasoning_content=msg.reasoning, tool_calls=calls or None),
            finish_reason=msg.finish_reason,
        ))
        logprobs.append(logprobs_json(res.probs, req.top_logprobs or 0) if req.logprobs else None)
    out = P.dump(P.ChatCompletion(id=P.new_id("chatcmpl"), created=P.now(), model=chat.served_model(),
                                  system_fingerprint=SYSTEM_FINGERPRINT, choices=choices, usage=usage(tasks, results)))
    for choice, lp in zip(out["choices"], logprobs):
        choice["logprobs"] = lp
        for key in ("tool_calls", "reasoning_content"):  # as OpenAI: these keys only when there is something in them
            if choice["message"].get(key) is None:
                choice["message"].pop(key, None)
    return out


class ChatStream:
    """`chat.completion.chunk` objects of `n` tasks: one chunk per reply delta."""

    def __init__(self, chat: ChatService, run: ChatRun, tasks: list[Task]):
        self.req = run.request
        self.tasks = tasks
        self.deltas = ReplyStream(run, len(tasks))
        self.id = P.new_id("chatcmpl")
        self.created = P.now()
        self.model = chat.served_model()
        self.top = (self.req.top_logprobs or 0) if self.req.logprobs else -1  # -1: no logprobs
        self.results: dict[int, CompletionResult] = {}

    def render(self, index: int, kind: str, payload: Any) -> list[dict]:
        return [self.chunk(d) for d in self.deltas.feed(index, kind, payload)]

    def _chunk(self, choices: list[dict]) -> dict:
        return {"id": self.id, "object": "chat.completion.chunk", "created": self.created, "model": self.model,
                "system_fingerprint": SYSTEM_FINGERPRINT, "choices": choices}

    def chunk(self, d: ReplyDelta) -> dict:
        """The chunk of one delta (deltas carry only what changed, as OpenAI's)."""
        if d.start:  # as llama.cpp: the role first, content null
            out = self._chunk([{"index": d.index, "delta": {"role": "assistant", "content": None},
                                "finish_reason": None, "logprobs": None}])
            if d.progress is not None:
                out["prompt_progress"] = d.progress
            return out
        lp = logprobs_json(d.probs, self.top) if self.top >= 0 and d.probs is not None else None
        if d.finish_reason is not None:
            self.results[d.index] = d.result
            delta: dict = {}
        elif d.tool_calls is not None:
            delta = {"tool_calls": [tool_call_delta(c) for c in d.tool_calls]}
        else:
            delta = {} if d.content is None else {"content": d.content}
            if d.reasoning:
                delta["reasoning_content"] = d.reasoning
        return self._chunk([{"index": d.index, "delta": delta, "finish_reason": d.finish_reason, "logprobs": lp}])

    def tail(self) -> list[dict]:
        opts = self.req.stream_options
        if not (opts and opts.include_usage):
            return []
        results = [self.results[i] for i in range(len(self.tasks))]
        return [{**self._chunk([]), "usage": P.dump(usage(self.tasks, results))}]


Stream = ChatStream  # the streaming renderer of this endpoint family (http.routes_openai)
