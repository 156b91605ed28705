"""POST /v1/messages and /v1/messages/count_tokens: Anthropic's Messages API, as today's llama.cpp.

A request is translated to a chat completion (`openai_chat`: same templates, tools, images,
reasoning) and the reply back: `content` blocks (`thinking`, `text`, `tool_use`),
`stop_reason` and `usage`; a stream is Anthropic's event sequence (`message_start`,
`content_block_start/delta/stop`, `message_delta`, `message_stop`), rendered from the
reply deltas (`reply`).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from typing import Any

from ..engine.task import CompletionResult, Task
from ..errors import invalid
from .chat_prompt import parse_and_render
from .chat_service import ChatService
from .openai_common import usage
from .reply import ChatRun, ReplyDelta, ReplyStream, final_message
from . import openai_chat

STOP_REASONS = {"length": "max_tokens", "tool_calls": "tool_use"}


# -- request ---------------------------------------------------------------------


def _text_of(value: Any, where: str) -> str:
    """A string, or a list of text blocks, as one string."""
    if isinstance(value, str):
        return value
    if isinstance(value, list):
        parts = []
        for k, block in enumerate(value):
            if not isinstance(block, dict) or block.get("type") != "text" or not isinstance(block.get("text"), str):
                raise invalid(f"'{where}.{k}' must be a text block ({{\"type\": \"text\", \"text\": ...}})")
            parts.append(block["text"])
        return "\n".join(parts)
    raise invalid(f"'{where}' must be a string or an array of text blocks")


def _image_part(block: dict, where: str) -> dict:
    source = block.get("source") or {}
    if source.get("type") == "base64" and isinstance(source.get("data"), str):
        media = source.get("media_type") or "image/png"
        return {"type": "image_url", "image_url": {"url": f"data:{media};base64,{source['data']}"}}
    if source.get("type") == "url":
        return {"type": "image_url", "image_url": {"url": source.get("url")}}  # refused with a reason downstream
    raise invalid(f"'{where}.source' must be {{\"type\": \"base64\", \"media_type\": ..., \"data\": ...}}")


def _messages(messages: Any) -> list[dict]:
    """Anthropic messages as chat messages: tool_use -> tool_calls, tool_result -> tool messages."""
    if not isinstance(messages, list) or not messages:
        raise invalid("'messages' must be a non-empty array")
    out: list[dict] = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ("user", "assistant"):
            raise invalid(f"'messages.{i}.role' must be 'user' or 'assistant'")
        content = m.get("content")
        if isinstance(content, str):
            out.append({"role": m["role"], "content": content})
            continue
        if not isinstance(content, list):
            raise invalid(f"'messages.{i}.content' must be a string or an array of content blocks")
        parts: list[dict] = []
        calls: list[dict] = []
        for j, block in enumerate(content):
            where = f"messages.{i}.content.{j}"
            kind = block.get("type") if isinstance(block, dict) else None
            if kind == "text":
                parts.append({"type": "text", "text": _text_of([block], where)})
            elif kind == "image" and m["role"] == "user":
                parts.append(_image_part(block, where))
            elif kind == "tool_use" and m["role"] == "assistant":
                if not isinstance(block.get("name"), str) or not isinstance(block.get("input", {}), dict):
                    raise invalid(f"'{where}' must have a 'name' and an object 'input'")
                calls.append({"id": block.get("id") or f"toolu_{uuid.uuid4().hex[:24]}", "type": "function",
                              "function": {"name": block["name"], "arguments": json.dumps(block.get("input", {}))}})
            elif kind == "tool_result" and m["role"] == "user":
                result = block.get("content", "")
                if isinstance(result, list):  # text and image blocks (a vision tool's picture reaches the model)
                    content: Any = [_image_part(b, f"{where}.content.{n}") if isinstance(b, dict) and b.get("type") == "image"
                                    else {"type": "text", "text": _text_of([b], f"{where}.content.{n}")}
                                    for n, b in enumerate(result)]
                elif isinstance(result, str):
                    content = result
                else:
                    raise invalid(f"'{where}.content' must be a string or an array of text and image blocks")
                if block.get("is_error"):
                    content = [{"type": "text", "text": "Error:"}, *content] if isinstance(content, list) else f"Error: {content}"
                out.append({"role": "tool", "tool_call_id": block.get("tool_use_id"), "content": content})
            elif kind in ("thinking", "redacted_thinking") and m["role"] == "assistant":
                continue  # earlier thoughts are not sent back to the model
            else:
                raise invalid(f"'{where}' has type {kind!r}, which a {m['role']} message cannot carry here")
        if calls:
            text = "".join(p["text"] for p in parts if p["type"] == "text")
            out.append({"role": "assistant", "content": text or None, "tool_calls": calls})
        elif parts:
            out.append({"role": m["role"], "content": parts})
    return out


def _tools(body: dict) -> dict:
    out: dict[str, Any] = {}
    tools = body.get("tools")
    if tools:
        if not isinstance(tools, list):
            raise invalid("'tools' must be an array")
        converted = []
        for k, t in enumerate(tools):
            if not isinstance(t, dict) or not isinstance(t.get("name"), str):
                raise invalid(f"'tools.{k}' must be an object with a 'name' and an 'input_schema'")
            if t.get("type") not in (None, "custom"):
                raise invalid(f"'tools.{k}' is a server tool of type {t['type']!r}, which this server does not run")
            fn = {"name": t["name"], "parameters": t.get("input_schema") or {"type": "object"}}
            if t.get("description"):
                fn["description"] = t["description"]
            converted.append({"type": "function", "function": fn})
        out["tools"] = converted
    choice = body.get("tool_choice")
    if choice is not None:
        if not isinstance(choice, dict) or choice.get("type") not in ("auto", "any", "tool", "none"):
            raise invalid("'tool_choice' must be {\"type\": \"auto\" | \"any\" | \"tool\" | \"none\"}")
        kind = choice["type"]
        out["tool_choice"] = {"auto": "auto", "any": "required", "none": "none"}.get(kind) or \
            {"type": "function", "function": {"name": choice.get("name")}}
        if choice.get("disable_parallel_tool_use"):
            out["parallel_tool_calls"] = False
    return out


def chat_body(body: dict) -> dict:
    """The chat-completion body of an Anthropic Messages request."""
    max_tokens = body.get("max_tokens")
    if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or max_tokens < 1:
        raise invalid("'max_tokens' is required: a positive integer")
    messages = _messages(body.get("messages"))
    if body.get("system") is not None:
        messages.insert(0, {"role": "system", "content": _text_of(body["system"], "system")})
    out: dict[str, Any] = {"messages": messages, "max_tokens": max_tokens, "stream": bool(body.get("stream", False)),
                           **_tools(body)}
    for key in ("temperature", "top_p", "top_k"):
        if body.get(key) is not None:
            out[key] = body[key]
    if body.get("stop_sequences") is not None:
        out["stop"] = body["stop_sequences"]
    thinking = body.get("thinking")
    if isinstance(thinking, dict) and thinking.get("type") == "disabled":
        out["chat_template_kwargs"] = {"enable_thinking": False}
    for key in ("cache_prompt", "id_slot", "seed", "min_p", "grammar", "lora", "n_probs"):  # llama.cpp extras
        if key in body:
            out[key] = body[key]
    return out


@dataclass
class MessagesRequest:
    model: str
    stream: bool
    run: ChatRun  # the chat run it became


def build(chat: ChatService, body: dict) -> tuple[MessagesRequest, list[Task]]:
    run, tasks = openai_chat.build(chat, chat_body(body))
    model = body.get("model") if isinstance(body.get("model"), str) else chat.served_model()
    return MessagesRequest(model, run.stream, run), tasks


def count_tokens_prompt(chat: ChatService, body: dict) -> str:
    return parse_and_render(chat, chat_body({**body, "max_tokens": body.get("max_tokens") or 1}))[1]


# -- response -----------------------------------------------------------------------


def _stop(res: CompletionResult, finish: str) -> tuple[str, str | None]:
    if finish == "tool_calls":  # an agent loop must run the tools, whatever ended the reply
        return "tool_use", None
    if res.stopped_word:
        return "stop_sequence", res.stopping_word
    return STOP_REASONS.get(finish, "end_turn"), None


def _usage(tasks: list[Task], results: list[CompletionResult]) -> dict:
    u = usage(tasks, results)
    cached = u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details else 0
    return {"input_tokens": u.prompt_tokens - cached, "output_tokens": u.completion_tokens,
            "cache_read_input_tokens": cached, "cache_creation_input_tokens": 0}


def new_id() -> str:
    return f"msg_{uuid.uuid4().hex[:24]}"


def response(chat: ChatService, areq: MessagesRequest, tasks: list[Task], results: list[CompletionResult]) -> dict:
    (res,) = results
    msg = final_message(areq.run, res.content, res.finish_reason)
    blocks: list[dict] = []
    if msg.reasoning:
        blocks.append({"type": "thinking", "thinking": msg.reasoning, "signature": ""})
    if msg.content:
        blocks.append({"type": "text", "text": msg.content})
    for call in msg.tool_calls:
        blocks.append({"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}", "name": call.name,
                       "input": json.loads(call.arguments)})
    stop_reason, stop_sequence = _stop(res, msg.finish_reason)
    return {"id": new_id(), "type": "message", "role": "assistant", "model": areq.model, "content": blocks,
            "stop_reason": stop_reason, "stop_sequence": stop_sequence, "usage": _usage(tasks, results)}


class MessagesStream:
    """Anthropic's stream events, rendered from the reply deltas of the one task."""

    def __init__(self, chat: ChatService, areq: MessagesRequest, tasks: list[Task]):
        self.areq = areq
        self.tasks = tasks
        self.deltas = ReplyStream(areq.run, len(tasks))
        self.id = new_id()
        self.block: str | None = None  # the open content block's kind
        self.index = -1
        self.started = False

    def _input_usage(self) -> dict:
        """The prompt's usage, known once the task has its slot (before its first event is sent)."""
        task = self.tasks[0]
        cached = max(0, task.n_cached - task.n_system)
        prompt = max(0, len(task.tokens or []) - task.n_system)
        return {"input_tokens": prompt - cached, "output_tokens": 0, "cache_read_input_tokens": cached,
                "cache_creation_input_tokens": 0}

    def _open(self, kind: str, start: dict) -> list[dict]:
        out = self._close()
        self.block, self.index = kind, self.index + 1
        return out + [{"type": "content_block_start", "index": self.index, "content_block": start}]

    def _close(self) -> list[dict]:
        if self.block is None:
            return []
        self.block = None
        return [{"type": "content_block_stop", "index": self.index}]

    def render(self, index: int, kind: str, payload: Any) -> list[dict]:
        out: list[dict] = []
        if not self.started:
            self.started = True
            out.append({"type": "message_start", "message": {
                "id": self.id, "type": "message", "role": "assistant", "model": self.areq.model, "content": [],
                "stop_reason": None, "stop_sequence": None, "usage": self._input_usage()}})
        for d in self.deltas.feed(index, kind, payload):
            out += self.render_delta(d)
        return out

    def render_delta(self, d: ReplyDelta) -> list[dict]:
        """The events of one reply delta."""
        out: list[dict] = []
        if d.reasoning:
            if self.block != "thinking":
                out += self._open("thinking", {"type": "thinking", "thinking": "", "signature": ""})
            out.append({"type": "content_block_delta", "index": self.index,
                        "delta": {"type": "thinking_delta", "thinking": d.reasoning}})
        if d.content:
            if self.block != "text":
                out += self._open("text", {"type": "text", "text": ""})
            out.append({"type": "content_block_delta", "index": self.index,
                        "delta": {"type": "text_delta", "text": d.content}})
        for call in d.tool_calls or ():
            out += self._open("tool_use", {"type": "tool_use", "id": f"toolu_{uuid.uuid4().hex[:24]}",
                                           "name": call.name, "input": {}})
            out.append({"type": "content_block_delta", "index": self.index,
                        "delta": {"type": "input_json_delta", "partial_json": call.arguments}})
        if d.finish_reason:
            stop_reason, stop_sequence = _stop(d.result, d.finish_reason)
            used = _usage(self.tasks, [d.result])
            out += self._close()
            out.append({"type": "message_delta", "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                        "usage": used})
            out.append({"type": "message_stop"})
        return out

    def tail(self) -> list[dict]:
        return []


Stream = MessagesStream  # the streaming renderer of this endpoint family (http.routes_openai.serve_generation)


def event_frame(obj: Any) -> bytes:
    """Anthropic SSE: `event: <type>` before each `data:` line (an error becomes an `error` event)."""
    if "type" not in obj and "error" in obj:
        obj = {"type": "error", "error": {"type": obj["error"].get("type"), "message": obj["error"].get("message")}}
    data = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return f"event: {obj.get('type', 'message')}\ndata: {data}\n\n".encode()
