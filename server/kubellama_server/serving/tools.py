"""OpenAI tool calling (`tools`, `tool_choice`, `parallel_tool_calls`) on top of chat templates.

Two formats, chosen from the chat template:

- **hermes**: the template renders `tools` itself and the model answers with
  `<tool_call>{"name": ..., "arguments": {...}}</tool_call>` blocks (Qwen 2.5/3,
  Hermes 2/3 and other templates that contain `<tool_call>`).
- **generic**: any other template (Gemma's, ChatML, ...), as llama.cpp does: a system
  message lists the tools and the reply is JSON, `{"tool_calls": [...]}` or
  `{"response": "..."}`, held to that shape by a grammar.

`tool_choice: "required"` or a named function constrains the reply to tool calls with a
grammar in both formats, so even a small model returns arguments that match the schema.
"""

from __future__ import annotations

import json
import re
import secrets
import string
from dataclasses import dataclass
from typing import Any

from ..engine.sampling import schema_gbnf
from ..errors import invalid
from .. import protocol as P

HERMES, GENERIC = "hermes", "generic"
TAG = "<tool_call>"
_TOOL_CALL = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.S)


def tool_format(template_source: str) -> str:
    return HERMES if "<tool_call>" in template_source else GENERIC


def new_call_id() -> str:
    return "call_" + "".join(secrets.choice(string.ascii_letters + string.digits) for _ in range(24))


@dataclass
class ParsedCall:
    name: str
    arguments: str  # JSON text


@dataclass
class ToolPlan:
    """How one chat request uses its tools: rendering, output constraint and parsing."""

    format: str
    tools: list[dict[str, Any]]  # OpenAI tool objects
    required: bool  # the reply must be tool calls
    names: list[str]  # the functions it may call
    parallel: bool

    # -- prompt ---------------------------------------------------------------
    def template_kwargs(self) -> dict[str, Any]:
        return {"tools": self.tools} if self.format == HERMES else {}

    def messages(self, messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Messages for the template: tool calls and results in the format's shape."""
        out = [_with_parsed_arguments(m) for m in messages]
        if self.format == HERMES:
            return out
        out = [_generic_message(m) for m in out]
        intro = _generic_instructions(self.tools, self.parallel)
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": f"{out[0]['content']}\n\n{intro}"}
        else:
            out.insert(0, {"role": "system", "content": intro})
        return _merge_same_roles(out)

    # -- output constraint ---------------------------------------------------------
    def constraint(self) -> dict[str, Any]:
        """Native options (`grammar` or `json_schema`) that hold the reply to the format."""
        call, defs = self._call_schema()
        if self.format == GENERIC:
            calls: dict[str, Any] = {"type": "array", "items": call, "minItems": 1}
            if not self.parallel:
                calls["maxItems"] = 1
            wrapped = {"type": "object", "properties": {"tool_calls": calls}, "required": ["tool_calls"]}
            answer = {"type": "object", "properties": {"response": {"type": "string"}}, "required": ["response"]}
            schema = wrapped if self.required else {"anyOf": [wrapped, answer]}
            return {"json_schema": {**schema, **({"$defs": defs} if defs else {})}}
        if not self.required:
            return {}  # hermes + auto: free text, <tool_call> blocks parsed afterwards
        gbnf = schema_gbnf({**call, **({"$defs": defs} if defs else {})}, "a tool's 'parameters'")
        gbnf = re.sub(r"(?m)^root ::=", "tool-call ::=", gbnf)
        block = '"<tool_call>\\n" tool-call "\\n</tool_call>"'
        root = f"root ::= {block} (\"\\n\" {block})*" if self.parallel else f"root ::= {block}"
        return {"grammar": root + "\n" + gbnf}

    def _call_schema(self) -> tuple[dict[str, Any], dict[str, Any]]:
        """The schema of one call of an allowed function, and the `$defs` it needs at the root."""
        options, defs = [], {}
        for i, tool in enumerate(self.tools):
            fn = tool["function"]
            if fn["name"] not in self.names:
                continue
            params, own = _hoist_defs(fn.get("parameters") or {"type": "object"}, f"tool{i}-")
            defs.update(own)
            options.append({"type": "object", "properties": {"name": {"const": fn["name"]}, "arguments": params},
                            "required": ["name", "arguments"]})
        return (options[0] if len(options) == 1 else {"anyOf": options}), defs

    # -- output ---------------------------------------------------------------------
    def visible(self, text: str) -> str:
        """The content a reply in progress can show: never part of a tool call.

        Hermes: the text before a possible `<tool_call>`. Generic: the `response` string
        decoded so far, once the reply is `{"response": "...`; a call is shown when it ends.
        """
        if self.required:
            return ""
        if self.format == GENERIC:
            return _response_prefix(text)
        return text[:self.streamable(text)]

    def rest(self, text: str, content: str | None, calls: list[ParsedCall], shown: str) -> str:
        """The content still to send when the reply ends, after `shown` went out."""
        content = content or ""
        if not shown:
            return content
        if self.format == GENERIC:
            return content[len(shown):] if content.startswith(shown) else ""
        return without_calls(text)[len(shown):].rstrip() if calls else text[len(shown):]

    def streamable(self, text: str) -> int:
        """How much of a reply in progress can stream as content: never part of a tool call."""
        if self.format == GENERIC or self.required:
            return 0  # JSON or calls only: parsed when it ends
        safe = text.find(TAG)
        if safe < 0:
            safe = len(text)
            for k in range(min(len(TAG) - 1, len(text)), 0, -1):  # a tag may be starting
                if text.endswith(TAG[:k]):
                    safe = len(text) - k
                    break
        while safe > 0 and text[safe - 1].isspace():  # whitespace before a call is not part of the content
            safe -= 1
        return safe

    def parse(self, text: str) -> tuple[str | None, list[ParsedCall]]:
        """(content, tool calls) of a finished reply; text that is not a valid call stays content."""
        if self.format == GENERIC:
            return _parse_generic(text)
        calls: list[ParsedCall] = []
        for m in _TOOL_CALL.finditer(text):
            call = _call_of(_loads(m.group(1)))
            if call is None:
                return text, []  # a malformed block: hand the text over as it is
            calls.append(call)
        if not calls:
            return text, []
        content = without_calls(text).strip()
        return content or None, calls


def plan(req: P.ChatCompletionRequest, template_source: str) -> ToolPlan | None:
    """The request's tool plan; None when it has no tools or `tool_choice` is "none"."""
    if not req.tools or req.tool_choice == "none":
        if isinstance(req.tool_choice, dict) or req.tool_choice == "required":
            raise invalid("'tool_choice' needs 'tools'")
        return None
    if req.response_format is not None and req.response_format.type != "text":
        raise invalid("'response_format' cannot be combined with 'tools': each constrains the reply")
    tools = [t.model_dump(exclude_none=True) for t in req.tools]
    names = [t["function"]["name"] for t in tools]
    if len(set(names)) != len(names):
        raise invalid("'tools' has two functions with the same name")
    choice = req.tool_choice or "auto"
    required = choice == "required"
    if isinstance(choice, dict):
        name = (choice.get("function") or {}).get("name") if choice.get("type") == "function" else None
        if not isinstance(name, str):
            raise invalid("'tool_choice' must be \"none\", \"auto\", \"required\" or "
                          "{\"type\": \"function\", \"function\": {\"name\": ...}}")
        if name not in names:
            raise invalid(f"'tool_choice' names the function '{name}', which is not in 'tools'")
        names, required = [name], True  # one call of that function
    for t in tools:
        params = t["function"].get("parameters")
        if params is not None and params.get("type", "object") != "object":
            raise invalid(f"the 'parameters' of tool '{t['function']['name']}' must be a JSON schema of type object")
    parallel = req.parallel_tool_calls and not isinstance(choice, dict)
    return ToolPlan(tool_format(template_source), tools, required, names, parallel)


# -- helpers -------------------------------------------------------------------------


def _hoist_defs(params: dict[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Tool parameters nested inside the call schema keep their references: `$defs` (and
    `definitions`) move to the root under `prefix`, `#/...` refs are rewritten to match, and
    a reference to the parameters' own root (`#`) points at a copy of them."""
    own = {**(params.get("$defs") or {}), **(params.get("definitions") or {})}
    body = {k: v for k, v in params.items() if k not in ("$defs", "definitions")}

    def fix(node: Any) -> Any:
        if isinstance(node, list):
            return [fix(x) for x in node]
        if not isinstance(node, dict):
            return node
        out = {k: fix(v) for k, v in node.items()}
        ref = out.get("$ref")
        if isinstance(ref, str):
            parts = ref[2:].split("/") if ref.startswith("#/") else []
            if ref == "#":
                out["$ref"] = f"#/$defs/{prefix}root"
            elif len(parts) == 2 and parts[0] in ("$defs", "definitions"):
                out["$ref"] = f"#/$defs/{prefix}{parts[1]}"
            else:
                raise invalid(f"a tool's 'parameters' uses the reference {ref!r}; only #, #/$defs/NAME "
                              "and #/definitions/NAME are supported")
        return out

    body = fix(body)
    defs = {f"{prefix}{k}": fix(v) for k, v in own.items()}
    if _mentions(body, f"#/$defs/{prefix}root") or _mentions(defs, f"#/$defs/{prefix}root"):
        defs[f"{prefix}root"] = body
    return body, defs


def _mentions(node: Any, ref: str) -> bool:
    if isinstance(node, dict):
        return node.get("$ref") == ref or any(_mentions(v, ref) for v in node.values())
    if isinstance(node, list):
        return any(_mentions(v, ref) for v in node)
    return False


_RESPONSE_START = re.compile(r'\s*\{\s*"response"\s*:\s*"')


def _response_prefix(text: str) -> str:
    """The decoded part of a generic reply's `response` string so far ("" if it is not one)."""
    m = _RESPONSE_START.match(text)
    if m is None:
        return ""
    body, i, cut = text[m.end():], 0, 0
    while i < len(body):
        c = body[i]
        if c == '"':
            break  # the string ends
        if c == "\\":
            step = 6 if body[i + 1:i + 2] == "u" else 2
            if i + step > len(body):
                break  # an escape in progress
            if step == 6 and "d800" <= body[i + 2:i + 6].lower() <= "dbff":
                after = body[i + 6:i + 12]
                if len(after) < 6 and ("\\u".startswith(after) or after.startswith("\\u")):
                    break  # half a surrogate pair: the other half may be coming
            i += step
        else:
            i += 1
        cut = i
    try:
        return _no_lone_surrogates(json.loads('"' + body[:cut] + '"'))
    except ValueError:
        return ""


def _no_lone_surrogates(text: str) -> str:
    """JSON's \\uD83D without its pair decodes to a lone surrogate, which UTF-8 cannot carry."""
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def without_calls(text: str) -> str:
    """A Hermes reply with its <tool_call> blocks taken out."""
    return _TOOL_CALL.sub("", text)


def _loads(text: str) -> Any:
    try:
        return json.loads(text)
    except ValueError:
        return None


def _call_of(obj: Any) -> ParsedCall | None:
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    args = obj.get("arguments", obj.get("parameters", {}))
    if isinstance(args, str):  # already JSON text
        return ParsedCall(obj["name"], args) if isinstance(_loads(args), dict) else None
    if not isinstance(args, dict):
        return None
    return ParsedCall(obj["name"], _no_lone_surrogates(json.dumps(args, ensure_ascii=False)))


def _parse_generic(text: str) -> tuple[str | None, list[ParsedCall]]:
    obj = _loads(text)
    if isinstance(obj, dict):
        raw = obj.get("tool_calls", [obj["tool_call"]] if "tool_call" in obj else None)
        if isinstance(raw, list) and raw:
            calls = [_call_of(c) for c in raw]
            if all(calls):
                return None, calls  # type: ignore[return-value]
        if isinstance(obj.get("response"), str):
            return _no_lone_surrogates(obj["response"]), []
    if obj is None and _RESPONSE_START.match(text):  # an answer cut short (max_tokens): what it said so far
        return _response_prefix(text), []
    return text, []  # a call cut short, or not JSON: the raw reply


def _with_parsed_arguments(message: dict[str, Any]) -> dict[str, Any]:
    """Templates read `tool_call.function.arguments` as an object; OpenAI sends JSON text."""
    calls = message.get("tool_calls")
    if not calls:
        return message
    fixed = []
    for call in calls:
        fn = dict(call.get("function") or {})
        if isinstance(fn.get("arguments"), str):
            parsed = _loads(fn["arguments"])
            fn["arguments"] = parsed if isinstance(parsed, dict) else fn["arguments"]
        # some templates read tool_call.name / tool_call.arguments, others tool_call.function.*
        fixed.append({**call, "function": fn, "name": fn.get("name"), "arguments": fn.get("arguments")})
    return {**message, "tool_calls": fixed, "content": message.get("content") or ""}


def _generic_message(message: dict[str, Any]) -> dict[str, Any]:
    if message["role"] == "assistant" and message.get("tool_calls"):
        calls = [{"name": c["function"].get("name"), "arguments": c["function"].get("arguments"), "id": c.get("id")}
                 for c in message["tool_calls"]]
        return {"role": "assistant", "content": json.dumps({"tool_calls": calls}, ensure_ascii=False)}
    if message["role"] == "tool":
        result = {"tool_call_id": message.get("tool_call_id"), "content": message.get("content")}
        return {"role": "user", "content": json.dumps({"tool_response": result}, ensure_ascii=False)}
    return message


def _merge_same_roles(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Templates that demand alternating roles: tool results next to a user turn become one turn."""
    out: list[dict[str, Any]] = []
    for m in messages:
        if out and out[-1]["role"] == m["role"] and m["role"] in ("user", "system"):
            out[-1] = {**out[-1], "content": f"{out[-1]['content']}\n\n{m['content']}"}
        else:
            out.append(m)
    return out


def _generic_instructions(tools: list[dict[str, Any]], parallel: bool) -> str:
    functions = [t["function"] for t in tools]
    example = {"tool_calls": [{"name": "tool_name", "arguments": {"arg1": "some_value"}}]}
    return (
        "You can call any of the following tools to satisfy the user's requests: "
        + json.dumps(functions, indent=2, ensure_ascii=False)
        + "\n\nExample tool call syntax:\n\n" + json.dumps(example, indent=2)
        + ("\n\nYou may call several tools at once." if parallel else "\n\nCall at most one tool at a time.")
        + "\n\nRespond in JSON format, either with `tool_calls` (a request to call tools) or with `response` "
        "(a reply to the user's request). Tool results come back as `tool_response` objects."
    )
