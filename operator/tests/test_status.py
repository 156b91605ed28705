"""Status computation from pods and the StatefulSet (pure)."""

from __future__ import annotations

import pytest

from kubellama_operator.spec import normalize, resolve_model
from kubellama_operator.status import compute_status, essence, pod_view

MODEL = resolve_model(normalize({"model": {"url": "https://m.test/a.gguf"}}))
PVC_MODEL = resolve_model(normalize({"model": {"pvc": {"claimName": "c", "path": "a.gguf"}}}))
RUNNING = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}


def pod(init=None, server=None, ready=False, **status):
    st = dict(status)
    if init is not None:
        st["initContainerStatuses"] = [{"name": "fetch-model", **init}]
    if server is not None:
        st["containerStatuses"] = [{"name": "server", "ready": ready, **server}]
    return {"metadata": {"name": "p"}, "status": st}


def compute(pods, desired=1, problems=(), sts=None, previous=None, model=MODEL):
    return compute_status(name="m", namespace="ns", generation=3, desired=desired, model=model,
                          endpoint="http://m.ns.svc:8080/v1", selector="a=b", pods=pods,
                          statefulset=sts if sts is not None else {"metadata": {"generation": 1},
                                                                  "status": {"observedGeneration": 1,
                                                                             "updatedReplicas": desired}},
                          problems=list(problems), previous=previous, now="2026-01-01T00:00:00Z")


def cond(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


@pytest.mark.parametrize("code,reason", [(3, "ModelNotFound"), (4, "Unauthorized"), (5, "NetworkUnreachable"),
                                         (6, "DiskFull"), (7, "ChecksumMismatch"), (8, "NotGGUF"),
                                         (1, "DownloadFailed")])
def test_fetch_exit_codes_become_reasons(code, reason):
    view = pod_view(pod(init={"state": {"terminated": {"exitCode": code, "message": "the fetcher says why"}}}))
    assert (view.stage, view.reason) == ("Failed", reason)
    assert "the fetcher says why" in view.message


def test_crashlooping_fetch_uses_last_termination():
    view = pod_view(pod(init={"state": {"waiting": {"reason": "CrashLoopBackOff"}},
                              "lastState": {"terminated": {"exitCode": 4, "message": "401 from huggingface.co"}}}))
    assert (view.stage, view.reason) == ("Failed", "Unauthorized") and "401" in view.message


def test_fetch_without_message_still_explains():
    view = pod_view(pod(init={"state": {"terminated": {"exitCode": 7}}}))
    assert "exited with code 7" in view.message


@pytest.mark.parametrize("p,stage", [
    (pod(), "Pending"),
    (pod(init={"state": RUNNING}), "Downloading"),
    (pod(init={"state": {"terminated": {"exitCode": 0}}}, server={"state": {"waiting": {"reason": "ContainerCreating"}}}), "Pending"),
    (pod(init={"state": {"terminated": {"exitCode": 0}}}, server={"state": RUNNING}), "Loading"),
    (pod(init={"state": {"terminated": {"exitCode": 0}}}, server={"state": RUNNING}, ready=True), "Ready"),
    (pod(server={"state": {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}}), "Failed"),
])
def test_pod_stages(p, stage):
    assert pod_view(p).stage == stage


def test_unschedulable_pod_says_why():
    p = pod(conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                         "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}])
    status = compute([p])
    assert status["phase"] == "Pending" and "Insufficient nvidia.com/gpu" in status["message"]


def test_ready_when_all_replicas_ready_and_rolled_out():
    ready = pod(init={"state": {"terminated": {"exitCode": 0}}}, server={"state": RUNNING}, ready=True)
    status = compute([ready, ready], desired=2)
    assert status["phase"] == "Ready" and status["ready"] == "2/2" and status["readyReplicas"] == 2
    assert cond(status, "Available")["status"] == "True"
    assert cond(status, "ModelReady")["status"] == "True"
    assert cond(status, "Progressing")["reason"] == "Complete"
    # Old pods still ready but the StatefulSet is mid-rollout: not Ready yet.
    rolling = compute([ready, ready], desired=2, sts={"metadata": {"generation": 2},
                                                      "status": {"observedGeneration": 2, "updatedReplicas": 1}})
    assert rolling["phase"] != "Ready" and cond(rolling, "Progressing")["status"] == "True"


def test_degraded_vs_failed():
    ready = pod(server={"state": RUNNING}, ready=True)
    broken = pod(init={"state": {"terminated": {"exitCode": 7, "message": "sha256 mismatch"}}})
    assert compute([ready, broken], desired=2)["phase"] == "Degraded"
    failed = compute([broken], desired=1)
    assert failed["phase"] == "Failed" and "sha256 mismatch" in failed["message"]
    assert cond(failed, "ModelReady")["reason"] == "ChecksumMismatch"
    assert cond(failed, "Available")["status"] == "False"


def test_problems_win():
    status = compute([], problems=["Secret 'k' not found"])
    assert status["phase"] == "Failed" and status["message"] == "Secret 'k' not found"
    assert cond(status, "ModelReady")["reason"] == "InvalidSpec"


def test_scaled_to_zero():
    status = compute([], desired=0)
    assert status["phase"] == "Ready" and status["ready"] == "0/0"


def test_pvc_model_is_ready_once_a_pod_exists():
    status = compute([pod(server={"state": RUNNING})], model=PVC_MODEL)
    assert cond(status, "ModelReady")["reason"] == "FromClaim"


def test_transition_time_kept_while_condition_unchanged():
    first = compute([pod(init={"state": RUNNING})])
    later = compute_status(name="m", namespace="ns", generation=3, desired=1, model=MODEL, endpoint="e",
                           selector="a=b", pods=[pod(init={"state": RUNNING})], statefulset=None, problems=[],
                           previous=first, now="2026-01-01T01:00:00Z")
    assert cond(later, "ModelReady")["lastTransitionTime"] == "2026-01-01T00:00:00Z"
    assert essence(first)["conditions"][0].get("lastTransitionTime") is None


def test_model_size_from_fetch_termination_message():
    p = pod(init={"state": {"terminated": {"exitCode": 0, "message": '{"path": "/models/a.gguf", "size": 42}'}}},
            server={"state": RUNNING})
    status = compute([p])
    assert status["model"]["sizeBytes"] == 42
    # Kept when pods are replaced by ones whose fetch had nothing to do.
    again = compute([pod(server={"state": RUNNING})], previous=status)
    assert again["model"]["sizeBytes"] == 42
