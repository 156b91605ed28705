"""Status computation from pods and the StatefulSet (pure)."""

from __future__ import annotations

import pytest

from kubellama_operator.spec import parse, resolve_model
from kubellama_operator.status import compute_status, essence, fetchers, pod_view

MODEL = resolve_model(parse({"model": {"url": "https://m.test/a.gguf"}}))
PVC_MODEL = resolve_model(parse({"model": {"pvc": {"claimName": "c", "path": "a.gguf"}}}))
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


# --- the multimodal projector's download (fetch-mmproj, after fetch-model) ---------------------------

MM_MODEL = resolve_model(parse({"model": {"url": "https://m.test/a.gguf",
                                              "mmproj": {"url": "https://m.test/mmproj-f16.gguf"}}}))
PVC_MM_MODEL = resolve_model(parse({"model": {"pvc": {"claimName": "c", "path": "a.gguf"},
                                                  "mmproj": {"url": "https://m.test/mmproj-f16.gguf"}}}))
PVC_MM_PATH = resolve_model(parse({"model": {"pvc": {"claimName": "c", "path": "a.gguf"},
                                                 "mmproj": {"path": "mmproj.gguf"}}}))
DONE = {"state": {"terminated": {"exitCode": 0}}}
WAITING = {"state": {"waiting": {"reason": "PodInitializing"}}}


def mm_pod(model=None, mmproj=None, server=None, ready=False):
    inits = [{"name": n, **s} for n, s in (("fetch-model", model), ("fetch-mmproj", mmproj)) if s is not None]
    p = pod(server=server, ready=ready)
    p["status"]["initContainerStatuses"] = inits
    return p


@pytest.mark.parametrize("code,reason", [(3, "ModelNotFound"), (4, "Unauthorized"), (7, "ChecksumMismatch"),
                                         (8, "NotGGUF"), (1, "DownloadFailed")])
def test_failed_projector_download_is_reported_like_the_models(code, reason):
    msg = "kubellama-fetch: error: 404 Not Found: https://m.test/mmproj-f16.gguf"
    p = mm_pod(model=DONE, mmproj={"state": {"terminated": {"exitCode": code, "message": msg}}})
    view = pod_view(p)
    assert (view.stage, view.reason, view.fetcher) == ("Failed", reason, "fetch-mmproj")
    assert view.message == f"multimodal projector download failed: {msg}"
    status = compute([p], model=MM_MODEL)
    assert status["phase"] == "Failed" and status["message"] == view.message
    model_ready = cond(status, "ModelReady")
    assert (model_ready["status"], model_ready["reason"], model_ready["message"]) == ("False", reason, view.message)


def test_crashlooping_projector_download_uses_last_termination():
    p = mm_pod(model=DONE, mmproj={"state": {"waiting": {"reason": "CrashLoopBackOff"}},
                                   "lastState": {"terminated": {"exitCode": 4, "message": "401 from huggingface.co"}}})
    view = pod_view(p)
    assert (view.stage, view.reason) == ("Failed", "Unauthorized")
    assert view.message.startswith("multimodal projector download failed") and "401" in view.message


def test_the_model_download_is_reported_before_the_projectors():
    failed = mm_pod(model={"state": {"terminated": {"exitCode": 3, "message": "no model"}}}, mmproj=WAITING)
    assert pod_view(failed).message == "model download failed: no model"
    downloading = mm_pod(model={"state": RUNNING}, mmproj=WAITING)
    assert (pod_view(downloading).message, pod_view(downloading).fetcher) == ("downloading the model", "fetch-model")


def test_projector_download_progress():
    p = mm_pod(model=DONE, mmproj={"state": RUNNING})
    view = pod_view(p)
    assert (view.stage, view.fetcher, view.message) == ("Downloading", "fetch-mmproj",
                                                        "downloading the multimodal projector")
    progress = {"event": "progress", "file": "mmproj-f16.gguf", "bytes_done": 1 << 28, "bytes_total": 1 << 30,
                "percent": 25.0}
    status = compute_status(name="m", namespace="ns", generation=3, desired=1, model=MM_MODEL, endpoint="e",
                            selector="a=b", pods=[p], statefulset=None, problems=[], progress=progress,
                            now="2026-01-01T00:00:00Z")
    assert status["phase"] == "Downloading"
    assert status["message"] == "downloading the multimodal projector mmproj-f16.gguf: 25% of 1.0 GiB"
    assert (cond(status, "ModelReady")["status"], cond(status, "ModelReady")["reason"]) == ("False", "Downloading")
    # Between the two downloads (fetch-mmproj not started yet): the model alone is not "in place".
    between = compute([mm_pod(model=DONE, mmproj=WAITING)], model=MM_MODEL)
    assert cond(between, "ModelReady")["status"] != "True"


def test_model_ready_names_the_projector_once_both_are_fetched():
    p = mm_pod(model={"state": {"terminated": {"exitCode": 0, "message": '{"path": "/models/a.gguf", "size": 42}'}}},
               mmproj={"state": {"terminated": {"exitCode": 0, "message": '{"path": "/models/mmproj/x", "size": 7}'}}},
               server={"state": RUNNING})
    status = compute([p], model=MM_MODEL)
    model_ready = cond(status, "ModelReady")
    assert (model_ready["status"], model_ready["reason"]) == ("True", "Downloaded")
    assert model_ready["message"] == \
        "model file /models/a.gguf and projector /models/mmproj/mmproj-f16.gguf are in place"
    assert status["model"]["sizeBytes"] == 42, "the model's size, not the projector's"
    assert status["model"]["mmproj"] == "mmproj-f16.gguf"
    assert "mmproj" not in compute([p])["model"]


def test_pvc_model_with_a_downloaded_projector():
    # Only fetch-mmproj runs; the model is not "from the claim" alone until the projector is in place.
    downloading = compute([mm_pod(mmproj={"state": RUNNING})], model=PVC_MM_MODEL)
    assert cond(downloading, "ModelReady")["reason"] == "Downloading"
    failed = compute([mm_pod(mmproj={"state": {"terminated": {"exitCode": 5, "message": "unreachable"}}})],
                     model=PVC_MM_MODEL)
    assert cond(failed, "ModelReady")["reason"] == "NetworkUnreachable"
    assert failed["message"] == "multimodal projector download failed: unreachable"
    loaded = compute([mm_pod(mmproj=DONE, server={"state": RUNNING})], model=PVC_MM_MODEL)
    assert (cond(loaded, "ModelReady")["status"], cond(loaded, "ModelReady")["reason"]) == ("True", "Downloaded")
    assert loaded["phase"] == "Loading"
    # A projector on the claim too: nothing to download.
    from_claim = compute([pod(server={"state": RUNNING})], model=PVC_MM_PATH)
    assert cond(from_claim, "ModelReady")["reason"] == "FromClaim"
    assert from_claim["model"]["mmproj"] == "mmproj.gguf"


# --- LoRA adapters' downloads (fetch-lora-<i>, after fetch-model and fetch-mmproj) --------------------------

LORA_MODEL = resolve_model(parse({"model": {"url": "https://m.test/a.gguf", "loras": [
    {"name": "sql", "url": "https://m.test/sql/adapter.gguf"}, {"url": "https://m.test/support/adapter.gguf"}]}}))
PVC_LORA_MODEL = resolve_model(parse({"model": {"pvc": {"claimName": "c", "path": "a.gguf"}, "loras": [
    {"path": "sql.gguf", "name": "sql"}, {"url": "https://m.test/support/adapter.gguf", "name": "support"}]}}))


def lora_pod(model=DONE, loras=(), server=None, ready=False, mmproj=None):
    """A pod whose fetch-lora-<i> have these states (fetch-model first unless `model` is None)."""
    inits = [{"name": n, **s} for n, s in (("fetch-model", model), ("fetch-mmproj", mmproj)) if s is not None]
    inits += [{"name": f"fetch-lora-{i}", **s} for i, s in enumerate(loras) if s is not None]
    p = pod(server=server, ready=ready)
    p["status"]["initContainerStatuses"] = inits
    return p


@pytest.mark.parametrize("code,reason", [(3, "ModelNotFound"), (4, "Unauthorized"), (7, "ChecksumMismatch"),
                                         (8, "NotGGUF"), (1, "DownloadFailed")])
def test_failed_lora_download_is_reported_like_the_models(code, reason):
    msg = "kubellama-fetch: error: 404 Not Found: https://m.test/support/adapter.gguf"
    p = lora_pod(loras=[DONE, {"state": {"terminated": {"exitCode": code, "message": msg}}}])
    view = pod_view(p, LORA_MODEL)
    assert (view.stage, view.reason, view.fetcher) == ("Failed", reason, "fetch-lora-1")
    assert view.message == f"LoRA adapter 1 download failed: {msg}"
    status = compute([p], model=LORA_MODEL)
    assert status["phase"] == "Failed" and status["message"] == view.message
    model_ready = cond(status, "ModelReady")
    assert (model_ready["status"], model_ready["reason"], model_ready["message"]) == ("False", reason, view.message)


def test_a_failed_adapter_is_named():
    p = lora_pod(loras=[{"state": {"waiting": {"reason": "CrashLoopBackOff"}},
                         "lastState": {"terminated": {"exitCode": 4, "message": "401 from huggingface.co"}}}, WAITING])
    status = compute([p], model=LORA_MODEL)
    assert status["message"] == "LoRA adapter 0 (sql) download failed: 401 from huggingface.co"
    assert cond(status, "ModelReady")["reason"] == "Unauthorized"
    # Without the model (or for an adapter it does not have), the number alone.
    assert pod_view(p).message == "LoRA adapter 0 download failed: 401 from huggingface.co"


def test_downloads_are_reported_in_the_order_they_run():
    failed_model = lora_pod(model={"state": {"terminated": {"exitCode": 3, "message": "no model"}}}, loras=[WAITING])
    assert pod_view(failed_model, LORA_MODEL).message == "model download failed: no model"
    failed_mmproj = lora_pod(mmproj={"state": {"terminated": {"exitCode": 3, "message": "no mmproj"}}},
                             loras=[WAITING, WAITING])
    assert pod_view(failed_mmproj, LORA_MODEL).message == "multimodal projector download failed: no mmproj"
    # fetch-lora-10 runs after fetch-lora-9, not after fetch-lora-1 (and whatever order the kubelet lists them in).
    many = lora_pod(loras=[DONE] * 11, mmproj=DONE)
    inits = {s["name"]: s for s in reversed(many["status"]["initContainerStatuses"])}
    assert [name for name, _, _ in fetchers(inits)] == \
        ["fetch-model", "fetch-mmproj"] + [f"fetch-lora-{i}" for i in range(11)]
    assert [what for _, what, _ in fetchers(inits, LORA_MODEL)][:4] == \
        ["model", "multimodal projector", "LoRA adapter 0 (sql)", "LoRA adapter 1"]


def test_lora_download_progress():
    p = lora_pod(loras=[DONE, {"state": RUNNING}])
    view = pod_view(p, LORA_MODEL)
    assert (view.stage, view.fetcher, view.message) == ("Downloading", "fetch-lora-1", "downloading LoRA adapter 1")
    progress = {"event": "progress", "file": "adapter.gguf", "bytes_done": 1 << 26, "bytes_total": 1 << 28,
                "percent": 25.0, "rate_bytes_per_second": 1 << 20, "eta_seconds": 192.0}
    status = compute_status(name="m", namespace="ns", generation=3, desired=1, model=LORA_MODEL, endpoint="e",
                            selector="a=b", pods=[p], statefulset=None, problems=[], progress=progress,
                            now="2026-01-01T00:00:00Z")
    assert status["phase"] == "Downloading"
    assert status["message"] == "downloading LoRA adapter 1, adapter.gguf: 25% of 256.0 MiB, 1.0 MiB/s, about 3 min left"
    assert (cond(status, "ModelReady")["status"], cond(status, "ModelReady")["reason"]) == ("False", "Downloading")
    named = compute_status(name="m", namespace="ns", generation=3, desired=1, model=LORA_MODEL, endpoint="e",
                           selector="a=b", pods=[lora_pod(loras=[{"state": RUNNING}])], statefulset=None, problems=[],
                           progress=None, now="2026-01-01T00:00:00Z")
    assert named["message"] == "downloading LoRA adapter 0 (sql)"
    # The model is in place but an adapter is still to come: not "in place" yet.
    between = compute([lora_pod(loras=[DONE, WAITING])], model=LORA_MODEL)
    assert cond(between, "ModelReady")["status"] != "True"


def test_model_ready_and_status_list_the_adapters():
    p = lora_pod(model={"state": {"terminated": {"exitCode": 0, "message": '{"path": "/models/a.gguf", "size": 42}'}}},
                 loras=[{"state": {"terminated": {"exitCode": 0, "message": '{"size": 7}'}}}, DONE],
                 server={"state": RUNNING})
    status = compute([p], model=LORA_MODEL)
    model_ready = cond(status, "ModelReady")
    assert (model_ready["status"], model_ready["reason"]) == ("True", "Downloaded")
    assert model_ready["message"] == ("model file /models/a.gguf and LoRA adapters /models/lora/0/adapter.gguf, "
                                      "/models/lora/1/adapter.gguf are in place")
    assert status["model"]["sizeBytes"] == 42, "the model's size, not an adapter's"
    assert status["model"]["loras"] == [{"id": 0, "name": "sql", "file": "adapter.gguf"}, {"id": 1, "file": "adapter.gguf"}]
    assert "loras" not in compute([p])["model"]


def test_pvc_model_with_adapters_on_the_claim_and_downloaded():
    downloading = compute([lora_pod(model=None, loras=[None, {"state": RUNNING}])], model=PVC_LORA_MODEL)
    assert downloading["message"] == "downloading LoRA adapter 1 (support)"
    assert cond(downloading, "ModelReady")["reason"] == "Downloading"
    failed = compute([lora_pod(model=None, loras=[None, {"state": {"terminated": {"exitCode": 5,
                                                                                  "message": "unreachable"}}}])],
                     model=PVC_LORA_MODEL)
    assert failed["message"] == "LoRA adapter 1 (support) download failed: unreachable"
    assert cond(failed, "ModelReady")["reason"] == "NetworkUnreachable"
    loaded = compute([lora_pod(model=None, loras=[None, DONE], server={"state": RUNNING})], model=PVC_LORA_MODEL)
    assert (cond(loaded, "ModelReady")["status"], cond(loaded, "ModelReady")["reason"]) == ("True", "Downloaded")
    assert cond(loaded, "ModelReady")["message"] == \
        "model file /models/a.gguf and LoRA adapters /models/sql.gguf, /lora/1/adapter.gguf are in place"
    # Everything on the claim: nothing to download.
    on_claim = resolve_model(parse({"model": {"pvc": {"claimName": "c", "path": "a.gguf"},
                                                  "mmproj": {"path": "mm.gguf"}, "loras": [{"path": "l.gguf"}]}}))
    from_claim = compute([pod(server={"state": RUNNING})], model=on_claim)
    assert cond(from_claim, "ModelReady")["reason"] == "FromClaim"
    assert cond(from_claim, "ModelReady")["message"] == \
        "model file /models/a.gguf, projector /models/mm.gguf and LoRA adapter /models/l.gguf are in place"


def secret_pod(container, env, waiting_message, **extra_inits):
    """A pod whose `container` (an init container) needs a Secret through `env`, as the kubelet reports it."""
    inits = [{"name": container, "env": [{"name": env, "valueFrom": {"secretKeyRef": {"name": "keys", "key": "k1"}}}]}]
    return {"metadata": {"name": "p", "namespace": "ml"}, "spec": {"initContainers": inits, "containers": []},
            "status": {"initContainerStatuses": [{"name": container, "state": {"waiting": {
                "reason": "CreateContainerConfigError", "message": waiting_message}}}]}}


def test_missing_api_key_secret_says_how_to_create_it():
    view = pod_view(secret_pod("check-api-key", "API_KEY", 'secret "keys" not found'))
    assert (view.stage, view.reason) == ("Failed", "SecretNotFound")
    assert view.message == ("Secret 'keys' (spec.apiKeySecretRef) not found in namespace ml: create it, e.g. "
                            "`kubectl -n ml create secret generic keys --from-literal=k1=...`")
    status = compute([secret_pod("check-api-key", "API_KEY", 'secret "keys" not found')])
    assert status["phase"] == "Failed" and status["message"] == view.message
    assert (cond(status, "Available")["status"], cond(status, "Available")["reason"]) == ("False", "SecretNotFound")


def test_missing_key_and_missing_token_secret():
    view = pod_view(secret_pod("check-api-key", "API_KEY", "couldn't find key k1 in Secret ml/keys"))
    assert view.reason == "SecretKeyNotFound" and "spec.apiKeySecretRef.key" in view.message
    view = pod_view(secret_pod("fetch-model", "HF_TOKEN", 'secret "keys" not found'))
    assert (view.reason, view.fetcher) == ("SecretNotFound", "fetch-model")
    assert "(spec.model.tokenSecretRef)" in view.message
    # Another configuration error keeps the kubelet's words.
    view = pod_view(secret_pod("check-api-key", "API_KEY", 'configmap "other" not found'))
    assert (view.reason, view.message) == ("CreateContainerConfigError", 'check-api-key: configmap "other" not found')
