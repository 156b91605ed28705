"""The typed spec (`kubellama_operator.api`): every CEL rule has the operator's check beside it, and the
typed spec reads what the user wrote (camelCase on the wire, defaults from the same declaration)."""

from __future__ import annotations

import pytest

from kubellama_operator.api import LlamaServerSpec, SpecModel
from kubellama_operator.api.schema import Rule, _k8s, object_schema
from kubellama_operator.spec import load, normalize, parse

#: CEL rules the operator checks another way: the extraArgs rule (the server's own parser, which also
#: sees what CEL cannot: attached values, abbreviations).
CHECKED_ELSEWHERE = {"spec.server.extraArgs may not set flags the operator manages or refuses"}


def _classes(cls: type[SpecModel], seen: set[type] | None = None) -> set[type[SpecModel]]:
    import typing

    seen = seen if seen is not None else set()
    if cls in seen:
        return seen
    seen.add(cls)
    for info in cls.model_fields.values():
        stack = [info.annotation]
        while stack:
            tp = stack.pop()
            if isinstance(tp, type) and issubclass(tp, SpecModel):
                _classes(tp, seen)
            stack += list(typing.get_args(tp))
    return seen


def _rules() -> list[tuple[str, Rule]]:
    out = []
    for cls in _classes(LlamaServerSpec):
        out += [(cls.__name__, r) for r in cls.rules]
        for name, info in cls.model_fields.items():
            out += [(f"{cls.__name__}.{name}", r) for r in _k8s(info)["rules"]]
    return out


@pytest.mark.parametrize("where, rule", [r for r in _rules() if r[1].cel], ids=lambda r: getattr(r, "message", r)[:60])
def test_every_cel_rule_has_the_operators_check(where, rule):
    """An API server that did not run CEL (an emulator, an object stored before a CRD upgrade) still gets the
    rule checked: only transition rules (on oldSelf) are the API server's alone."""
    if "oldSelf" in rule.cel:
        assert rule.ok is None
    elif not any(rule.message.startswith(m) for m in CHECKED_ELSEWHERE):
        assert rule.ok is not None, f"{where}: CEL rule without the operator's check"


def test_wire_names_are_the_crds_and_attributes_are_snake_case():
    spec = parse({"model": {"huggingFace": {"repo": "o/r", "file": "m.gguf"}, "tokenSecretRef": {"name": "hf"}},
                  "server": {"nPredict": 5, "ubatchSize": 8, "extraArgs": ["--mlock"]},
                  "networkPolicy": {"from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}]}})
    assert spec.model.hugging_face.repo == "o/r" and spec.model.token_secret_ref.key == "token"
    assert (spec.server.n_predict, spec.server.ubatch_size, spec.server.extra_args) == (5, 8, ["--mlock"])
    assert spec.network_policy.from_[0].ip_block.except_ == ["10.1.0.0/16"]
    assert spec.network_policy.from_[0].to_dict() == {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}}
    props = object_schema(LlamaServerSpec)["properties"]
    assert "from" in props["networkPolicy"]["properties"] and "nPredict" in props["server"]["properties"]


def test_python_defaults_are_the_schemas():
    """The typed spec of a bare spec equals that of the API server's defaulted one (one declaration)."""
    bare = LlamaServerSpec.model_validate({"model": {"url": "https://e.test/m.gguf"}})
    assert bare == parse({"model": {"url": "https://e.test/m.gguf"}})
    assert normalize({"model": {"url": "https://e.test/m.gguf"}})["storage"]["model"]["accessModes"] == ["ReadWriteOnce"]


@pytest.mark.parametrize("raw, message", [
    ({}, "spec.model is required: set one of url, huggingFace or pvc"),
    ({"model": "x"}, "spec.model must be an object"),
    ({"model": {"url": "https://e.test/m.gguf", "loras": "x"}}, "spec.model.loras: Input should be a valid list"),
    ({"model": {"huggingFace": {"repo": "o/r"}}}, "spec.model.huggingFace.file is required"),
    ({"model": {"url": "https://e.test/m.gguf"}, "replicas": -1}, "spec.replicas must be >= 0"),
])
def test_a_spec_without_the_schemas_shape_says_where(raw, message):
    spec, found = load(raw)
    assert found == [message]
    if "must be >=" not in message:
        assert spec is None
