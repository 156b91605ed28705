"""A chat reply as neutral pieces, computed once per engine event, rendered by every API.

`ReplyStream.feed` turns one task event (`progress`, `partial`, `final`) into `ReplyDelta`s:
the reasoning split (`<think>` text) and the tool-call parsing happen here, once, and the
OpenAI chat, Anthropic Messages and Responses streams each render the same deltas in their
own wire format (as llama.cpp's `common_chat_msg_diff`). `final_message` is the whole reply
of a request that does not stream.

A delta is one of four shapes, in this order for each choice:
- start: the choice's first delta (`start`, with the prompt's `progress` for return_progress);
- text: `reasoning` and/or `content` (content "" only when it carries token `probs`);
- tool calls: `tool_calls`, sent whole when the reply ends;
- finish: `finish_reason` and the engine's `result` (usage, timings, stop word).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..engine.task import CompletionResult, PartialResult, TokenInfo
from . import reasoning
from .tools import ToolPlan, new_call_id


@dataclass
class ChatRun:
    """One chat request on its way through the engine: what reading its reply needs."""

    request: Any  # protocol.ChatCompletionRequest
    tool_plan: ToolPlan | None = None
    reasoning: bool = False  # split <think> reasoning out of the reply
    thinking: bool = False  # the reply starts inside a <think> block (the prompt opened it)

    @property
    def stream(self) -> bool:
        return self.request.stream


@dataclass(slots=True)
class ToolCall:
    """A tool call of a reply (whole here: the reply is parsed when it ends)."""

    index: int
    id: str
    name: str
    arguments: str  # JSON text


@dataclass(slots=True)
class ReplyDelta:
    index: int  # the choice
    reasoning: str = ""
    content: str | None = None
    tool_calls: list[ToolCall] | None = None
    probs: list[TokenInfo] | None = None  # the tokens this delta covers (logprobs)
    finish_reason: str | None = None
    result: CompletionResult | None = None  # with the finish
    start: bool = False
    progress: dict | None = None  # with a start: the prompt's progress (return_progress)


@dataclass
class ReplyMessage:
    """A finished reply: what every API's non-streamed response is rendered from."""

    reasoning: str | None
    content: str | None
    tool_calls: list[ToolCall]
    finish_reason: str


def final_message(run: ChatRun, text: str, finish: str) -> ReplyMessage:
    """The whole reply of one choice: reasoning split, tool calls parsed."""
    thoughts, content = reasoning.split(text, run.thinking) if run.reasoning else (None, text)
    if run.tool_plan is None:
        return ReplyMessage(thoughts, content, [], finish)
    content, calls = run.tool_plan.parse(content)
    return ReplyMessage(thoughts, content, _calls(calls), "tool_calls" if calls else finish)


def _calls(parsed) -> list[ToolCall]:
    return [ToolCall(k, new_call_id(), c.name, c.arguments) for k, c in enumerate(parsed)]


class ReplyStream:
    """The deltas of the `n` choices of one streamed chat request.

    Without tools or thinking, every piece goes out as it comes. The reasoning splitter holds
    back a `<think>` tag in progress; with tools, content that may turn out to be a call is
    held until the reply ends, and the held tokens' probabilities go with the next delta.
    """

    def __init__(self, run: ChatRun, n: int):
        self.plan = run.tool_plan
        self.started = [False] * n
        self.splitters = [reasoning.Splitter(run.thinking) for _ in range(n)] if run.reasoning else None
        self.text = [""] * n  # tools: each choice's reply so far (after the reasoning)
        self.shown = [""] * n  # tools: the content already sent
        self.held: list[list[TokenInfo]] = [[] for _ in range(n)]  # probabilities not yet sent

    def feed(self, index: int, kind: str, payload: Any) -> list[ReplyDelta]:
        if kind == "progress":  # return_progress: the start, with the prompt's progress
            self.started[index] = True
            return [ReplyDelta(index, start=True, progress=payload)]
        out = []
        if not self.started[index]:
            self.started[index] = True
            out.append(ReplyDelta(index, start=True))
        splitter = self.splitters[index] if self.splitters is not None else None
        if kind == "partial":
            part: PartialResult = payload
            if self.plan is None and (splitter is None or splitter.phase == "content"):
                # the plain stream (also once the thinking is over): every piece as it comes
                if part.content or part.probs:
                    out.append(ReplyDelta(index, content=part.content, probs=part.probs))
                return out
            self.held[index] += part.probs
            thoughts, content = splitter.push(part.content) if splitter else ("", part.content)
            self._text(out, index, thoughts, content)
        elif kind == "final":
            thoughts, content = splitter.finish() if splitter else ("", "")
            self._text(out, index, thoughts, content, final=payload)
        return out

    def _text(self, out: list[ReplyDelta], index: int, thoughts: str, content: str,
              final: CompletionResult | None = None) -> None:
        plan = self.plan
        calls = []
        if plan is None:
            new = content
        elif final is None:  # content that cannot turn out to be a tool call
            shown = self.shown[index]
            text = self.text[index] = self.text[index] + content
            visible = plan.visible(text)
            new = visible[len(shown):] if len(visible) > len(shown) and visible.startswith(shown) else ""
            self.shown[index] = shown + new
        else:
            text = self.text[index] = self.text[index] + content
            whole, calls = plan.parse(text)
            new = plan.rest(text, whole, calls, self.shown[index])
        if thoughts or new:
            out.append(ReplyDelta(index, reasoning=thoughts, content=new or None, probs=self._held(index)))
        if final is not None:
            if calls:
                out.append(ReplyDelta(index, tool_calls=_calls(calls), probs=self._held(index)))
            out.append(ReplyDelta(index, finish_reason="tool_calls" if calls else final.finish_reason, result=final,
                                  probs=self._held(index)))  # the tokens of held-back tags

    def _held(self, index: int) -> list[TokenInfo] | None:
        probs, self.held[index] = self.held[index], []
        return probs or None
