"""Reading JSON request bodies with client-friendly errors.

A body must be UTF-8 JSON without lone surrogates (`"\\ud800"` escapes): strings reach
llama.cpp as UTF-8, where they cannot be encoded (a grammar holding one used to leave its
request unanswered). Nesting is bounded, and large bodies are parsed off the event loop.
"""

from __future__ import annotations

import codecs
import json
import re
from typing import Any

from fastapi import Request

from ..errors import invalid

MAX_DEPTH = 128  # arrays and objects inside each other
OFF_LOOP_BYTES = 256 << 10  # bodies larger than this are parsed on a worker thread
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F][0-9a-fA-F]{2}")


async def json_body(request: Request, *, require_object: bool = True) -> Any:
    raw = await request.body()
    if not raw.strip():
        if require_object:
            raise invalid("request body is empty: expected a JSON object")
        return None
    if len(raw) > OFF_LOOP_BYTES:
        from ..serving.limits import off_loop

        data = await off_loop(parse_json, raw)
    else:
        data = parse_json(raw)
    if require_object and not isinstance(data, dict):
        raise invalid("request body must be a JSON object")
    return data


def parse_json(raw: bytes) -> Any:
    """Parse a JSON body; a 400 for invalid UTF-8, invalid JSON, lone surrogates or deep nesting."""
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    try:
        text = raw.decode("utf-8")  # strict: also refuses UTF-8-encoded surrogates
    except UnicodeDecodeError as exc:
        raise invalid(f"request body is not valid UTF-8 (byte {exc.start}): send JSON in UTF-8") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise invalid(f"request body is not valid JSON: {exc}") from None
    except RecursionError:
        raise invalid(f"request body nests arrays and objects deeper than {MAX_DEPTH} levels") from None
    check_structure(data, surrogates=_SURROGATE_ESCAPE.search(text) is not None)
    return data


def check_structure(data: Any, *, surrogates: bool = True) -> None:
    """400 when `data` nests deeper than MAX_DEPTH or (with `surrogates`) holds a lone surrogate."""
    stack: list[tuple[Any, str, int]] = [(data, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if isinstance(node, (dict, list)):
            if depth >= MAX_DEPTH:
                raise invalid(f"request body nests arrays and objects deeper than {MAX_DEPTH} levels (at '{path}')")
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, value in items:
                where = f"{path}.{key}" if path else str(key)
                if surrogates and isinstance(key, str):
                    _check_text(key, where)
                stack.append((value, where, depth + 1))
        elif surrogates and isinstance(node, str):
            _check_text(node, path)


def _check_text(s: str, where: str) -> None:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise invalid(f"'{where or 'body'}' holds a lone UTF-16 surrogate (\\u{ord(s[exc.start]):04x}), "
                      "which is not valid Unicode text") from None
