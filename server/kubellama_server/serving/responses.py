"""POST /v1/responses: OpenAI's Responses API (stateless), as today's llama.cpp serves it.

A request is translated to a chat completion (`openai_chat`: templates, tools, images,
reasoning) and the result back to `output` items: `reasoning`, `message` (`output_text`)
and `function_call`. A stream is the Responses event sequence (`response.created`,
`response.output_item.added`, `response.output_text.delta`, ..., `response.completed`),
rendered from the reply deltas (`reply`). Nothing is stored: `previous_response_id` is refused.
"""

from __future__ import annotations

import json
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from ..engine.task import CompletionResult, Task
from ..errors import invalid
from .chat_service import ChatService
from .openai_common import usage
from .reply import ChatRun, ReplyDelta, ReplyStream, final_message
from . import openai_chat


def _id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex[:24]}"


# -- request ---------------------------------------------------------------------


def _parts(content: Any, where: str) -> str | list[dict]:
    if isinstance(content, str):
        return content
    if not isinstance(content, list):
        raise invalid(f"'{where}' must be a string or an array of content parts")
    out: list[dict] = []
    for k, part in enumerate(content):
        kind = part.get("type") if isinstance(part, dict) else None
        if kind in ("input_text", "output_text", "text") and isinstance(part.get("text"), str):
            out.append({"type": "text", "text": part["text"]})
        elif kind == "input_image":
            url = part.get("image_url")
            if not isinstance(url, str):
                raise invalid(f"'{where}.{k}' needs an 'image_url' (a data:image/...;base64,... URL); file ids are not kept")
            out.append({"type": "image_url", "image_url": {"url": url}})
        else:
            raise invalid(f"'{where}.{k}' has type {kind!r}: use input_text or input_image")
    return out


def _messages(body: dict) -> list[dict]:
    value = body.get("input")
    if isinstance(value, str):
        items: list = [{"role": "user", "content": value}]
    elif isinstance(value, list) and value:
        items = value
    else:
        raise invalid("'input' must be a string or a non-empty array of items")
    out: list[dict] = []
    if body.get("instructions") is not None:
        if not isinstance(body["instructions"], str):
            raise invalid("'instructions' must be a string")
        out.append({"role": "system", "content": body["instructions"]})
    for i, item in enumerate(items):
        if not isinstance(item, dict):
            raise invalid(f"'input.{i}' must be an object")
        kind = item.get("type", "message")
        if kind == "message":
            role = item.get("role")
            if role not in ("user", "assistant", "system", "developer"):
                raise invalid(f"'input.{i}.role' must be user, assistant, system or developer")
            out.append({"role": role, "content": _parts(item.get("content"), f"input.{i}.content")})
        elif kind == "function_call":
            if not isinstance(item.get("name"), str) or not isinstance(item.get("arguments", ""), str):
                raise invalid(f"'input.{i}' (function_call) needs a 'name' and JSON 'arguments'")
            call = {"id": item.get("call_id") or _id("call"), "type": "function",
                    "function": {"name": item["name"], "arguments": item.get("arguments") or "{}"}}
            if out and out[-1]["role"] == "assistant":  # its text, or parallel calls: one assistant turn
                out[-1].setdefault("tool_calls", []).append(call)
            else:
                out.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == "function_call_output":
            output = item.get("output")
            content = output if isinstance(output, str) else _parts(output, f"input.{i}.output") \
                if isinstance(output, list) else json.dumps(output)
            out.append({"role": "tool", "tool_call_id": item.get("call_id"), "content": content})
        elif kind == "reasoning":
            continue  # earlier thoughts are not sent back to the model
        else:
            raise invalid(f"'input.{i}' has type {kind!r}, which this server does not take")
    return out


def _tools(body: dict) -> dict:
    out: dict[str, Any] = {}
    if body.get("tools"):
        if not isinstance(body["tools"], list):
            raise invalid("'tools' must be an array")
        converted = []
        for k, t in enumerate(body["tools"]):
            if not isinstance(t, dict) or t.get("type") != "function" or not isinstance(t.get("name"), str):
                raise invalid(f"'tools.{k}' must be a function tool ({{\"type\": \"function\", \"name\": ...}}); "
                              "built-in tools (web search, files, ...) do not run here")
            fn = {"name": t["name"], "parameters": t.get("parameters") or {"type": "object"}}
            if t.get("description"):
                fn["description"] = t["description"]
            converted.append({"type": "function", "function": fn})
        out["tools"] = converted
    choice = body.get("tool_choice")
    if isinstance(choice, dict):
        if choice.get("type") != "function" or not isinstance(choice.get("name"), str):
            raise invalid("'tool_choice' must be \"auto\", \"none\", \"required\" or {\"type\": \"function\", \"name\": ...}")
        out["tool_choice"] = {"type": "function", "function": {"name": choice["name"]}}
    elif choice is not None:
        out["tool_choice"] = choice
    if "parallel_tool_calls" in body:
        out["parallel_tool_calls"] = body["parallel_tool_calls"]
    return out


def _format(body: dict) -> dict:
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if not fmt or fmt.get("type") == "text":
        return {}
    if fmt.get("type") == "json_object":
        return {"response_format": {"type": "json_object"}}
    if fmt.get("type") == "json_schema":
        return {"response_format": {"type": "json_schema", "json_schema": {"name": fmt.get("name"), "schema": fmt.get("schema")}}}
    raise invalid("'text.format.type' must be text, json_object or json_schema")


def chat_body(body: dict) -> dict:
    if body.get("previous_response_id"):
        raise invalid("'previous_response_id' is not supported: this server keeps no responses; "
                      "send the whole conversation in 'input'")
    out: dict[str, Any] = {"messages": _messages(body), "stream": bool(body.get("stream", False)),
                           **_tools(body), **_format(body)}
    if body.get("max_output_tokens") is not None:
        out["max_tokens"] = body["max_output_tokens"]
    for key in ("temperature", "top_p", "top_k", "min_p", "seed", "cache_prompt", "id_slot", "lora", "grammar"):
        if body.get(key) is not None:
            out[key] = body[key]
    return out


@dataclass
class ResponsesRequest:
    body: dict
    model: str
    stream: bool
    run: ChatRun  # the chat run it became
    created: int = field(default_factory=lambda: int(time.time()))
    id: str = field(default_factory=lambda: _id("resp"))


def build(chat: ChatService, body: dict) -> tuple[ResponsesRequest, list[Task]]:
    run, tasks = openai_chat.build(chat, chat_body(body))
    model = body.get("model") if isinstance(body.get("model"), str) else chat.served_model()
    return ResponsesRequest(body, model, run.stream, run), tasks


# -- response -----------------------------------------------------------------------


def _message(text: str, item_id: str | None = None, status: str = "completed") -> dict:
    return {"type": "message", "id": item_id or _id("msg"), "status": status, "role": "assistant",
            "content": [{"type": "output_text", "text": text, "annotations": [], "logprobs": []}]}


def _reasoning(text: str, item_id: str | None = None) -> dict:
    return {"type": "reasoning", "id": item_id or _id("rs"), "summary": [],
            "content": [{"type": "reasoning_text", "text": text}]}


def _function_call(name: str, arguments: str, item_id: str | None = None, status: str = "completed") -> dict:
    return {"type": "function_call", "id": item_id or _id("fc"), "call_id": _id("call"), "name": name,
            "arguments": arguments, "status": status}


def envelope(rreq: ResponsesRequest, output: list[dict], status: str, usage: dict | None,
             incomplete: str | None = None) -> dict:
    b = rreq.body
    return {
        "id": rreq.id, "object": "response", "created_at": rreq.created, "model": rreq.model, "status": status,
        "error": None, "incomplete_details": {"reason": incomplete} if incomplete else None,
        "instructions": b.get("instructions"), "max_output_tokens": b.get("max_output_tokens"),
        "metadata": b.get("metadata") or {}, "output": output,
        "parallel_tool_calls": b.get("parallel_tool_calls", True), "temperature": b.get("temperature"),
        "top_p": b.get("top_p"), "tool_choice": b.get("tool_choice", "auto"), "tools": b.get("tools") or [],
        "text": b.get("text") or {"format": {"type": "text"}}, "truncation": "disabled", "usage": usage,
    }


def _usage(tasks: list[Task], results: list[CompletionResult]) -> dict:
    u = usage(tasks, results)
    cached = u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details else 0
    return {"input_tokens": u.prompt_tokens, "input_tokens_details": {"cached_tokens": cached},
            "output_tokens": u.completion_tokens, "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": u.total_tokens}


def response(chat: ChatService, rreq: ResponsesRequest, tasks: list[Task], results: list[CompletionResult]) -> dict:
    (res,) = results
    msg = final_message(rreq.run, res.content, res.finish_reason)
    output: list[dict] = []
    incomplete = "max_output_tokens" if msg.finish_reason == "length" else None
    if msg.reasoning:
        output.append(_reasoning(msg.reasoning))
    if msg.content:
        output.append(_message(msg.content, status="incomplete" if incomplete else "completed"))
    output += [_function_call(c.name, c.arguments) for c in msg.tool_calls]
    return envelope(rreq, output, "incomplete" if incomplete else "completed", _usage(tasks, results), incomplete)


class ResponsesStream:
    """The Responses event sequence, rendered from the reply deltas of the one task."""

    def __init__(self, chat: ChatService, rreq: ResponsesRequest, tasks: list[Task]):
        self.rreq = rreq
        self.tasks = tasks
        self.deltas = ReplyStream(rreq.run, len(tasks))
        self.seq = 0
        self.output: list[dict] = []  # finished items
        self.open: dict | None = None  # the item being written
        self.text = ""

    def _ev(self, kind: str, **fields) -> dict:
        self.seq += 1
        return {"type": kind, "sequence_number": self.seq - 1, **fields}

    def _close(self, keep_status: bool = False) -> list[dict]:
        item, self.open = self.open, None
        if item is None:
            return []
        n, out = len(self.output), []
        if item["type"] == "message":
            item["content"][0]["text"] = self.text
            part = item["content"][0]
            out.append(self._ev("response.output_text.done", item_id=item["id"], output_index=n, content_index=0,
                                text=self.text, logprobs=[]))
            out.append(self._ev("response.content_part.done", item_id=item["id"], output_index=n, content_index=0, part=part))
        elif item["type"] == "reasoning":
            item["content"][0]["text"] = self.text
            out.append(self._ev("response.reasoning_text.done", item_id=item["id"], output_index=n, content_index=0,
                                text=self.text))
        else:
            out.append(self._ev("response.function_call_arguments.done", item_id=item["id"], output_index=n,
                                name=item["name"], arguments=item["arguments"]))
        if "status" in item and not (keep_status and item["status"] == "incomplete"):
            item["status"] = "completed"
        out.append(self._ev("response.output_item.done", output_index=n, item=item))
        self.output.append(item)
        self.text = ""
        return out

    def _start(self, item: dict) -> list[dict]:
        out = self._close()
        self.open = item
        n = len(self.output)
        out.append(self._ev("response.output_item.added", output_index=n, item=json.loads(json.dumps(item))))
        if item["type"] == "message":
            out[-1]["item"]["content"] = []  # the part arrives with content_part.added, as OpenAI's
            out.append(self._ev("response.content_part.added", item_id=item["id"], output_index=n, content_index=0,
                                part={"type": "output_text", "text": "", "annotations": [], "logprobs": []}))
        return out

    def render(self, index: int, kind: str, payload: Any) -> list[dict]:
        out: list[dict] = []
        if self.seq == 0:
            out.append(self._ev("response.created", response=envelope(self.rreq, [], "in_progress", None)))
            out.append(self._ev("response.in_progress", response=envelope(self.rreq, [], "in_progress", None)))
        for d in self.deltas.feed(index, kind, payload):
            out += self.render_delta(d)
        return out

    def render_delta(self, d: ReplyDelta) -> list[dict]:
        """The events of one reply delta."""
        out: list[dict] = []
        n = len(self.output)
        if d.reasoning:
            if not self.open or self.open["type"] != "reasoning":
                out += self._start(_reasoning(""))
                n = len(self.output)
            self.text += d.reasoning
            out.append(self._ev("response.reasoning_text.delta", item_id=self.open["id"], output_index=n,
                                content_index=0, delta=d.reasoning))
        if d.content:
            if not self.open or self.open["type"] != "message":
                out += self._start(_message("", status="in_progress"))
                n = len(self.output)
            self.text += d.content
            out.append(self._ev("response.output_text.delta", item_id=self.open["id"], output_index=n,
                                content_index=0, delta=d.content, logprobs=[]))
        for call in d.tool_calls or ():
            out += self._start(_function_call(call.name, "", status="in_progress"))
            self.open["arguments"] = call.arguments
            out.append(self._ev("response.function_call_arguments.delta", item_id=self.open["id"],
                                output_index=len(self.output), delta=call.arguments))
        if d.finish_reason:
            incomplete = "max_output_tokens" if d.finish_reason == "length" else None
            if incomplete and self.open is not None and self.open["type"] == "message":
                self.open["status"] = "incomplete"
            out += self._close(keep_status=bool(incomplete))
            final = envelope(self.rreq, self.output, "incomplete" if incomplete else "completed",
                             _usage(self.tasks, [d.result]), incomplete)
            out.append(self._ev("response.incomplete" if incomplete else "response.completed", response=final))
        return out

    def tail(self) -> list[dict]:
        return []


Stream = ResponsesStream  # the streaming renderer of this endpoint family (http.routes_openai.serve_generation)


def event_frame(obj: Any) -> bytes:
    """Responses SSE: `event: <type>` before each `data:` line (an error becomes an `error` event)."""
    if "type" not in obj and "error" in obj:
        obj = {"type": "error", "code": obj["error"].get("type"), "message": obj["error"].get("message"), "param": None}
    data = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return f"event: {obj['type']}\ndata: {data}\n\n".encode()
