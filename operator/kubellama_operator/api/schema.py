"""How the typed spec classes become the CRD's OpenAPI schema, and how the operator checks their rules.

A spec class is a pydantic model (`SpecModel`) whose docstring is its description; each field is declared
once with `field(description, default, **markers)`: its Python type gives the schema type, `markers`
(OpenAPI keywords such as `minimum`, `pattern`, `maxItems`; or `Markers(...)` inside `Annotated` for list
items) go into the schema as they are, and its default is the schema's default (a sub-object defaulted to
`{}` is declared with `default=SubClass`). `Rule`s (a class's `rules`, or a field's `rules=`) are the CEL
`x-kubernetes-validations` and, next to each, the operator's own check of the same rule on the typed
object (for API servers that did not run CEL). `openapi` renders a class; `check` runs the operator's side.
"""

from __future__ import annotations

import functools
import inspect
import json
import types
import typing
from dataclasses import dataclass, field as dc_field
from typing import Annotated, Any, Callable, ClassVar, Literal, Union

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic_core import PydanticUndefined

Schema = dict[str, Any]


@dataclass(frozen=True)
class Rule:
    """One validation rule: the CEL the API server runs, and the operator's check of the same rule.

    `ok(value)`: whether the typed value passes (None: only the API server can check it, e.g. a
    transition rule on `oldSelf`). `explain(value, where)`: the operator's message(s) when it more
    precisely names what is wrong (default: `message`). A rule without `cel` is the operator's alone
    (what CEL cannot check); `find(value, where)` then lists its problems itself.
    """

    message: str = ""
    cel: str | None = None
    ok: Callable[[Any], bool] | None = None
    explain: Callable[[Any, str], str | list[str]] | None = None
    find: Callable[[Any, str], list[str]] | None = None

    def problems(self, value: Any, where: str) -> list[str]:
        if self.find is not None:
            return self.find(value, where)
        if self.ok is None or self.ok(value):
            return []
        if self.explain is None:
            return [self.message]
        said = self.explain(value, where)
        return [said] if isinstance(said, str) else list(said)


@dataclass(frozen=True)
class Markers:
    """OpenAPI keywords for a type inside `Annotated` (list items, map values)."""

    schema: Schema = dc_field(default_factory=dict)

    def __init__(self, **schema: Any) -> None:
        object.__setattr__(self, "schema", schema)

    def __hash__(self) -> int:  # typing hashes Annotated metadata
        return hash(json.dumps(self.schema, sort_keys=True))


#: A Kubernetes quantity ("4Gi", 2): int-or-string with the API server's pattern.
Quantity = Annotated[Union[int, str], Markers(**{
    "anyOf": [{"type": "integer"}, {"type": "string"}], "maxLength": 64, "x-kubernetes-int-or-string": True,
    "pattern": r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|"
               r"(\.[0-9]+))))?$"})]
#: An object passed through as it is (e.g. a core Affinity).
Opaque = Annotated[dict[str, Any], Markers(**{"x-kubernetes-preserve-unknown-fields": True})]
Int64 = Annotated[int, Markers(format="int64")]


class SpecModel(BaseModel):
    """Base of every spec class: camelCase names on the wire, snake_case attributes; unknown fields ignored
    (the API server prunes them)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="ignore")

    #: CEL rules of the object (with the operator's checks).
    rules: ClassVar[tuple[Rule, ...]] = ()

    def to_dict(self) -> dict[str, Any]:
        """The object as the user wrote it (camelCase, only the fields that were set): for pass-through fields."""
        return self.model_dump(by_alias=True, exclude_unset=True)


def field(description: str = "", default: Any = PydanticUndefined, *, alias: str | None = None,
          rules: tuple[Rule, ...] = (), **markers: Any) -> Any:
    """A spec field: its description, its default (a SpecModel class: defaulted to `{}`; a list: copied),
    its schema `markers`, and `rules` on its value (CEL on the field's schema)."""
    extra = {"k8s": {"description": description, "markers": markers, "rules": rules}}
    if isinstance(default, type) and issubclass(default, SpecModel):
        return Field(default_factory=default, alias=alias, json_schema_extra=extra)
    if isinstance(default, list):
        return Field(default_factory=lambda: list(default), alias=alias, json_schema_extra=extra)
    return Field(default, alias=alias, json_schema_extra=extra)


def _k8s(info: Any) -> dict[str, Any]:
    return (info.json_schema_extra or {}).get("k8s", {"description": "", "markers": {}, "rules": ()})


def describe(cls: type) -> str:
    """A class's description: its docstring as one line."""
    doc = cls.__dict__.get("__doc__") or ""
    return " ".join(inspect.cleandoc(doc).split("\n")).strip()


def _unwrap(tp: Any) -> tuple[Any, Schema]:
    """(the type without Annotated/Optional, the markers found on the way)."""
    markers: Schema = {}
    while True:
        if typing.get_origin(tp) is Annotated:
            tp, *meta = typing.get_args(tp)
            for m in meta:
                if isinstance(m, Markers):
                    markers.update(m.schema)
            continue
        if typing.get_origin(tp) in (Union, types.UnionType):
            args = [a for a in typing.get_args(tp) if a is not type(None)]
            if len(args) == 1:
                tp = args[0]
                continue
        return tp, markers


def type_schema(tp: Any) -> Schema:
    """The schema of a type (a SpecModel class, scalar, list, map, Literal enum, or an Annotated of those)."""
    tp, markers = _unwrap(tp)
    origin = typing.get_origin(tp)
    out: Schema
    if isinstance(tp, type) and issubclass(tp, SpecModel):
        out = object_schema(tp)
    elif origin is Literal:
        out = {"type": "string", "enum": list(typing.get_args(tp))}
    elif origin is list:
        out = {"type": "array", "items": type_schema(typing.get_args(tp)[0])}
    elif origin is dict:
        value = typing.get_args(tp)[1]
        out = {"type": "object"} if value is Any else {"type": "object", "additionalProperties": type_schema(value)}
    elif origin in (Union, types.UnionType):
        out = {}  # int-or-string: its markers say so
    else:
        out = {"type": {str: "string", bool: "boolean", int: "integer", float: "number"}[tp]}
    out.update(markers)
    return out


def _default(info: Any) -> Any:
    if info.default_factory is not None:
        value = info.default_factory()
        return {} if isinstance(value, SpecModel) else value
    return None if info.default is PydanticUndefined else info.default


def field_schema(info: Any) -> Schema:
    meta = _k8s(info)
    out = type_schema(info.annotation)
    for m in info.metadata:  # pydantic moves a field's own Annotated markers here
        if isinstance(m, Markers):
            out.update(m.schema)
    if meta["description"]:
        out["description"] = meta["description"]
    out.update(meta["markers"])
    default = _default(info)
    if default is not None:
        out["default"] = default
    cel = [{"rule": r.cel, "message": r.message} for r in meta["rules"] if r.cel]
    if cel:
        out["x-kubernetes-validations"] = out.get("x-kubernetes-validations", []) + cel
    return out


def object_schema(cls: type[SpecModel]) -> Schema:
    """A SpecModel class as an OpenAPI object schema."""
    out: Schema = {"type": "object"}
    if describe(cls):
        out["description"] = describe(cls)
    out["properties"] = {info.alias or name: field_schema(info) for name, info in cls.model_fields.items()}
    required = [info.alias or name for name, info in cls.model_fields.items() if info.is_required()]
    if required:
        out["required"] = required
    cel = [{"rule": r.cel, "message": r.message} for r in cls.rules if r.cel]
    if cel:
        out["x-kubernetes-validations"] = cel
    return out


def check(obj: SpecModel, where: str) -> list[str]:
    """The operator's side of every rule in `obj` (fields first, then the object's own), as messages."""
    out: list[str] = []
    for name, info in type(obj).model_fields.items():
        value = getattr(obj, name)
        sub = f"{where}.{info.alias or name}"
        if isinstance(value, SpecModel):
            out += check(value, sub)
        elif isinstance(value, list):
            out += [p for i, v in enumerate(value) if isinstance(v, SpecModel) for p in check(v, f"{sub}[{i}]")]
        out += _bounds(_limits(type(obj))[name], value, sub)
        for rule in _k8s(info)["rules"]:
            out += rule.problems(value, sub)
    for rule in type(obj).rules:
        out += rule.problems(obj, where)
    return out


@functools.lru_cache(maxsize=None)
def _limits(cls: type[SpecModel]) -> dict[str, Schema]:
    """Each field's numeric bounds and list length (from its schema, computed once per class)."""
    keep = ("minimum", "maximum", "maxItems")
    return {name: {k: v for k, v in field_schema(info).items() if k in keep} for name, info in cls.model_fields.items()}


def _bounds(schema: Schema, value: Any, where: str) -> list[str]:
    """The schema's numeric bounds and list length, which the API server checks before any CEL rule."""
    if value is None:
        return []
    if isinstance(value, list) and "maxItems" in schema and len(value) > schema["maxItems"]:
        return [f"{where} has {len(value)} entries; at most {schema['maxItems']} are allowed"]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            return [f"{where} must be >= {schema['minimum']}"]
        if "maximum" in schema and value > schema["maximum"]:
            return [f"{where} must be <= {schema['maximum']}"]
    return []


def exactly_one(obj: SpecModel, *names: str) -> bool:
    return sum(getattr(obj, n) is not None for n in names) == 1


def one_source(message: str, *names: str) -> Rule:
    """The rule "exactly one of these fields" (CEL says `message`; the operator names the entry and what it found)."""
    cel = " + ".join(f"(has(self.{to_camel(n)}) ? 1 : 0)" for n in names) + " == 1"
    wire = ", ".join(to_camel(n) for n in names[:-1]) + " or " + to_camel(names[-1])

    def explain(obj: SpecModel, where: str) -> str:
        found = [to_camel(n) for n in names if getattr(obj, n) is not None]
        return f"{where} needs exactly one source: {wire}" + (f" (found {', '.join(found)})" if found else "")

    return Rule(message, cel, lambda obj: exactly_one(obj, *names), explain)
