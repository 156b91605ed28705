"""The InferencePool (Gateway API Inference Extension v1): written only when its CRD is installed, selecting
the server pods on the server port, and valid under the upstream CRD's schema and CEL rules."""

from __future__ import annotations

import pytest

from kubellama_operator import rbac
from kubellama_operator.builders.meta import selector_labels
from kubellama_operator.builders.router import router_selector

from admission import admit
from upstream_crds import INFERENCEPOOL, schema
from test_builders import CPU, GPU, build

ROUTED = {**CPU, "replicas": 2, "routing": {"enabled": True}}
PICKER = {**GPU, "inferencePool": {"endpointPickerRef": {"name": "gemma-epp", "port": 9002}}}


def pool_of(spec, crd=True):
    objs, drop = build(spec, pool_crd=crd)
    return objs.get(("InferencePool", "gemma")), drop


@pytest.mark.parametrize("spec", [CPU, ROUTED, PICKER], ids=["plain", "routed", "picker"])
def test_inferencepool_is_valid_under_the_upstream_crd(spec):
    pool, _ = pool_of(spec)
    _, errors = admit(pool, schema=schema(INFERENCEPOOL))
    assert errors == []
    assert pool["apiVersion"] == "inference.networking.k8s.io/v1"
    assert pool["spec"]["targetPorts"] == [{"number": 8080}]
    # the server pods, never the router's: the gateway replaces the router
    assert pool["spec"]["selector"]["matchLabels"] == selector_labels("gemma")
    assert not selector_labels("gemma").items() <= router_selector("gemma").items()
    [ref] = pool["metadata"]["ownerReferences"]
    assert (ref["kind"], ref["name"], ref["controller"]) == ("LlamaServer", "gemma", True)


def test_the_upstream_schema_refuses_what_it_should():
    """The validation is real: the checks catch broken pools."""
    pool, _ = pool_of(PICKER)
    pool_schema = schema(INFERENCEPOOL)
    broken = {**pool, "spec": {**pool["spec"], "targetPorts": [{"number": 8080}, {"number": 8080}]}}
    assert any("unique" in e for e in admit(broken, schema=pool_schema)[1])
    no_port = {**pool, "spec": {**pool["spec"], "endpointPickerRef": {"name": "x", "kind": "Service"}}}
    assert any("port is required" in e for e in admit(no_port, schema=pool_schema)[1])
    assert admit({**pool, "spec": {"targetPorts": [{"number": 1}]}}, schema=pool_schema)[1]  # no selector


def test_endpoint_picker_only_when_configured():
    assert "endpointPickerRef" not in pool_of(CPU)[0]["spec"]
    assert pool_of(PICKER)[0]["spec"]["endpointPickerRef"] == {
        "group": "", "kind": "Service", "name": "gemma-epp", "port": {"number": 9002}, "failureMode": "FailClose"}


def test_inferencepool_only_with_its_crd_and_removed_when_turned_off():
    pool, drop = pool_of(CPU, crd=False)
    assert pool is None and not [d for d in drop if d.kind == "InferencePool"]  # no CRD: nothing to look up
    pool, drop = pool_of({**CPU, "inferencePool": {"enabled": False}})
    assert pool is None
    assert [(d.api_version, d.kind, d.name) for d in drop if d.kind == "InferencePool"] == [
        ("inference.networking.k8s.io/v1", "InferencePool", "gemma")]
    assert all(rbac.allows("inference.networking.k8s.io", "inferencepools", v)
               for v in ("get", "create", "patch", "delete"))


@pytest.mark.parametrize("picker,ok", [
    ({"name": "epp", "port": 9002}, True),
    ({"name": "epp"}, False),
    ({"name": "epp", "port": 9002, "failureMode": "Maybe"}, False),
])
def test_picker_admission(picker, ok):
    _, errors = admit({"apiVersion": "kubellama.dev/v1alpha1", "kind": "LlamaServer", "metadata": {"name": "m"},
                       "spec": {**CPU, "inferencePool": {"endpointPickerRef": picker}}})
    assert (errors == []) is ok, errors
