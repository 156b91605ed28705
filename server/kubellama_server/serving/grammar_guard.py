"""Bounds on grammars and JSON schemas, checked before anything reaches llama.cpp.

llama.cpp's GBNF parser recurses once per nested group without a depth limit, so a
grammar of 100,000 nested parentheses (or a JSON schema whose `maxLength` becomes
that many nested optional groups) overflows the stack and kills the process. These
checks are pure Python on the request's own data: size, group nesting depth, and the
repetition counts of a schema, each a 400 naming the limit.
"""

from __future__ import annotations

import json
import re
from typing import Any

from ..errors import invalid

# schema keywords whose value repeats a rule that many times in the converted grammar
REPEAT_KEYS = ("minLength", "maxLength", "minItems", "maxItems", "minContains", "maxContains",
               "minProperties", "maxProperties")
_REPETITION = re.compile(r"\{\s*(\d+)\s*(?:,\s*(\d*)\s*)?\}")


def grammar_shape(gbnf: str) -> tuple[int, int]:
    """(deepest nesting of `( ... )` groups, product of the `{m,n}` repetition counts), outside
    string literals, character classes and comments. llama.cpp expands `x{m,n}` into that many
    rules, so the product bounds how much a grammar can grow once parsed."""
    depth = deepest = 0
    expansion = 1
    i, n = 0, len(gbnf)
    while i < n:
        c = gbnf[i]
        if c == '"' or c == "[":
            close = '"' if c == '"' else "]"
            i += 1
            while i < n and gbnf[i] != close:
                i += 2 if gbnf[i] == "\\" else 1
        elif c == "#":
            while i < n and gbnf[i] not in "\r\n":
                i += 1
        elif c == "(":
            depth += 1
            deepest = max(deepest, depth)
        elif c == ")":
            depth = max(0, depth - 1)
        elif c == "{":
            m = _REPETITION.match(gbnf, i)
            if m is not None:
                expansion = min(expansion * max(1, int(m.group(1)), int(m.group(2) or 0)), 1 << 40)
                i = m.end() - 1
        i += 1
    return deepest, expansion


def grammar_depth(gbnf: str) -> int:
    return grammar_shape(gbnf)[0]


def check_grammar(gbnf: str, *, max_bytes: int, max_depth: int, what: str = "'grammar'") -> None:
    """400 when a grammar is larger, nests deeper or repeats more than the server allows."""
    size = len(gbnf.encode("utf-8", "surrogatepass"))
    if size > max_bytes:
        raise invalid(f"{what} is {size} bytes; this server accepts grammars up to {max_bytes} bytes (--max-grammar-bytes)")
    depth, expansion = grammar_shape(gbnf)
    if depth > max_depth:
        raise invalid(f"{what} nests groups {depth} deep; this server accepts up to {max_depth} (--max-grammar-depth)")
    if expansion > max_bytes:
        raise invalid(f"{what} repeats too much: its {{m,n}} repetitions expand to {expansion} copies, more than "
                      f"{max_bytes} (--max-grammar-bytes)")


def _pattern_expansion(pattern: str) -> int:
    """An upper bound of how many times a regex pattern's repetitions multiply its grammar."""
    total = 1
    for m in _REPETITION.finditer(pattern):
        low, high = int(m.group(1)), m.group(2)
        total *= max(1, low, int(high) if high else 0)
        if total > 1 << 40:
            break
    return total


def check_schema(schema: Any, *, max_depth: int, max_bytes: int, what: str = "'json_schema'") -> None:
    """400 when a schema asks for more repetitions than its grammar could hold.

    The converter nests one optional group per repetition above the minimum (`maxLength`,
    `maxItems`, ...: bounded by the grammar depth) and writes out the minimum (each at least
    one byte: bounded by the grammar size); both are refused before the conversion builds them.
    """
    stack: list[tuple[Any, str]] = [(schema, "schema")]
    while stack:
        node, path = stack.pop()
        if isinstance(node, list):
            stack.extend((item, f"{path}[{i}]") for i, item in enumerate(node))
            continue
        if not isinstance(node, dict):
            continue
        for key, value in node.items():
            if key in REPEAT_KEYS and isinstance(value, (int, float)) and not isinstance(value, bool):
                bound, flag = (max_depth, "--max-grammar-depth") if key.startswith("max") else (max_bytes, "--max-grammar-bytes")
                if value > bound:
                    raise invalid(f"{what} {path}.{key} is {value}: this server converts schemas with {key} up to "
                                  f"{bound} ({flag}); lower it")
            if key == "pattern" and isinstance(value, str) and _pattern_expansion(value) > max_depth:
                raise invalid(f"{what} {path}.pattern repeats too much ({value[:80]!r}): its grammar would nest "
                              f"deeper than {max_depth} (--max-grammar-depth)")
            if key not in ("const", "enum", "default", "examples"):
                stack.append((value, f"{path}.{key}"))


def schema_key(schema: Any) -> str:
    """A stable key to convert one schema once for the `n` tasks of a request."""
    return json.dumps(schema, sort_keys=True)
