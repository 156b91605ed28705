"""The real operator (kopf, our handlers, our API client) against kmock's stateful Kubernetes emulator.

The emulator stores objects and streams watch events, but runs no controllers: tests play the
StatefulSet controller and the kubelet by writing pods and statuses themselves, and the
emulator merges patches instead of doing real server-side apply.
"""

from __future__ import annotations

import copy
from typing import Any
from urllib.parse import parse_qs

import pytest

from kmock_harness import NAMESPACE, Running, TEST_CONFIG, counter, eventually
from kubellama_operator import rbac
from kubellama_operator.builders.meta import labels

pytestmark = pytest.mark.asyncio

LS = "kubellama.dev/v1alpha1"
URL = "https://models.test/gemma-3-270m-q4_k_m.gguf"


def llama(name: str = "gemma", **spec: Any) -> dict[str, Any]:
    return {"apiVersion": LS, "kind": "LlamaServer", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"model": {"url": URL}, **spec}}


def status_of(api, name: str = "gemma") -> dict[str, Any]:
    return api.objects(f"{LS}/llamaservers").get(name, {}).get("status") or {}


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status.get("conditions", []) if c["type"] == type_)


async def phase_is(api, phase: str, name: str = "gemma", timeout: float = 15) -> dict[str, Any]:
    return await eventually(lambda: status_of(api, name) if status_of(api, name).get("phase") == phase else None,
                            timeout=timeout)


def pod(name: str, owner: str = "gemma", *, init: dict | None = None, server: dict | None = None,
        ready: bool = False) -> dict[str, Any]:
    """A pod as the StatefulSet controller and kubelet would report it."""
    status: dict[str, Any] = {"phase": "Pending" if server is None else "Running"}
    if init is not None:
        status["initContainerStatuses"] = [{"name": "fetch-model", "ready": False, "restartCount": 0, **init}]
    if server is not None:
        status["containerStatuses"] = [{"name": "server", "ready": ready, "restartCount": 0, **server}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels(owner)},
            "spec": {"containers": [{"name": "server", "image": "x"}]}, "status": status}


RUNNING = {"state": {"running": {"startedAt": "2026-01-01T00:00:00Z"}}}


def exited(code: int, message: str = "") -> dict[str, Any]:
    return {"state": {"terminated": {"exitCode": code, "reason": "Error" if code else "Completed",
                                     "message": message}}}


def events(api, reason: str | None = None, type_: str | None = None) -> list[dict[str, Any]]:
    return [e for e in api.events() if (reason is None or e["reason"] == reason)
            and (type_ is None or e["type"] == type_)]


def rbac_needs(api) -> set[tuple[str, str, str]]:
    """(group, resource, verb) of every resource request the emulator received from the operator."""
    needs = set()
    for req in list(api.kmock):
        if "kubellama-operator" not in req.headers.get("User-Agent", "") and \
                "kopf" not in req.headers.get("User-Agent", ""):
            continue  # the test's own requests
        parts = req.url.path.strip("/").split("/")
        if parts[0] == "api" and len(parts) >= 3:
            group, rest = "", parts[2:]
        elif parts[0] == "apis" and len(parts) >= 4:
            group, rest = parts[1], parts[3:]
        else:
            continue  # discovery: allowed to every authenticated user
        if rest[0] == "namespaces" and len(rest) >= 3:
            rest = rest[2:]
        resource = rest[0] + (f"/{rest[2]}" if len(rest) > 2 else "")
        named = len(rest) > 1
        verb = {"POST": "create", "PATCH": "patch", "PUT": "update", "DELETE": "delete"}.get(req.method)
        if verb is None:
            verb = "watch" if parse_qs(req.url.query_string).get("watch") == ["true"] else ("get" if named else "list")
        needs.add((group, resource, verb))
    return needs


def assert_rbac_covers(api) -> None:
    missing = sorted(n for n in rbac_needs(api) if not rbac.allows(*n))
    assert not missing, f"API calls not granted by rbac.RULES: {missing}"


async def test_create_makes_children_and_status(api, operator):
    await api.create(LS, "llamaservers", llama())
    sts = await eventually(lambda: api.objects("apps/v1/statefulsets").get("gemma"))
    uid = api.objects(f"{LS}/llamaservers")["gemma"]["metadata"]["uid"]
    # No finalizer: deleting a LlamaServer never waits for the operator (children go by ownerReferences).
    assert not api.objects(f"{LS}/llamaservers")["gemma"]["metadata"].get("finalizers")
    assert sts["spec"]["replicas"] == 1
    assert sts["metadata"]["ownerReferences"][0]["uid"] == uid
    assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == TEST_CONFIG.cpu_image
    services = api.objects("v1/services")
    assert set(services) == {"gemma", "gemma-headless"}
    assert services["gemma"]["spec"]["ports"][0]["name"] == "http"
    assert "gemma" not in api.objects("policy/v1/poddisruptionbudgets")
    policy = await eventually(lambda: api.objects("networking.k8s.io/v1/networkpolicies").get("gemma"))
    assert policy["spec"]["podSelector"]["matchLabels"]["kubellama.dev/llamaserver"] == "gemma"
    status = await phase_is(api, "Pending")
    assert status["endpoint"] == f"http://gemma.{NAMESPACE}.svc:8080/v1"
    assert status["ready"] == "0/1" and status["readyReplicas"] == 0
    assert status["selector"] == "app.kubernetes.io/name=kubellama-server,app.kubernetes.io/instance=gemma," \
                                 "kubellama.dev/llamaserver=gemma"
    assert status["model"] == {"name": "gemma-3-270m-q4_k_m.gguf", "file": "gemma-3-270m-q4_k_m.gguf",
                               "path": "/models/gemma-3-270m-q4_k_m.gguf", "source": URL}
    assert status["observedGeneration"] == 1
    assert {c["type"] for c in status["conditions"]} == {"ModelReady", "Available", "Progressing"}
    await eventually(lambda: {"created StatefulSet/gemma", "created Service/gemma", "created Service/gemma-headless"}
                     <= {e["message"] for e in events(api, "Created")})
    assert_rbac_covers(api)


async def test_update_patches_children_and_scale(api, operator):
    await api.create(LS, "llamaservers", llama())
    await eventually(lambda: api.objects("apps/v1/statefulsets").get("gemma"))
    await api.patch(LS, "llamaservers", "gemma", {"metadata": {"generation": 2},
                                                   "spec": {"replicas": 3, "server": {"contextSize": 4096}}})
    sts = await eventually(lambda: (s := api.objects("apps/v1/statefulsets")["gemma"])["spec"]["replicas"] == 3 and s)
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    assert args[args.index("-c") + 1] == "4096"
    await eventually(lambda: "gemma" in api.objects("policy/v1/poddisruptionbudgets"))
    await eventually(lambda: status_of(api).get("observedGeneration") == 2)
    await eventually(lambda: events(api, "Updated"))
    # `kubectl scale llama gemma --replicas=1` goes through the scale subresource.
    await api.patch(LS, "llamaservers", "gemma", {"spec": {"replicas": 1}}, sub="scale")
    await eventually(lambda: api.objects("apps/v1/statefulsets")["gemma"]["spec"]["replicas"] == 1)
    await eventually(lambda: "gemma" not in api.objects("policy/v1/poddisruptionbudgets"))
    await eventually(lambda: any("PodDisruptionBudget/gemma" in e["message"] for e in events(api, "Deleted")))
    assert_rbac_covers(api)


async def test_deleted_or_edited_children_are_restored(api, operator):
    await api.create(LS, "llamaservers", llama())
    await eventually(lambda: len(api.objects("v1/services")) == 2 and api.objects("apps/v1/statefulsets"))
    await api.delete("v1", "services", "gemma")
    svc = await eventually(lambda: api.objects("v1/services").get("gemma"))
    assert svc["spec"]["ports"][0]["targetPort"] == "http"
    await api.delete("apps/v1", "statefulsets", "gemma")
    await eventually(lambda: api.objects("apps/v1/statefulsets").get("gemma"))
    # Deleting the NetworkPolicy would open the pods to the whole cluster: it comes back.
    await eventually(lambda: api.objects("networking.k8s.io/v1/networkpolicies").get("gemma"))
    await api.delete("networking.k8s.io/v1", "networkpolicies", "gemma")
    policy = await eventually(lambda: api.objects("networking.k8s.io/v1/networkpolicies").get("gemma"))
    assert policy["spec"]["policyTypes"] == ["Ingress"]
    # A hand edit of a field we own is reverted.
    await api.patch("apps/v1", "statefulsets", "gemma", {"spec": {"replicas": 7}})
    await eventually(lambda: api.objects("apps/v1/statefulsets")["gemma"]["spec"]["replicas"] == 1)
    await eventually(lambda: {"re-created Service/gemma, which was missing",
                              "re-created StatefulSet/gemma, which was missing"}
                     <= {e["message"] for e in events(api, "Restored", "Warning")})
    assert_rbac_covers(api)


async def test_periodic_resync_repairs_unwatched_drift(api, operator):
    """A change the watch never reported (written straight into the store) is found by the resync loop."""
    await api.create(LS, "llamaservers", llama())
    await eventually(lambda: api.objects("apps/v1/statefulsets").get("gemma"))
    await phase_is(api, "Pending")
    # The creation passes are over once a resync pass has run (kmock replays ADDED, so create runs twice).
    timer = counter("kubellama_operator_reconcile_total", trigger="timer", result="success")
    await eventually(lambda: counter("kubellama_operator_reconcile_total", trigger="timer", result="success") > timer,
                     timeout=4 * TEST_CONFIG.resync_seconds)
    api.kmock.objects["apps/v1/statefulsets", NAMESPACE, "gemma"].patch({"spec": {"replicas": 4}})
    assert api.objects("apps/v1/statefulsets")["gemma"]["spec"]["replicas"] == 4
    updated = counter("kubellama_operator_children_applied_total", kind="StatefulSet", action="updated")
    await eventually(lambda: api.objects("apps/v1/statefulsets")["gemma"]["spec"]["replicas"] == 1
                     and counter("kubellama_operator_children_applied_total", kind="StatefulSet",
                                 action="updated") > updated, timeout=4 * TEST_CONFIG.resync_seconds)
    await eventually(lambda: any("StatefulSet/gemma" in e["message"] for e in events(api, "Reverted", "Warning")))


async def test_status_follows_pods(api, operator):
    await api.create(LS, "llamaservers", llama(replicas=2))
    await eventually(lambda: api.objects("apps/v1/statefulsets").get("gemma"))
    # What kubellama-fetch logs while it downloads (JSON lines on a non-terminal).
    api.kmock["get /api/v1/namespaces/ml/pods/gemma-0/log"] << (
        b'{"logger":"kubellama-fetch","event":"start","file":"gemma.gguf","bytes_total":2147483648}\n'
        b'{"logger":"kubellama-fetch","event":"progress","file":"gemma.gguf","bytes_done":902299648,'
        b'"bytes_total":2147483648,"percent":42.0,"rate_bytes_per_second":12582912,"eta_seconds":99.0}\n')
    await api.create("v1", "pods", pod("gemma-0", init=RUNNING))
    status = await phase_is(api, "Downloading")
    assert condition(status, "ModelReady")["reason"] == "Downloading"
    assert status["message"] == "downloading gemma.gguf: 42% of 2.0 GiB, 12.0 MiB/s, about 2 min left"

    # The fetcher fails: its termination message reaches the status, with a reason from its exit code.
    msg = "404 Not Found: https://models.test/gemma-3-270m-q4_k_m.gguf; check spec.model.url"
    await api.patch("v1", "pods", "gemma-0", {"status": {"initContainerStatuses": [
        {"name": "fetch-model", "ready": False, "restartCount": 1, **exited(3, msg)}]}})
    status = await phase_is(api, "Failed")
    model_ready = condition(status, "ModelReady")
    assert model_ready["status"] == "False" and model_ready["reason"] == "ModelNotFound"
    assert msg in model_ready["message"] and msg in status["message"]
    assert condition(status, "Progressing")["reason"] == "Failed"
    await eventually(lambda: any(msg in e["message"] for e in events(api, "Failed", "Warning")))

    # A retry succeeds; the server loads, then becomes ready.
    await api.patch("v1", "pods", "gemma-0", {"status": {
        "initContainerStatuses": [{"name": "fetch-model", "ready": False, "restartCount": 1,
                                   **exited(0, '{"path": "/models/gemma-3-270m-q4_k_m.gguf", "size": 253000000}')}],
        "containerStatuses": [{"name": "server", "ready": False, "restartCount": 0, **RUNNING}]}})
    status = await phase_is(api, "Loading")
    assert condition(status, "ModelReady")["status"] == "True"
    assert status["model"]["sizeBytes"] == 253000000
    await api.patch("v1", "pods", "gemma-0", {"status": {"containerStatuses": [
        {"name": "server", "ready": True, "restartCount": 0, **RUNNING}]}})
    # One of two ready, the other not even created yet.
    status = await eventually(lambda: status_of(api).get("readyReplicas") == 1 and status_of(api))
    assert status["ready"] == "1/2" and condition(status, "Available")["status"] == "True"

    # The second replica's server crash-loops: Degraded, not Failed.
    await api.create("v1", "pods", pod("gemma-1", init=exited(0), server={
        "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
        "lastState": {"terminated": {"exitCode": 1, "message": "out of memory loading the model"}}}))
    status = await phase_is(api, "Degraded")
    assert "out of memory" in status["message"]

    await api.patch("v1", "pods", "gemma-1", {"status": {"containerStatuses": [
        {"name": "server", "ready": True, "restartCount": 1, **RUNNING}]}})
    await api.patch("apps/v1", "statefulsets", "gemma", {"status": {
        "replicas": 2, "readyReplicas": 2, "updatedReplicas": 2, "observedGeneration": 1}})
    status = await phase_is(api, "Ready")
    assert status["ready"] == "2/2"
    assert condition(status, "Progressing") | {"lastTransitionTime": None} == {
        **condition(status, "Progressing"), "status": "False", "reason": "Complete", "lastTransitionTime": None}
    await eventually(lambda: events(api, "Ready", "Normal"))
    assert_rbac_covers(api)


async def test_multimodal_server_downloads_and_reports_its_projector(api, operator):
    mmproj_url = "https://models.test/mmproj-gemma-f16.gguf"
    await api.create(LS, "llamaservers", llama(model={"url": URL, "mmproj": {"url": mmproj_url, "offload": False}}))
    sts = await eventually(lambda: api.objects("apps/v1/statefulsets").get("gemma"))
    pod_spec = sts["spec"]["template"]["spec"]
    assert [c["name"] for c in pod_spec["initContainers"]] == ["fetch-model", "fetch-mmproj"]
    assert pod_spec["initContainers"][1]["args"] == ["--url", mmproj_url, "--dest", "/models/mmproj"]
    args = pod_spec["containers"][0]["args"]
    assert args[args.index("--mmproj") + 1] == "/models/mmproj/mmproj-gemma-f16.gguf" and "--no-mmproj-offload" in args

    # The model is in place; the projector downloads: its progress comes from fetch-mmproj's log.
    api.kmock["get /api/v1/namespaces/ml/pods/gemma-0/log"] << (
        b'{"logger":"kubellama-fetch","event":"progress","file":"mmproj-gemma-f16.gguf","bytes_done":445644800,'
        b'"bytes_total":891289600,"percent":50.0,"rate_bytes_per_second":20971520,"eta_seconds":21.0}\n')
    init = {"name": "fetch-model", "ready": False, "restartCount": 0, **exited(0)}
    gemma = pod("gemma-0")
    gemma["status"]["initContainerStatuses"] = [init, {"name": "fetch-mmproj", "ready": False, "restartCount": 0,
                                                       **RUNNING}]
    await api.create("v1", "pods", gemma)
    status = await phase_is(api, "Downloading")
    assert status["message"] == "downloading the multimodal projector mmproj-gemma-f16.gguf: 50% of 850.0 MiB, " \
                                "20.0 MiB/s, about 21 s left"
    assert condition(status, "ModelReady")["reason"] == "Downloading"
    assert status["model"]["mmproj"] == "mmproj-gemma-f16.gguf"
    log_reads = [parse_qs(r.url.query_string).get("container") for r in list(api.kmock) if r.url.path.endswith("/log")]
    assert ["fetch-mmproj"] in log_reads

    # The projector's download fails: reported like the model's, saying it was the projector.
    msg = "kubellama-fetch: error: 404 Not Found: " + mmproj_url
    await api.patch("v1", "pods", "gemma-0", {"status": {"initContainerStatuses": [
        init, {"name": "fetch-mmproj", "ready": False, "restartCount": 1, **exited(3, msg)}]}})
    status = await phase_is(api, "Failed")
    model_ready = condition(status, "ModelReady")
    assert (model_ready["status"], model_ready["reason"]) == ("False", "ModelNotFound")
    assert model_ready["message"] == status["message"] == f"multimodal projector download failed: {msg}"
    await eventually(lambda: any("multimodal projector download failed" in e["message"]
                                 for e in events(api, "Failed", "Warning")))
    assert_rbac_covers(api)


async def test_lora_server_downloads_and_reports_its_adapters(api, operator):
    sql, support = "https://models.test/sql/adapter-f16.gguf", "https://models.test/support/adapter-f16.gguf"
    await api.create(LS, "llamaservers", llama(model={"url": URL, "loras": [{"name": "sql", "url": sql},
                                                                            {"name": "support", "url": support}]}))
    sts = await eventually(lambda: api.objects("apps/v1/statefulsets").get("gemma"))
    pod_spec = sts["spec"]["template"]["spec"]
    assert [c["name"] for c in pod_spec["initContainers"]] == ["fetch-model", "fetch-lora-0", "fetch-lora-1"]
    assert pod_spec["initContainers"][2]["args"] == ["--url", support, "--dest", "/models/lora/1"]
    args = pod_spec["containers"][0]["args"]
    assert [args[i + 1] for i, a in enumerate(args) if a == "--lora"] == [
        "/models/lora/0/adapter-f16.gguf", "/models/lora/1/adapter-f16.gguf"]

    # The model and the first adapter are in place; the second downloads: its progress comes from its own log.
    api.kmock["get /api/v1/namespaces/ml/pods/gemma-0/log"] << (
        b'{"logger":"kubellama-fetch","event":"progress","file":"adapter-f16.gguf","bytes_done":22020096,'
        b'"bytes_total":44040192,"percent":50.0,"rate_bytes_per_second":10485760,"eta_seconds":2.0}\n')
    done = {"ready": False, "restartCount": 0, **exited(0)}
    gemma = pod("gemma-0")
    gemma["status"]["initContainerStatuses"] = [{"name": "fetch-model", **done}, {"name": "fetch-lora-0", **done},
                                                {"name": "fetch-lora-1", "ready": False, "restartCount": 0, **RUNNING}]
    await api.create("v1", "pods", gemma)
    status = await phase_is(api, "Downloading")
    assert status["message"] == "downloading LoRA adapter 1 (support), adapter-f16.gguf: 50% of 42.0 MiB, " \
                                "10.0 MiB/s, about 2 s left"
    assert condition(status, "ModelReady")["reason"] == "Downloading"
    assert status["model"]["loras"] == [{"id": 0, "name": "sql", "file": "adapter-f16.gguf"},
                                        {"id": 1, "name": "support", "file": "adapter-f16.gguf"}]
    log_reads = [parse_qs(r.url.query_string).get("container") for r in list(api.kmock) if r.url.path.endswith("/log")]
    assert ["fetch-lora-1"] in log_reads

    # The adapter's download fails: reported like the model's, naming the adapter.
    msg = "kubellama-fetch: error: 401 Unauthorized: " + support
    await api.patch("v1", "pods", "gemma-0", {"status": {"initContainerStatuses": [
        {"name": "fetch-model", **done}, {"name": "fetch-lora-0", **done},
        {"name": "fetch-lora-1", "ready": False, "restartCount": 1, **exited(4, msg)}]}})
    status = await phase_is(api, "Failed")
    model_ready = condition(status, "ModelReady")
    assert (model_ready["status"], model_ready["reason"]) == ("False", "Unauthorized")
    assert model_ready["message"] == status["message"] == f"LoRA adapter 1 (support) download failed: {msg}"
    await eventually(lambda: any("LoRA adapter 1 (support) download failed" in e["message"]
                                 for e in events(api, "Failed", "Warning")))
    assert_rbac_covers(api)


async def test_a_replica_whose_lora_scales_differ_is_reported(api, operator, monkeypatch, tmp_path):
    """The status pass reads each Ready pod's LoRA scales from /metrics (a real server on loopback plays both pods)."""
    import asyncio

    import httpx

    from kubellama_operator import lora_scales
    from kubellama_server.testing.live import LiveServer
    from kubellama_server.testing.tiny_gguf import build_tiny_gguf, build_tiny_lora

    a, b = build_tiny_lora(tmp_path / "a.gguf"), build_tiny_lora(tmp_path / "b.gguf", seed=7)
    srv = LiveServer(["-m", str(build_tiny_gguf(tmp_path / "m.gguf")), "-t", "1", "-np", "1", "--metrics",
                      "--lora", str(a), "--lora-scaled", str(b), "0.5"]).start()
    monkeypatch.setattr(lora_scales, "SERVER_PORT", srv.port)
    try:
        await api.create(LS, "llamaservers", llama(model={"url": URL, "loras": [
            {"url": "https://models.test/a.gguf"}, {"url": "https://models.test/b.gguf", "scale": 0.5}]}))
        for name in ("gemma-0", "gemma-1"):
            ready = pod(name, server=RUNNING, ready=True)
            ready["status"]["podIP"] = "127.0.0.1"
            await api.create("v1", "pods", ready)
        agree = await eventually(lambda: (c := next((c for c in status_of(api).get("conditions", [])
                                                     if c["type"] == "LoraScalesAgree"), None)) and c["status"] == "True" and c)
        assert agree["message"] == "2 ready pods run the spec's LoRA scales [1, 0.5]"
        r = await asyncio.to_thread(httpx.post, srv.url + "/lora-adapters", json=[{"id": 0, "scale": 1.0}])
        assert r.status_code == 200
        differ = await eventually(lambda: condition(status_of(api), "LoraScalesAgree")["status"] == "False"
                                  and condition(status_of(api), "LoraScalesAgree"))
        assert differ["reason"] == "ScalesDiffer" and "gemma-0 [1, 0], gemma-1 [1, 0]" in differ["message"]
        assert differ["message"] in status_of(api)["message"]
        await eventually(lambda: events(api, "LoraScalesDiffer", "Warning"))
    finally:
        srv.stop()


async def test_missing_secret_is_seen_in_the_pods_status_then_recovers(api, operator):
    """The operator reads no Secret: the kubelet's CreateContainerConfigError of check-api-key says it is missing."""
    await api.create(LS, "llamaservers", llama(apiKeySecretRef={"name": "gemma-key"}))
    sts = await eventually(lambda: api.objects("apps/v1/statefulsets").get("gemma"))
    template = sts["spec"]["template"]
    assert template["spec"]["initContainers"][0]["name"] == "check-api-key"
    assert "--api-key-file" in template["spec"]["containers"][0]["args"]
    # What the kubelet reports for a pod whose container needs a Secret that does not exist.
    await api.create("v1", "pods", {
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "gemma-0", "namespace": NAMESPACE, "labels": template["metadata"]["labels"]},
        "spec": template["spec"],
        "status": {"phase": "Pending", "initContainerStatuses": [
            {"name": "check-api-key", "ready": False, "restartCount": 0, "state": {"waiting": {
                "reason": "CreateContainerConfigError", "message": 'secret "gemma-key" not found'}}},
            {"name": "fetch-model", "ready": False, "restartCount": 0,
             "state": {"waiting": {"reason": "PodInitializing"}}}]}})
    status = await phase_is(api, "Failed")
    fix = f"kubectl -n {NAMESPACE} create secret generic gemma-key --from-literal=api-key="
    assert "Secret 'gemma-key' (spec.apiKeySecretRef) not found" in status["message"] and fix in status["message"]
    available = condition(status, "Available")
    assert (available["status"], available["reason"]) == ("False", "SecretNotFound")
    await eventually(lambda: any("gemma-key" in e["message"] for e in events(api, "Failed", "Warning")))

    # The Secret is created: the kubelet starts the pod.
    await api.patch("v1", "pods", "gemma-0", {"status": {"initContainerStatuses": [
        {"name": "check-api-key", "ready": False, "restartCount": 0, **exited(0)},
        {"name": "fetch-model", "ready": False, "restartCount": 0, **RUNNING}]}})
    await phase_is(api, "Downloading")
    assert not [n for n in rbac_needs(api) if n[1] == "secrets"], "the operator reads no Secret"
    assert_rbac_covers(api)


async def test_missing_claim_and_invalid_spec_do_not_crash(api, operator):
    await api.create(LS, "llamaservers", llama("frompvc", model={"pvc": {"claimName": "models", "path": "m.gguf"}}))
    await api.create(LS, "llamaservers", {**llama("bad"), "spec": {"model": {}, "replicas": 1}})
    status = await phase_is(api, "Failed", "frompvc")
    assert "PersistentVolumeClaim 'models'" in status["message"]
    status = await phase_is(api, "Failed", "bad")
    assert "exactly one source" in status["message"]
    # The operator still serves other LlamaServers.
    await api.create(LS, "llamaservers", llama("fine"))
    await eventually(lambda: api.objects("apps/v1/statefulsets").get("fine"))


async def test_extra_args_the_server_would_misread_fail_the_spec(api, operator):
    """An abbreviation or attached value would override a managed flag; an unknown flag would crash-loop the pod."""
    await api.create(LS, "llamaservers", llama(server={"extraArgs": ["--hos=0.0.0.0"]}))
    await api.create(LS, "llamaservers", llama("attached", server={"extraArgs": ["-m/models/other.gguf"]}))
    status = await phase_is(api, "Failed")
    assert "--hos=0.0.0.0" in status["message"] and "kubellama-server" in status["message"]
    assert condition(status, "ModelReady")["reason"] == "InvalidSpec"
    assert "-m/--model" in (await phase_is(api, "Failed", "attached"))["message"]
    await eventually(lambda: any("--hos=0.0.0.0" in e["message"] for e in events(api, "InvalidSpec", "Warning")))
    assert not api.objects("apps/v1/statefulsets"), "no pod is started with flags the server would misread"


async def test_allow_lists_refuse_an_image_and_a_service_account(api):
    import dataclasses

    running = Running(dataclasses.replace(TEST_CONFIG, allowed_images=("registry.test/*",),
                                          allowed_service_accounts=("llm",)))
    await running.start()
    try:
        await api.create(LS, "llamaservers", llama(image="docker.io/attacker/miner:1", serviceAccountName="admin"))
        await api.create(LS, "llamaservers", llama("allowed", image="registry.test/kubellama-server:2",
                                                   serviceAccountName="llm"))
        status = await phase_is(api, "Failed")
        assert "spec.image 'docker.io/attacker/miner:1' is not allowed" in status["message"]
        assert "spec.serviceAccountName 'admin' is not allowed" in status["message"]
        assert condition(status, "ModelReady")["reason"] == "InvalidSpec"
        sts = await eventually(lambda: api.objects("apps/v1/statefulsets").get("allowed"))
        assert sts["spec"]["template"]["spec"]["containers"][0]["image"] == "registry.test/kubellama-server:2"
        assert "gemma" not in api.objects("apps/v1/statefulsets")
    finally:
        await running.stop()


async def test_replicas_sharing_a_readwriteonce_claim_are_warned_about(api, operator):
    await api.create("v1", "persistentvolumeclaims", {
        "apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "cache"},
        "spec": {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "1Gi"}}}})
    await api.create(LS, "llamaservers", llama(replicas=2, storage={"model": {"claimName": "cache"}}))
    sts = await eventually(lambda: api.objects("apps/v1/statefulsets").get("gemma"))
    assert "volumeClaimTemplates" not in sts["spec"], "the shared claim replaces per-replica claims"
    status = await eventually(lambda: "ReadWriteMany" in status_of(api).get("message", "") and status_of(api))
    assert status["phase"] == "Pending", "a warning, not a failure: one-node clusters can share RWO claims"
    await eventually(lambda: events(api, "SharedClaimNotShareable", "Warning"))


async def test_restart_resumes_without_duplicates(api, operator):
    await api.create(LS, "llamaservers", llama(replicas=2))
    await eventually(lambda: len(api.objects("v1/services")) == 2 and api.objects("policy/v1/poddisruptionbudgets"))
    await phase_is(api, "Pending")
    await operator.stop()
    seen = len(list(api.kmock))
    before = {r: copy.deepcopy(api.objects(r)) for r in ("apps/v1/statefulsets", "v1/services",
                                                           "policy/v1/poddisruptionbudgets")}
    resumed = counter("kubellama_operator_reconcile_total", trigger="resume", result="success")
    timer = counter("kubellama_operator_reconcile_total", trigger="timer", result="success")
    unchanged = counter("kubellama_operator_children_applied_total", kind="StatefulSet", action="unchanged")
    restarted = Running(TEST_CONFIG)
    await restarted.start()
    try:
        # It resumed, then ran two resync passes, each comparing the children with what it wants (not a stall).
        await eventually(lambda: counter("kubellama_operator_reconcile_total", trigger="resume", result="success")
                         > resumed and counter("kubellama_operator_reconcile_total", trigger="timer",
                                               result="success") >= timer + 2,
                         timeout=10 * TEST_CONFIG.resync_seconds, what="the restarted operator's resume and resyncs")
        assert counter("kubellama_operator_children_applied_total", kind="StatefulSet",
                       action="unchanged") >= unchanged + 3
        after_requests = list(api.kmock)[seen:]
        writes = [(r.method, r.url.path) for r in after_requests
                  if r.method in ("POST", "PUT", "DELETE", "PATCH") and "/events" not in r.url.path
                  and "/llamaservers" not in r.url.path]
        assert writes == [], f"a restart must not rewrite unchanged children: {writes}"
        for res, objs in before.items():
            assert api.objects(res) == objs
    finally:
        await restarted.stop()


@pytest.fixture
def servicemonitor_crd(request):
    return getattr(request, "param", True)


@pytest.mark.parametrize("servicemonitor_crd", [True, False], indirect=True, ids=["with-crd", "without-crd"])
async def test_servicemonitor_when_crd_installed(api, operator, servicemonitor_crd):
    await api.create(LS, "llamaservers", llama(monitoring={"serviceMonitor": True}))
    sts = await eventually(lambda: api.objects("apps/v1/statefulsets").get("gemma"))
    annotations = sts["spec"]["template"]["metadata"].get("annotations", {})
    if servicemonitor_crd:
        sm = await eventually(lambda: api.objects("monitoring.coreos.com/v1/servicemonitors").get("gemma"))
        assert sm["spec"]["endpoints"][0]["port"] == "http"
        assert "prometheus.io/scrape" not in annotations
    else:
        assert annotations["prometheus.io/scrape"] == "true"
    assert_rbac_covers(api)
