"""spec.autoscaling.driver hpa|keda: an autoscaling/v2 HorizontalPodAutoscaler or a KEDA ScaledObject scales
the LlamaServer instead of the router (pure builders, valid under the Kubernetes and KEDA schemas), and the
CRD's rules and the operator's checks agree on what each driver allows."""

from __future__ import annotations

import shutil
import subprocess

import kubernetes_validate
import pytest

from kubellama_operator import rbac
from kubellama_operator.builders.autoscaler import router_load_query
from kubellama_operator.spec import normalize, parse, problems

from admission import admit
from test_builders import CPU, K8S_VERSIONS, build
from upstream_crds import SCALEDOBJECT, schema

ROUTED = {**CPU, "routing": {"enabled": True}}
AUTO = {"enabled": True, "minReplicas": 1, "maxReplicas": 5, "targetRequests": 3, "scaleDownDelaySeconds": 7200,
        "holdSeconds": 200}
HPA = {**ROUTED, "autoscaling": {**AUTO, "driver": "hpa"}}
KEDA = {**ROUTED, "autoscaling": {**AUTO, "driver": "keda", "minReplicas": 0,
                                  "prometheusAddress": "http://prometheus.monitoring.svc:9090"}}


def objs_of(spec, keda_crd=False):
    s = parse(spec)
    from kubellama_operator.builders import desired_children
    from kubellama_operator.spec import resolve_model
    from test_builders import CONFIG, owner

    want, drop = desired_children(owner(), s, resolve_model(s), CONFIG, servicemonitor_crd=False,
                                  scaledobject_crd=keda_crd)
    return {(o["kind"], o["metadata"]["name"]): o for o in want}, {(d.kind, d.name) for d in drop}


def router_args(objs):
    return objs[("Deployment", "gemma-router")]["spec"]["template"]["spec"]["containers"][0]["args"]


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_hpa_is_valid_kubernetes_and_scales_the_llamaserver_on_the_router_load(version):
    objs, _ = objs_of(HPA)
    hpa = objs[("HorizontalPodAutoscaler", "gemma")]
    kubernetes_validate.validate(hpa, version, strict=True)
    target = {"apiVersion": "kubellama.dev/v1alpha1", "kind": "LlamaServer", "name": "gemma"}
    assert hpa["spec"]["scaleTargetRef"] == target
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (1, 5)
    [metric] = hpa["spec"]["metrics"]
    assert metric == {"type": "Object", "object": {"describedObject": target,
                                                   "metric": {"name": "kubellama_router_load"},
                                                   "target": {"type": "AverageValue", "averageValue": "3"}}}
    # the API server refuses a window above an hour
    assert hpa["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 3600
    assert hpa["metadata"]["ownerReferences"][0]["kind"] == "LlamaServer"
    assert all(rbac.allows("autoscaling", "horizontalpodautoscalers", v) for v in ("get", "create", "patch", "delete"))


@pytest.mark.parametrize("spec", [HPA, KEDA], ids=["hpa", "keda"])
def test_the_router_holds_requests_but_does_not_scale(spec):
    objs, _ = objs_of(spec, keda_crd=True)
    args = router_args(objs)
    assert "--autoscale" not in args and args[args.index("--queue-timeout") + 1] == "200"
    assert [r["resources"] for r in objs[("Role", "gemma-router")]["rules"]] == [["endpointslices"]]


def test_router_driver_is_the_default_and_renders_neither():
    objs, drop = objs_of({**ROUTED, "autoscaling": {"enabled": True}}, keda_crd=True)
    assert normalize(ROUTED)["autoscaling"]["driver"] == "router"
    assert "--autoscale" in router_args(objs)
    assert not {k for k in objs if k[0] in ("HorizontalPodAutoscaler", "ScaledObject")}
    assert {("HorizontalPodAutoscaler", "gemma"), ("ScaledObject", "gemma")} <= drop


def test_scaledobject_is_valid_under_kedas_crd_and_scales_from_zero():
    objs, drop = objs_of(KEDA, keda_crd=True)
    so = objs[("ScaledObject", "gemma")]
    _, errors = admit(so, schema=schema(SCALEDOBJECT))
    assert errors == []
    assert so["spec"]["scaleTargetRef"]["kind"] == "LlamaServer"
    assert (so["spec"]["minReplicaCount"], so["spec"]["maxReplicaCount"], so["spec"]["cooldownPeriod"]) == (0, 5, 7200)
    [trigger] = so["spec"]["triggers"]
    assert trigger["type"] == "prometheus"
    assert trigger["metadata"] == {"serverAddress": "http://prometheus.monitoring.svc:9090",
                                   "query": router_load_query("ml", "gemma"), "threshold": "3",
                                   "activationThreshold": "0"}
    assert ("HorizontalPodAutoscaler", "gemma") in drop
    # KEDA's CRD is not served: nothing rendered (the status says why), nothing to delete
    objs, drop = objs_of(KEDA, keda_crd=False)
    assert ("ScaledObject", "gemma") not in objs and ("ScaledObject", "gemma") not in drop
    assert all(rbac.allows("keda.sh", "scaledobjects", v) for v in ("get", "create", "patch", "delete"))


@pytest.mark.skipif(not shutil.which("promtool"), reason="promtool not installed")
def test_router_load_query_is_valid_promql(tmp_path):
    rules = tmp_path / "rules.yaml"
    rules.write_text("groups:\n- name: q\n  rules:\n  - record: kubellama:router_load\n"
                     f"    expr: '{router_load_query('ml', 'gemma')}'\n")
    run = subprocess.run(["promtool", "check", "rules", str(rules)], capture_output=True, text=True)
    assert run.returncode == 0, run.stdout + run.stderr


@pytest.mark.parametrize("auto,ok", [
    ({"driver": "router", "minReplicas": 0}, True),
    ({"driver": "keda", "minReplicas": 0, "prometheusAddress": "http://p:9090"}, True),
    ({"driver": "hpa", "minReplicas": 1}, True),
    ({"driver": "hpa", "minReplicas": 0}, False),  # an HPA cannot scale to zero (alpha gate)
    ({"driver": "keda", "minReplicas": 1}, False),  # KEDA needs a Prometheus to query
    ({"driver": "keda", "prometheusAddress": "prometheus:9090"}, False),  # not a URL
    ({"driver": "knative"}, False),
])
def test_driver_admission_agrees_with_the_operator(auto, ok):
    spec = {**ROUTED, "autoscaling": {"enabled": True, **auto}}
    defaulted, errors = admit({"apiVersion": "kubellama.dev/v1alpha1", "kind": "LlamaServer",
                               "metadata": {"name": "m"}, "spec": spec})
    assert (errors == []) is ok, errors
    if ok:
        assert problems(normalize(defaulted["spec"])) == []
    elif auto["driver"] != "knative" and "prometheusAddress" not in auto:
        assert problems(normalize(spec))  # the operator's own check says the same
