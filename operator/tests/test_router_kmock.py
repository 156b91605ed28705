"""spec.routing through the real operator (kopf, handlers, API client) on kmock's emulator: the
router's objects are applied, status.endpoint points at the router, turning routing off deletes them,
and every call the operator made is granted by rbac.RULES."""

from __future__ import annotations

import pytest
import pytest_asyncio

from kmock_harness import _declare, eventually
from test_operator_kmock import LS, assert_rbac_covers, llama, status_of

pytestmark = pytest.mark.asyncio

ROUTER_RESOURCES = {
    "apps/v1/deployments": ("Deployment", True, {"status", "scale"}),
    "v1/serviceaccounts": ("ServiceAccount", True, set()),
    "rbac.authorization.k8s.io/v1/roles": ("Role", True, set()),
    "rbac.authorization.k8s.io/v1/rolebindings": ("RoleBinding", True, set()),
}


@pytest_asyncio.fixture
async def router_kinds(api):
    """The kinds the router needs, declared before the operator starts."""
    _declare(api.kmock, ROUTER_RESOURCES)
    return api


async def test_routing_applies_the_router_and_points_status_at_it(router_kinds, operator):
    api = router_kinds
    await api.create(LS, "llamaservers", llama(replicas=2, routing={"enabled": True, "strategy": "session"},
                                               autoscaling={"enabled": True, "minReplicas": 0}))
    dep = await eventually(lambda: api.objects("apps/v1/deployments").get("gemma-router"))
    assert dep["spec"]["template"]["spec"]["containers"][0]["command"] == ["kubellama-router"]
    assert "session" in dep["spec"]["template"]["spec"]["containers"][0]["args"]
    assert "gemma-router" in api.objects("v1/services")
    assert "gemma-router" in api.objects("v1/serviceaccounts")
    role = api.objects("rbac.authorization.k8s.io/v1/roles")["gemma-router"]
    assert {r["resources"][0] for r in role["rules"]} == {"endpointslices", "llamaservers/scale"}
    assert "gemma-router" in api.objects("rbac.authorization.k8s.io/v1/rolebindings")
    await eventually(lambda: status_of(api).get("endpoint") == "http://gemma-router.ml.svc:8080/v1")

    await api.patch(LS, "llamaservers", "gemma", {"spec": {"routing": {"enabled": False},
                                                           "autoscaling": {"enabled": False}}})
    await eventually(lambda: "gemma-router" not in api.objects("apps/v1/deployments"))
    await eventually(lambda: "gemma-router" not in api.objects("rbac.authorization.k8s.io/v1/roles"))
    assert "gemma-router" not in api.objects("v1/services")
    await eventually(lambda: status_of(api).get("endpoint") == "http://gemma.ml.svc:8080/v1")
    assert_rbac_covers(api)


INFERENCEPOOLS = {"inference.networking.k8s.io/v1/inferencepools": ("InferencePool", True, {"status"})}


async def test_inferencepool_when_its_crd_is_served(api, operator):
    """With the InferencePool CRD served the operator writes a pool of the server pods, and deletes it when
    spec.inferencePool.enabled goes false."""
    _declare(api.kmock, INFERENCEPOOLS)
    await api.create(LS, "llamaservers", llama(replicas=2, routing={"enabled": True},
                                               inferencePool={"endpointPickerRef": {"name": "epp", "port": 9002}}))
    pool = await eventually(lambda: api.objects("inference.networking.k8s.io/v1/inferencepools").get("gemma"))
    assert pool["spec"]["targetPorts"] == [{"number": 8080}]
    assert pool["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"] == "kubellama-server"
    assert pool["spec"]["endpointPickerRef"]["name"] == "epp"
    await api.patch(LS, "llamaservers", "gemma", {"spec": {"inferencePool": {"enabled": False}}})
    await eventually(lambda: "gemma" not in api.objects("inference.networking.k8s.io/v1/inferencepools"))
    assert_rbac_covers(api)


AUTOSCALERS = {"autoscaling/v2/horizontalpodautoscalers": ("HorizontalPodAutoscaler", True, {"status"})}
SCALEDOBJECTS = {"keda.sh/v1alpha1/scaledobjects": ("ScaledObject", True, {"status"})}


def autoscaling_condition(api):
    return next((c for c in status_of(api).get("conditions") or [] if c["type"] == "Autoscaling"), None)


async def test_keda_without_its_crd_says_so_then_hpa_then_keda(router_kinds, operator):
    """driver keda without KEDA's CRD: no ScaledObject, a False Autoscaling condition that says why; driver hpa:
    an HPA (and the router's Role loses the scale permission); KEDA's CRD served: a ScaledObject, the HPA goes."""
    api = router_kinds
    _declare(api.kmock, AUTOSCALERS)
    await api.create(LS, "llamaservers", llama(routing={"enabled": True}, autoscaling={
        "enabled": True, "driver": "keda", "minReplicas": 0, "prometheusAddress": "http://prom:9090"}))
    cond = await eventually(lambda: autoscaling_condition(api))
    assert (cond["status"], cond["reason"]) == ("False", "KEDANotInstalled")
    assert "keda.sh" in cond["message"] and "keda.sh" in status_of(api)["message"]
    assert "gemma" in api.objects("apps/v1/statefulsets")  # the rest is applied

    await api.patch(LS, "llamaservers", "gemma", {"spec": {"autoscaling": {"driver": "hpa", "minReplicas": 1}}})
    hpa = await eventually(lambda: api.objects("autoscaling/v2/horizontalpodautoscalers").get("gemma"))
    assert hpa["spec"]["metrics"][0]["object"]["metric"]["name"] == "kubellama_router_load"
    await eventually(lambda: autoscaling_condition(api)["reason"] == "HorizontalPodAutoscaler")
    role = api.objects("rbac.authorization.k8s.io/v1/roles")["gemma-router"]
    assert [r["resources"] for r in role["rules"]] == [["endpointslices"]]

    _declare(api.kmock, SCALEDOBJECTS)
    await api.patch(LS, "llamaservers", "gemma", {"spec": {"autoscaling": {"driver": "keda", "minReplicas": 0}}})
    so = await eventually(lambda: api.objects("keda.sh/v1alpha1/scaledobjects").get("gemma"))
    assert so["spec"]["minReplicaCount"] == 0
    await eventually(lambda: "gemma" not in api.objects("autoscaling/v2/horizontalpodautoscalers"))
    await eventually(lambda: autoscaling_condition(api)["status"] == "True")
    assert_rbac_covers(api)
