"""spec.routing: the router's Deployment, Service and least-privilege RBAC (pure builders), and the
endpoint in status; every object valid Kubernetes."""

from __future__ import annotations

import kubernetes_validate
import pytest

from kubellama_operator import rbac
from kubellama_operator.builders.meta import selector_labels
from kubellama_operator.builders.router import ROUTER_RULES, router_name
from kubellama_operator.api.scaling import ROUTING_STRATEGIES
from kubellama_operator.spec import endpoint, normalize, parse

from test_builders import CONFIG, CPU, GPU, K8S_VERSIONS, build

ROUTED = {**CPU, "replicas": 3, "routing": {"enabled": True, "strategy": "least-load", "replicas": 2}}
KINDS = {("ServiceAccount", "gemma-router"), ("Role", "gemma-router"), ("RoleBinding", "gemma-router"),
         ("Service", "gemma-router"), ("Deployment", "gemma-router")}


def router_objs(spec):
    objs, drop = build(spec)
    return {k: v for k, v in objs.items() if k[1] == "gemma-router"}, drop


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("spec", [ROUTED, {**GPU, "routing": {"enabled": True}}], ids=["cpu", "gpu"])
def test_router_objects_are_valid_kubernetes(spec, version):
    objs, _ = router_objs(spec)
    assert set(objs) == KINDS
    for obj in objs.values():
        kubernetes_validate.validate(obj, version, strict=True)


def test_router_deployment_runs_kubellama_router_locked_down():
    objs, drop = router_objs(ROUTED)
    dep = objs[("Deployment", "gemma-router")]
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == CONFIG.cpu_image and c["command"] == ["kubellama-router"]
    assert c["args"] == ["--service", "gemma", "--namespace", "ml", "--strategy", "least-load", "--port", "8080"]
    assert dep["spec"]["replicas"] == 2
    labels = dep["spec"]["template"]["metadata"]["labels"]
    assert labels["app.kubernetes.io/component"] == "router"
    # the server Service selects server pods only: router pods must never join its endpoints
    assert not selector_labels("gemma").items() <= labels.items()
    assert dep["spec"]["selector"]["matchLabels"].items() <= labels.items()
    sec = c["securityContext"]
    assert sec == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True, "runAsNonRoot": True,
                   "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    assert pod["securityContext"]["runAsNonRoot"] and pod["serviceAccountName"] == "gemma-router"
    assert c["readinessProbe"]["httpGet"]["path"] == "/health"
    assert not [d for d in drop if d.name == "gemma-router"]
    # a GPU server's router still runs from the CPU image
    gpu = router_objs({**GPU, "routing": {"enabled": True}})[0][("Deployment", "gemma-router")]
    assert gpu["spec"]["template"]["spec"]["containers"][0]["image"] == CONFIG.cpu_image
    assert gpu["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "pull"}]


def test_router_rbac_is_least_privilege():
    objs, _ = router_objs(ROUTED)
    assert objs[("Role", "gemma-router")]["rules"] == ROUTER_RULES == [
        {"apiGroups": ["discovery.k8s.io"], "resources": ["endpointslices"], "verbs": ["list", "watch"]}]
    binding = objs[("RoleBinding", "gemma-router")]
    assert binding["roleRef"]["name"] == "gemma-router"
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": "gemma-router", "namespace": "ml"}]
    # the operator holds what it grants (the API server refuses escalation) and may manage the objects
    for rule in ROUTER_RULES:
        for verb in rule["verbs"]:
            assert rbac.allows("discovery.k8s.io", "endpointslices", verb)
    for group, resource in (("apps", "deployments"), ("", "serviceaccounts"),
                            ("rbac.authorization.k8s.io", "roles"), ("rbac.authorization.k8s.io", "rolebindings")):
        assert all(rbac.allows(group, resource, v) for v in ("get", "create", "patch", "delete"))


def test_router_service_and_endpoint():
    objs, _ = router_objs(ROUTED)
    svc = objs[("Service", "gemma-router")]
    assert svc["spec"]["selector"]["app.kubernetes.io/name"] == "kubellama-router"
    assert svc["spec"]["ports"][0]["port"] == 8080
    assert endpoint("gemma", "ml", parse(ROUTED)) == "http://gemma-router.ml.svc:8080/v1"
    assert endpoint("gemma", "ml", parse(CPU)) == "http://gemma.ml.svc:8080/v1"


def test_routing_off_by_default_and_its_objects_dropped():
    assert normalize(CPU)["routing"] == {"enabled": False, "strategy": "prefix", "replicas": 1}
    objs, drop = router_objs(CPU)
    assert not objs
    assert {(d.kind, d.name) for d in drop} >= KINDS
    assert router_name("gemma") == "gemma-router"


def test_crd_strategies_are_the_routers():
    from kubellama_router.strategies import NAMES

    assert sorted(ROUTING_STRATEGIES) == sorted(NAMES)


# --- spec.autoscaling ---------------------------------------------------------------------------

AUTO = {**ROUTED, "autoscaling": {"enabled": True, "minReplicas": 0, "maxReplicas": 4, "targetRequests": 2,
                                  "scaleDownDelaySeconds": 60, "windowSeconds": 30, "holdSeconds": 240}}


def _admit(spec):
    from admission import admit

    return admit({"apiVersion": "kubellama.dev/v1alpha1", "kind": "LlamaServer", "metadata": {"name": "m"},
                  "spec": spec})


@pytest.mark.parametrize("spec,ok", [
    (AUTO, True),
    (ROUTED, True),
    ({**CPU, "autoscaling": {"enabled": True}}, False),  # no router to measure and hold
    ({**AUTO, "autoscaling": {**AUTO["autoscaling"], "minReplicas": 5}}, False),
    ({**CPU, "routing": {"enabled": True, "strategy": "fastest"}}, False),
    ({**CPU, "routing": {"enabled": True, "replicas": 0}}, False),
])
def test_routing_and_autoscaling_admission_agrees_with_the_operator(spec, ok):
    from kubellama_operator.spec import problems

    defaulted, errors = _admit(spec)
    assert (errors == []) is ok, errors
    if ok:
        assert problems(normalize(defaulted["spec"])) == []
    elif "autoscaling" in spec and spec.get("routing", {}).get("strategy") != "fastest":
        assert problems(normalize(spec))  # the operator's own check says the same


def test_autoscaling_router_args_and_scale_permission():
    objs, _ = router_objs(AUTO)
    args = objs[("Deployment", "gemma-router")]["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("--autoscale") + 1] == "gemma"
    flags = {k: args[args.index(k) + 1] for k in ("--min-replicas", "--max-replicas", "--target-requests",
                                                  "--autoscale-window", "--scale-down-delay", "--queue-timeout")}
    assert flags == {"--min-replicas": "0", "--max-replicas": "4", "--target-requests": "2",
                     "--autoscale-window": "30", "--scale-down-delay": "60", "--queue-timeout": "240"}
    rules = objs[("Role", "gemma-router")]["rules"]
    assert rules[1] == {"apiGroups": ["kubellama.dev"], "resources": ["llamaservers/scale"],
                        "resourceNames": ["gemma"], "verbs": ["get", "patch"]}
    assert rbac.allows("kubellama.dev", "llamaservers/scale", "get")
    assert rbac.allows("kubellama.dev", "llamaservers/scale", "patch")
    for version in K8S_VERSIONS:
        for obj in objs.values():
            kubernetes_validate.validate(obj, version, strict=True)
    # the router's flags exist
    from kubellama_router.cli import parse

    s = parse(args, environ={})
    assert s.autoscale == "gemma" and s.min_replicas == 0 and s.queue_timeout == 240
