"""Issue 19 on the control plane (kwok plays the nodes and runs no container): a shared cache filled by one
CPU-only Job before any server pod, two LlamaServers naming one file, and a model change with the Surge
strategy during which the Service's EndpointSlices (watched, not sampled) always have a Ready endpoint."""

from __future__ import annotations

import time

import kubellama_controlplane as kcp
import pytest
from chart_operator import rbac_is_exactly_enough  # noqa: F401 - autouse: no request RBAC refused
from chart_operator import (LLAMA_API, MODEL_URL, chart_operator, llama,
                            status_of, wait_phase)
from endpoint_watch import ReadyWatch

kcp.skip_module_if_unavailable()

OTHER_URL = "http://models.invalid/models/tiny-q8_0.gguf"
OWNER = "kubellama.dev/llamaserver"


@pytest.fixture(scope="module")
def operator(control_plane: kcp.ControlPlane, kube: kcp.Kube, helm, llama_crd, tmp_path_factory):
    with chart_operator(control_plane, kube, helm, tmp_path_factory.mktemp("operator-models"), "km") as running:
        yield running


def jobs(kube, name, namespace):
    return kube.list("batch/v1", "Job", namespace, labelSelector=f"{OWNER}={name}")


def server_pods(kube, name, namespace):
    return kube.list("v1", "Pod", namespace,
                     labelSelector=f"{OWNER}={name},app.kubernetes.io/name=kubellama-server")


def model_path(sts):
    args = sts["spec"]["template"]["spec"]["containers"][0]["args"]
    return args[args.index("-m") + 1]


def test_a_shared_cache_is_filled_by_one_cpu_job_before_the_two_replicas_start(kube, operator, namespace):
    kube.create(llama("pair", namespace, replicas=2, gpu={"count": 1},
                      model={"url": MODEL_URL, "cache": {"mode": "shared"}}))
    status = wait_phase(kube, operator, "pair", namespace, "Ready", timeout=90, readyReplicas=2)
    [job] = jobs(kube, "pair", namespace)
    assert job["status"].get("succeeded") == 1
    pod = job["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model"]
    assert "nvidia.com/gpu" not in str(pod), "the download Job holds no GPU"
    # The StatefulSet (and so every GPU pod) came after the download.
    sts = kube.read("apps/v1", "StatefulSet", "pair", namespace)
    assert sts["metadata"]["creationTimestamp"] >= job["status"]["completionTime"]
    assert "volumeClaimTemplates" not in sts["spec"]
    claim = kube.read("v1", "PersistentVolumeClaim", "kubellama-model-cache", namespace)
    assert claim["spec"]["accessModes"] == ["ReadWriteMany"]
    for p in server_pods(kube, "pair", namespace):
        assert "initContainers" not in p["spec"]
        assert {"name": "model", "persistentVolumeClaim": {"claimName": "kubellama-model-cache", "readOnly": True}} \
            in p["spec"]["volumes"]
    key = status["cache"]["keys"][0]
    assert model_path(sts) == f"/models/{key}/tiny-q4_0.gguf"
    assert status["download"]["state"] == "Complete"
    assert {c["type"]: c["reason"] for c in status["conditions"]}["ModelReady"] in ("Downloaded", "InCache")


def test_two_llamaservers_naming_one_file_share_it(kube, operator, namespace):
    kube.create({"apiVersion": "v1", "kind": "PersistentVolumeClaim", "metadata": {"name": "models"},
                 "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "10Gi"}}}},
                namespace=namespace)
    for name in ("left", "right"):
        kube.create(llama(name, namespace, model={"url": MODEL_URL, "alias": name,
                                                  "cache": {"mode": "claim", "claimName": "models"}}))
    for name in ("left", "right"):
        wait_phase(kube, operator, name, namespace, "Ready", timeout=90, readyReplicas=1)
    left, right = (kube.read("apps/v1", "StatefulSet", n, namespace) for n in ("left", "right"))
    assert model_path(left) == model_path(right)
    dests = {tuple(j["spec"]["template"]["spec"]["initContainers"][0]["args"][-2:])
             for n in ("left", "right") for j in jobs(kube, n, namespace)}
    assert len(dests) == 1, "both Jobs fetch into one folder (kubellama-fetch's lock: the second finds it there)"
    assert status_of(kube, "left", namespace)["cache"]["keys"] == status_of(kube, "right", namespace)["cache"]["keys"]


@pytest.mark.parametrize("replicas", [1, 2])
def test_a_model_change_never_leaves_the_service_without_a_ready_endpoint(control_plane, kube, operator, namespace,
                                                                         replicas):
    watch, seen_steps = _change_model(control_plane, kube, operator, namespace, f"swap{replicas}", replicas, "Surge")
    counts = watch.counts
    assert len(counts) > 3, counts
    assert watch.never_empty(), f"the Service had no Ready endpoint at some point: {counts}"
    assert len(watch.pods) >= replicas + 1, f"no surge pod served: {watch.pods}"
    # Steps go by fast with kwok (polled here, so some may be missed); the watch above saw the extra pod serve.
    assert seen_steps & {"Surge", "Replacing", "ScalingDown"}, seen_steps
    assert any(s.startswith("slots:") and "not restored" in s for s in seen_steps), seen_steps
    assert len(jobs(kube, f"swap{replicas}", namespace)) == 1, "the first model's Job is deleted once the new one is there"


def test_the_watch_sees_the_gap_of_a_rolling_update_with_one_replica(control_plane, kube, operator, namespace):
    """The negative control: the default strategy replaces the only pod, and the same watch sees no endpoint."""
    watch, _ = _change_model(control_plane, kube, operator, namespace, "plain", 1, "RollingUpdate")
    assert not watch.never_empty(), watch.counts


def _change_model(control_plane, kube, operator, namespace, name, replicas, strategy):
    kube.create(llama(name, namespace, replicas=replicas, rollout={"strategy": strategy},
                      storage={"slots": {"enabled": True}},
                      model={"url": MODEL_URL, "cache": {"mode": "shared"}}))
    wait_phase(kube, operator, name, namespace, "Ready", timeout=90, readyReplicas=replicas)
    kube.wait_for(lambda: any(_ready_count(s) == replicas for s in
                              kube.list("discovery.k8s.io/v1", "EndpointSlice", namespace,
                                        labelSelector=f"kubernetes.io/service-name={name}")),
                  f"{replicas} ready endpoints")
    old = model_path(kube.read("apps/v1", "StatefulSet", name, namespace))
    watch = ReadyWatch(kube, namespace, name)
    seen_steps: set[str] = set()
    try:
        kube.patch(kube.path(LLAMA_API, "LlamaServer", namespace, name), {"spec": {"model": {"url": OTHER_URL}}})

        def rolled():
            st = status_of(kube, name, namespace)
            seen_steps.add((st.get("rollout") or {}).get("phase", ""))
            if st.get("rollout", {}).get("slots"):
                seen_steps.add("slots:" + st["rollout"]["slots"])
            sts = kube.read("apps/v1", "StatefulSet", name, namespace)
            pods = server_pods(kube, name, namespace)
            return (model_path(sts) != old and sts["spec"]["replicas"] == replicas and not st.get("rollout")
                    and st.get("phase") == "Ready" and len(pods) == replicas
                    and sts["status"].get("updatedReplicas") == replicas
                    and sts["status"].get("currentRevision") == sts["status"].get("updateRevision"))
        kube.wait_for(rolled, "the new model on every pod, the extra pod gone", timeout=120)
        time.sleep(2)  # the last endpoint changes
    finally:
        watch.stop()
    return watch, seen_steps


def _ready_count(slice_):
    return sum(1 for ep in slice_.get("endpoints") or [] if (ep.get("conditions") or {}).get("ready"))


def test_files_no_llamaserver_uses_are_removed_after_the_grace_period(kube, operator, namespace):
    cache = {"mode": "shared", "cleanupAfterSeconds": 0}
    for name in ("first", "second"):
        kube.create(llama(name, namespace, model={"url": MODEL_URL, "cache": cache}))
    for name in ("first", "second"):
        wait_phase(kube, operator, name, namespace, "Ready", timeout=90, readyReplicas=1)
    [old_key] = status_of(kube, "first", namespace)["cache"]["keys"]

    def moved(name):
        kube.patch(kube.path(LLAMA_API, "LlamaServer", namespace, name), {"spec": {"model": {"url": OTHER_URL}}})
        kube.wait_for(lambda: (st := status_of(kube, name, namespace)).get("phase") == "Ready"
                      and st["cache"]["keys"] != [old_key] and not st.get("rollout"), f"{name} on the new model",
                      timeout=90)

    # "first" lets go of the file, but "second" still uses it: released, not removed.
    moved("first")
    # moved() saw a pass with no rollout step: that pass (status last) already decided about cleanup
    st = status_of(kube, "first", namespace)
    assert [r["key"] for r in st["cache"]["released"]] == [old_key], st["cache"]
    assert not kube.list("batch/v1", "Job", namespace, labelSelector="app.kubernetes.io/component=cache-cleanup")
    # Once "second" moves too, nobody uses it: a cleanup Job removes it and the status says so.
    moved("second")
    st = kube.wait_for(lambda: (s := status_of(kube, "second", namespace)).get("cache", {}).get("removed") and s,
                       "the cleanup to be reported", timeout=90)
    assert st["cache"]["removed"] == [old_key] and not st["cache"].get("released"), st["cache"]


def test_a_surge_without_a_free_gpu_waits_and_says_why(control_plane, kube, operator, namespace):
    """Every GPU busy: the extra pod cannot start, the old pods keep serving and the status says why; switching to
    RollingUpdate then replaces the pods in place."""
    gpus = len(control_plane.gpu_nodes)
    kube.create(llama("full", namespace, replicas=gpus, gpu={"count": 1}, rollout={"strategy": "Surge"},
                      model={"url": MODEL_URL, "cache": {"mode": "shared"}}))
    wait_phase(kube, operator, "full", namespace, "Ready", timeout=90, readyReplicas=gpus)
    path = kube.path(LLAMA_API, "LlamaServer", namespace, "full")
    kube.patch(path, {"spec": {"model": {"url": OTHER_URL}}})
    st = kube.wait_for(lambda: "Insufficient nvidia.com/gpu" in ((s := status_of(kube, "full", namespace))
                                                                  .get("rollout") or {}).get("message", "") and s,
                       "the surge pod's reason in the status", timeout=90)
    assert st["readyReplicas"] == gpus and st["rollout"]["phase"] == "Surge", st
    assert "keep serving" in st["message"]
    kube.patch(path, {"spec": {"rollout": {"strategy": "RollingUpdate"}}})

    def replaced():
        sts = kube.read("apps/v1", "StatefulSet", "full", namespace)
        s = sts["status"]
        return (sts["spec"]["replicas"] == gpus and s.get("updatedReplicas") == gpus and s.get("readyReplicas") == gpus
                and s.get("currentRevision") == s.get("updateRevision") and model_path(sts).endswith("tiny-q8_0.gguf"))
    kube.wait_for(replaced, "the pods replaced in place", timeout=120)
    wait_phase(kube, operator, "full", namespace, "Ready", timeout=60, readyReplicas=gpus)
