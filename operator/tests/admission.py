"""What the API server does to a LlamaServer on `kubectl apply`, without an API server:
structural defaulting, OpenAPI schema validation (strict: unknown fields rejected, like
`kubectl --validate=strict`), and the CRD's CEL `x-kubernetes-validations` (cel-python)."""

from __future__ import annotations

from typing import Any

import celpy
import jsonschema

from kubellama_operator.crd import build_crd
from kubellama_operator.spec import apply_defaults

_KEEP = {"type", "properties", "required", "enum", "minimum", "maximum", "pattern", "minLength",
         "maxLength", "items", "minItems", "maxItems", "additionalProperties", "anyOf", "format",
         "minProperties", "maxProperties"}


def root_schema() -> dict[str, Any]:
    return build_crd()["spec"]["versions"][0]["schema"]["openAPIV3Schema"]


def to_jsonschema(node: Any) -> Any:
    if isinstance(node, list):
        return [to_jsonschema(n) for n in node]
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            out[key] = {k: to_jsonschema(v) for k, v in value.items()}
        elif key in _KEEP:
            out[key] = to_jsonschema(value)
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string", **({"pattern": node["pattern"]} if "pattern" in node else {})}]
        out.pop("pattern", None)
    if "properties" in node and not node.get("x-kubernetes-preserve-unknown-fields") and "additionalProperties" not in node:
        out["additionalProperties"] = False
    return out


def _cel_errors(schema: dict[str, Any], value: Any, old: Any, path: str, env: celpy.Environment) -> list[str]:
    errors: list[str] = []
    for rule in schema.get("x-kubernetes-validations", []):
        transition = "oldSelf" in rule["rule"]
        if transition and old is None:
            continue
        activation = {"self": celpy.json_to_cel(value)}
        if transition:
            activation["oldSelf"] = celpy.json_to_cel(old)
        result = env.program(env.compile(rule["rule"])).evaluate(activation)
        if isinstance(result, Exception) or not bool(result):
            errors.append(f"{path}: {rule['message']}")
    if isinstance(value, dict) and "properties" in schema:
        for key, sub in schema["properties"].items():
            if key in value:
                sub_old = old.get(key) if isinstance(old, dict) else None
                errors += _cel_errors(sub, value[key], sub_old, f"{path}.{key}", env)
    if isinstance(value, list) and isinstance(schema.get("items"), dict):
        for i, item in enumerate(value):
            errors += _cel_errors(schema["items"], item, None, f"{path}[{i}]", env)
    return errors


def admit(obj: dict[str, Any], old: dict[str, Any] | None = None,
          schema: dict[str, Any] | None = None) -> tuple[dict[str, Any], list[str]]:
    """(the defaulted object, the list of rejection messages); [] means the API server would accept it.

    `schema`: another CRD's openAPIV3Schema (default: the LlamaServer's)."""
    schema = schema or root_schema()
    defaulted = apply_defaults(schema, obj)
    old_defaulted = apply_defaults(schema, old) if old is not None else None
    errors = [f"{'.'.join(str(p) for p in e.absolute_path) or '<root>'}: {e.message}"
              for e in jsonschema.Draft202012Validator(to_jsonschema(schema)).iter_errors(defaulted)]
    if not errors:
        errors = _cel_errors(schema, defaulted, old_defaulted, "", celpy.Environment())
    return defaulted, errors
