"""Issue 19, pure parts: cache keys and layout, the download Job, its state, the status it adds, the surge plan."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest

from kubellama_operator import model_cache, rollout
from kubellama_operator.builders import desired_children
from kubellama_operator.builders.download_job import build_download_job, download_state
from kubellama_operator.builders.meta import selector_labels
from kubellama_operator.config import OperatorConfig
from kubellama_operator.model_status import merge, slots_note
from kubellama_operator.api.model import FileSource
from kubellama_operator.spec import parse
from kubellama_operator.status import compute_status

CONFIG = OperatorConfig(cpu_image="reg.test/kubellama-server:1", cuda_image="reg.test/kubellama-server-cuda:1")
SHA = "ab" * 32
URL = "https://models.test/qwen/qwen-q4.gguf"


def spec_of(model=None, **rest):
    return parse({"model": model or {"url": URL, "cache": {"mode": "shared"}}, **rest})


def key(source):
    """The cache key of a source written as in the spec."""
    return model_cache.file_key(FileSource.model_validate(source))


def owner(name="chat", namespace="ml"):
    return {"metadata": {"name": name, "namespace": namespace, "uid": "uid-1"}}


def children(spec, name="chat"):
    want, _ = desired_children(owner(name), spec, model_cache.resolve(spec), CONFIG, servicemonitor_crd=False)
    return {o["kind"]: o for o in want}


# --- keys and layout -------------------------------------------------------------------------------------------

def test_a_known_sha256_is_the_key_whatever_the_url():
    a = key({"url": "https://a.test/x.gguf", "sha256": SHA.upper()})
    b = key({"huggingFace": {"repo": "o/r", "file": "y.gguf"}, "sha256": SHA})
    assert a == b == f"sha256-{SHA}"


@pytest.mark.parametrize("same", [
    "https://user:pw@models.test/qwen/qwen-q4.gguf",
    "https://models.test/qwen/qwen-q4.gguf?token=abc",
    "https://models.test/qwen/qwen-q4.gguf#frag",
])
def test_credentials_are_not_part_of_the_key(same):
    assert key({"url": same}) == key({"url": URL})


@pytest.mark.parametrize("other", [
    {"url": "https://models.test/other/qwen-q4.gguf"},           # same file name, other path
    {"url": "https://mirror.test/qwen/qwen-q4.gguf"},            # other host
    {"url": URL + "?version=2"},                                  # a query that is not a credential
    {"huggingFace": {"repo": "qwen/qwen", "file": "qwen-q4.gguf"}},
])
def test_different_sources_never_share_a_key(other):
    assert key(other) != key({"url": URL})
    assert key(other).startswith("src-")


def test_hub_revision_is_part_of_the_key_and_defaults_to_main():
    hf = {"repo": "o/r", "file": "m.gguf"}
    assert key({"huggingFace": hf}) == key({"huggingFace": {**hf, "revision": "main"}})
    assert key({"huggingFace": hf}) != key({"huggingFace": {**hf, "revision": "v2"}})
    assert key({"huggingFace": hf}) != key({"huggingFace": {**hf, "file": "sub/m.gguf"}})


def test_files_are_placed_under_their_keys_with_their_own_names():
    spec = spec_of({"url": "https://m.test/split/m-00001-of-00003.gguf", "sha256": SHA, "cache": {"mode": "shared"},
                    "mmproj": {"huggingFace": {"repo": "o/r", "file": "v/mmproj.gguf"}},
                    "loras": [{"url": "https://m.test/l/adapter.gguf", "name": "sql"},
                              {"url": "https://m.test/k/adapter.gguf"}]})
    m = model_cache.resolve(spec)
    assert m.path == f"/models/sha256-{SHA}/m-00001-of-00003.gguf"  # shards sit beside the first one
    assert m.fetch_args[-2:] == ("--dest", f"/models/sha256-{SHA}")
    mm_key = model_cache.file_key(spec.model.mmproj)
    assert m.mmproj.path == f"/models/{mm_key}/mmproj.gguf"
    assert m.mmproj.fetch_args[-2:] == ("--dest", f"/models/{mm_key}")
    # Two adapters with one file name: two folders.
    assert m.loras[0].path != m.loras[1].path
    assert [p.rsplit("/", 1)[1] for p in (m.loras[0].path, m.loras[1].path)] == ["adapter.gguf", "adapter.gguf"]
    files = model_cache.cache_files(spec, m)
    assert [f.container for f in files] == ["fetch-model", "fetch-mmproj", "fetch-lora-0", "fetch-lora-1"]
    assert [f.what for f in files][:3] == ["model", "multimodal projector", "LoRA adapter 0 (sql)"]


def test_two_llamaservers_naming_one_file_share_its_path():
    a = model_cache.resolve(spec_of())
    b = model_cache.resolve(spec_of({"url": URL, "alias": "other-name", "cache": {"mode": "claim", "claimName": "c"}}))
    assert a.path == b.path


def test_per_replica_keeps_todays_layout():
    m = model_cache.resolve(parse({"model": {"url": URL}}))
    assert m.path == "/models/qwen-q4.gguf"
    assert model_cache.mode(parse({"model": {"pvc": {"claimName": "c", "path": "m.gguf"}}})) == "perReplica"


# --- server pods with a shared cache ----------------------------------------------------------------------------

@pytest.mark.parametrize("cache, claim", [({"mode": "shared"}, "kubellama-model-cache"),
                                          ({"mode": "claim", "claimName": "rwx"}, "rwx")])
def test_server_pods_mount_the_shared_claim_read_only_and_download_nothing(cache, claim):
    spec = spec_of({"url": URL, "cache": cache, "mmproj": {"url": "https://m.test/mm.gguf"}}, replicas=2,
                   gpu={"count": 1})
    sts = children(spec)["StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    assert "initContainers" not in pod
    assert {"name": "model", "persistentVolumeClaim": {"claimName": claim, "readOnly": True}} in pod["volumes"]
    assert "volumeClaimTemplates" not in sts["spec"], "no per-replica model claim"
    args = pod["containers"][0]["args"]
    assert args[args.index("-m") + 1] == model_cache.resolve(spec).path
    kubernetes_validate.validate(sts, "1.33.0", strict=True)


def test_image_mode_mounts_an_image_volume():
    spec = spec_of({"url": URL, "sha256": SHA, "cache": {"mode": "image", "image": {
        "reference": "registry.test/models/qwen:1", "pullPolicy": "IfNotPresent"}}})
    sts = children(spec)["StatefulSet"]
    pod = sts["spec"]["template"]["spec"]
    assert {"name": "model", "image": {"reference": "registry.test/models/qwen:1", "pullPolicy": "IfNotPresent"}} \
        in pod["volumes"]
    assert "initContainers" not in pod and "volumeClaimTemplates" not in sts["spec"]
    assert model_cache.claim_name(spec) is None
    kubernetes_validate.validate(sts, "1.33.0", strict=True)


# --- the download Job ----------------------------------------------------------------------------------------------

def test_the_download_job_runs_kubellama_fetch_on_cpu_only():
    spec = spec_of({"huggingFace": {"repo": "o/r", "file": "m.gguf"}, "tokenSecretRef": {"name": "hf"},
                    "cache": {"mode": "shared"}, "loras": [{"url": "https://m.test/a.gguf"}]},
                   gpu={"count": 1, "product": "NVIDIA-L4"}, imagePullSecrets=[{"name": "pull"}])
    model = model_cache.resolve(spec)
    job = build_download_job(owner(), spec, model, OperatorConfig(cpu_image=CONFIG.cpu_image,
                                                                 hf_endpoint="https://hub.mirror.test"))
    kubernetes_validate.validate(job, "1.33.0", strict=True)
    pod = job["spec"]["template"]["spec"]
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model", "fetch-lora-0"]
    fetch = pod["initContainers"][0]
    assert fetch["command"] == ["kubellama-fetch"]
    assert fetch["args"][-2:] == ["--dest", model.path.rsplit("/", 1)[0]]
    env = {e["name"]: e for e in fetch["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"]["name"] == "hf"
    assert env["HF_ENDPOINT"]["value"] == "https://hub.mirror.test"
    assert "HF_TOKEN" not in {e["name"] for e in pod["initContainers"][1]["env"]}
    # No GPU: no GPU resource, no GPU toleration or node selector; the CPU image.
    text = str(job)
    assert "nvidia" not in text and "tolerations" not in pod and "nodeSelector" not in pod
    assert fetch["image"] == "reg.test/kubellama-server:1"
    assert pod["imagePullSecrets"] == [{"name": "pull"}]
    assert {"name": "cache", "persistentVolumeClaim": {"claimName": "kubellama-model-cache"}} in pod["volumes"]
    # Its pod is never a server pod (no Service traffic, not counted in status).
    labels = job["spec"]["template"]["metadata"]["labels"]
    assert not all(labels.get(k) == v for k, v in selector_labels("chat").items())
    # Usage, not found, unauthorized, checksum and not-GGUF failures are final.
    assert job["spec"]["podFailurePolicy"]["rules"][0]["onExitCodes"]["values"] == [2, 3, 4, 7, 8]


def test_the_job_name_follows_the_files():
    a = build_download_job(owner(), spec_of(), model_cache.resolve(spec_of()), CONFIG)
    other = spec_of({"url": "https://models.test/qwen/qwen-q8.gguf", "cache": {"mode": "shared"}})
    b = build_download_job(owner(), other, model_cache.resolve(other), CONFIG)
    again = build_download_job(owner(), spec_of(), model_cache.resolve(spec_of()), CONFIG)
    assert a["metadata"]["name"] != b["metadata"]["name"]
    assert a["metadata"]["name"] == again["metadata"]["name"] and a["metadata"]["name"].startswith("chat-fetch-")


RUNNING = {"running": {"startedAt": "2026-01-01T00:00:00Z"}}


def job_pod(name, *inits, created="2026-01-01T00:00:00Z"):
    return {"metadata": {"name": name, "creationTimestamp": created},
            "status": {"initContainerStatuses": [{"name": n, **s} for n, s in inits]}}


def test_download_state_from_job_and_pods():
    model = model_cache.resolve(spec_of())
    assert download_state("j", None, [], model).state == "Pending"
    running = download_state("j", {"status": {"active": 1}}, [job_pod("j-1", ("fetch-model", {"state": RUNNING}))],
                             model)
    assert (running.state, running.pod, running.fetcher, running.fetching) == ("Running", "j-1", "fetch-model", "model")
    failed_pod = job_pod("j-1", ("fetch-model", {"state": {"terminated": {"exitCode": 3, "message": "404: no such"}}}))
    failed = download_state("j", {"status": {"conditions": [{"type": "Failed", "status": "True",
                                                             "reason": "PodFailurePolicy"}]}}, [failed_pod], model)
    assert (failed.state, failed.reason) == ("Failed", "ModelNotFound") and "404: no such" in failed.message
    retrying = download_state("j", {"status": {"failed": 1}}, [failed_pod], model)
    assert retrying.state == "Running" and "retrying" in retrying.message
    unbound = {"metadata": {"name": "j-1"}, "status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "pod has unbound immediate PersistentVolumeClaims"}]}}
    waiting = download_state("j", {"status": {"active": 1}}, [unbound], model)
    assert waiting.state == "Pending" and "unbound immediate PersistentVolumeClaims" in waiting.message
    done = download_state("j", {"status": {"succeeded": 1, "conditions": [{"type": "Complete", "status": "True"}]}},
                          [], model)
    assert done.state == "Complete"


# --- status -------------------------------------------------------------------------------------------------------

def base_status(ready=0, desired=1):
    pods = [{"metadata": {"name": f"p{i}"}, "status": {"containerStatuses": [
        {"name": "server", "ready": True, "state": RUNNING}]}} for i in range(ready)]
    sts = {"metadata": {"generation": 1}, "status": {"observedGeneration": 1, "updatedReplicas": desired}} \
        if ready else None
    return compute_status(name="chat", namespace="ml", generation=2, desired=desired,
                          model=model_cache.resolve(spec_of()), endpoint="e", selector="s", pods=pods,
                          statefulset=sts, problems=[], previous={}, now="2026-01-01T00:00:00Z")


def cond(status, type_):
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_status_downloading_with_progress_before_any_pod():
    from kubellama_operator.builders.download_job import Download

    dl = Download("chat-fetch-1", "Running", "Downloading", "", pod="p", fetcher="fetch-model", fetching="model")
    progress = {"event": "progress", "file": "qwen-q4.gguf", "bytes_done": 50, "bytes_total": 100, "percent": 50.0}
    status = merge(base_status(), generation=2, previous={}, download=dl, progress=progress,
                   cache={"mode": "shared", "keys": ["k"]})
    assert status["phase"] == "Downloading"
    assert status["message"].startswith("downloading qwen-q4.gguf: 50% of 100 B")
    assert status["download"] == {"job": "chat-fetch-1", "state": "Running", "message": status["message"]}
    assert cond(status, "ModelReady")["reason"] == "Downloading"
    assert status["rollout"]["phase"] == "Downloading" and status["cache"]["keys"] == ["k"]


def test_status_keeps_serving_while_the_new_model_downloads_or_fails():
    from kubellama_operator.builders.download_job import Download

    running = merge(base_status(ready=1), generation=2, previous={},
                    download=Download("j", "Pending", "JobPending", "waiting for the download pod to start"))
    assert running["phase"] == "Ready" and "downloading the new files first" in running["message"]
    failed = merge(base_status(ready=1), generation=2, previous={},
                   download=Download("j", "Failed", "ChecksumMismatch", "model download failed: sha256 mismatch"))
    assert failed["phase"] == "Degraded" and "still serving the previous model" in failed["message"]
    assert cond(failed, "ModelReady")["reason"] == "ChecksumMismatch"
    alone = merge(base_status(), generation=2, previous={},
                  download=Download("j", "Failed", "Unauthorized", "model download failed: 401"))
    assert alone["phase"] == "Failed" and alone["message"] == "model download failed: 401"


def test_status_says_saved_slots_of_the_old_model_are_not_restored():
    note = slots_note(True, "old.gguf", "new.gguf")
    assert "not restored" in note and "old.gguf" in note and "new.gguf" in note
    assert slots_note(False, "old.gguf", "new.gguf") == "" and slots_note(True, "a.gguf", "a.gguf") == ""
    plan = rollout.Plan(2, 1, "Surge", rollout.describe("Surge", 1))
    status = merge(base_status(ready=1), generation=2, previous={}, plan=plan, slots=note)
    assert status["rollout"] == {"phase": "Surge", "message": plan.message, "slots": note}
    assert cond(status, "Progressing")["reason"] == "RollingOut"


# --- the surge rollout ---------------------------------------------------------------------------------------------

def desired_sts(template_marker="v1", n=1):
    return {"metadata": {"name": "chat", "annotations": {}},
            "spec": {"replicas": n, "template": {"metadata": {}, "spec": {"x": template_marker}}}}


def live_sts(desired, *, replicas, partition=0, step="", generation=2, observed=2, current="r1", update="r1",
             updated=0, ready=0):
    applied = rollout.apply_plan(desired, rollout.Plan(replicas, partition, step, ""))
    return {"metadata": {**applied["metadata"], "generation": generation}, "spec": applied["spec"],
            "status": {"observedGeneration": observed, "currentRevision": current, "updateRevision": update,
                       "updatedReplicas": updated, "readyReplicas": ready, "replicas": replicas}}


def spod(ordinal, revision, ready=True):
    return {"metadata": {"name": f"chat-{ordinal}", "labels": {"controller-revision-hash": revision}},
            "status": {"conditions": [{"type": "Ready", "status": "True" if ready else "False"}]}}


@pytest.mark.parametrize("n", [1, 2])
def test_surge_walks_through_its_steps(n):
    old, new = desired_sts("v1", n), desired_sts("v2", n)
    serving = live_sts(old, replicas=n, updated=n, ready=n)
    pods = [spod(i, "r1") for i in range(n)]
    # A new template: one extra pod, only it on the new template.
    p = rollout.plan(new, serving, pods, strategy="Surge")
    assert (p.replicas, p.partition, p.step) == (n + 1, n, "Surge")
    surging = live_sts(new, replicas=n + 1, partition=n, step="Surge", current="r1", update="r2", updated=1, ready=n)
    assert rollout.plan(new, surging, pods + [spod(n, "r2", ready=False)], strategy="Surge").step == "Surge"
    # The extra pod is Ready on the new revision: the others are replaced one at a time.
    p = rollout.plan(new, surging, pods + [spod(n, "r2")], strategy="Surge")
    assert (p.replicas, p.partition, p.step) == (n + 1, 0, "Replacing")
    replacing = live_sts(new, replicas=n + 1, step="Replacing", current="r1", update="r2", updated=n, ready=n)
    assert rollout.plan(new, replacing, [], strategy="Surge").step == "Replacing"
    # Not yet observed by the controller: wait.
    stale = live_sts(new, replicas=n + 1, step="Replacing", current="r2", update="r2", updated=n + 1, ready=n + 1,
                     generation=3, observed=2)
    assert rollout.plan(new, stale, [], strategy="Surge").step == "Replacing"
    done = live_sts(new, replicas=n + 1, step="Replacing", current="r2", update="r2", updated=n + 1, ready=n + 1)
    p = rollout.plan(new, done, [], strategy="Surge")
    assert (p.replicas, p.partition, p.step) == (n, 0, "ScalingDown")
    scaled = live_sts(new, replicas=n, step="ScalingDown", current="r2", update="r2", updated=n, ready=n)
    assert rollout.plan(new, scaled, [], strategy="Surge") == rollout.Plan(n, 0, "", "")


def test_a_change_during_a_surge_starts_again():
    v2, v3 = desired_sts("v2"), desired_sts("v3")
    replacing = live_sts(v2, replicas=2, step="Replacing", current="r1", update="r2", updated=1, ready=1)
    p = rollout.plan(v3, replacing, [spod(0, "r1")], strategy="Surge")
    assert (p.replicas, p.partition, p.step) == (2, 1, "Surge")


def test_no_surge_when_nothing_serves_or_not_asked_for():
    old, new = desired_sts("v1"), desired_sts("v2")
    serving = live_sts(old, replicas=1, updated=1, ready=1)
    assert rollout.plan(new, serving, [spod(0, "r1", ready=False)], strategy="Surge").step == "RollingUpdate"
    p = rollout.plan(new, serving, [spod(0, "r1")], strategy="RollingUpdate")
    assert (p.replicas, p.partition, p.step) == (1, 0, "RollingUpdate")
    assert rollout.plan(new, None, [], strategy="Surge") == rollout.Plan(1, 0, "", "")
    # A StatefulSet from an operator that recorded no template hash: no surge for an unknown change.
    legacy = dict(serving, metadata={"name": "chat", "generation": 2})
    assert rollout.plan(new, legacy, [spod(0, "r1")], strategy="Surge").step == ""


def test_status_only_passes_read_the_step_from_the_statefulset():
    surging = live_sts(desired_sts("v2"), replicas=2, partition=1, step="Surge", current="r1", update="r2")
    assert rollout.observed(surging, 1).step == "Surge"
    assert rollout.observed(live_sts(desired_sts(), replicas=1, current="r1", update="r2"), 1).step == "RollingUpdate"
    assert rollout.observed(None, 1) is None


# --- cleanup -----------------------------------------------------------------------------------------------------

def test_keys_let_go_of_are_released_with_their_time_and_removed_after_the_grace_period():
    from kubellama_operator import cache_cleanup

    t0, t1 = "2026-01-01T00:00:00Z", "2026-01-01T01:00:00Z"
    held = cache_cleanup.released({"keys": ["a", "b"]}, ["b", "c"], t0)
    assert held == [{"key": "a", "since": t0}]
    # Later passes keep the first time; a key used again is no longer released.
    assert cache_cleanup.released({"keys": ["b", "c"], "released": held}, ["b", "c"], t1) == held
    assert cache_cleanup.released({"keys": ["b", "c"], "released": held}, ["a"], t1) == [
        {"key": "b", "since": t1}, {"key": "c", "since": t1}]
    assert cache_cleanup.due(held, set(), 3600, "2026-01-01T00:59:59Z") == []
    assert cache_cleanup.due(held, set(), 3600, t1) == ["a"]
    assert cache_cleanup.due(held, {"a"}, 3600, t1) == [], "another LlamaServer uses it"


def test_the_cleanup_job_and_what_it_removed():
    from kubellama_operator import cache_cleanup

    spec = spec_of()
    job = cache_cleanup.build_cleanup_job(owner(), spec, "kubellama-model-cache", ["k2", "k1"], CONFIG)
    kubernetes_validate.validate(job, "1.33.0", strict=True)
    [c] = job["spec"]["template"]["spec"]["containers"]
    assert c["command"] == ["python", "-m", "kubellama_server.fetch.gc", "--root", "/models", "k1", "k2"]
    assert "nvidia" not in str(job)
    assert cache_cleanup.removed_keys(job, []) is None  # not finished
    done = {**job, "status": {"succeeded": 1}}
    pod = {"status": {"containerStatuses": [{"name": "gc", "state": {"terminated": {
        "exitCode": 0, "message": json.dumps({"removed": ["k1"], "kept": {"k2": "being downloaded"}})}}}]}}
    assert cache_cleanup.removed_keys(done, [pod]) == ["k1"]
    assert cache_cleanup.removed_keys(done, []) == ["k1", "k2"], "no message: the keys it was given"


def test_a_nearly_full_cache_is_reported_until_a_cleanup_frees_space():
    from kubellama_operator.builders.download_job import Download

    log = "\n".join([json.dumps({"event": "start", "file": "m.gguf"}),
                     json.dumps({"event": "nearly_full", "message": "the volume holding /models/k is nearly full"})])
    dl = Download("j", "Running", "Downloading", "", pod="p", fetcher="fetch-model", fetching="model")
    status = merge(base_status(), generation=2, previous={}, cache={"mode": "shared", "keys": ["k"]}, download=dl,
                   fetch_log=log)
    warning = status["cache"]["nearlyFull"]
    assert "nearly full" in warning and "cleanupAfterSeconds" in warning
    later = merge(base_status(ready=1), generation=2, previous=status, cache={"mode": "shared", "keys": ["k"]},
                  download=Download("j", "Complete"))
    assert later["cache"]["nearlyFull"] == warning
    freed = merge(base_status(ready=1), generation=2, previous=status, download=Download("j", "Complete"),
                  cache={"mode": "shared", "keys": ["k"], "removed": ["old"]})
    assert "nearlyFull" not in freed["cache"]
    full = merge(base_status(), generation=2, previous={}, cache={"mode": "shared", "keys": ["k"]},
                 download=Download("j", "Failed", "DiskFull", "model download failed: not enough space in /models/k"))
    assert full["cache"]["nearlyFull"].startswith("model download failed: not enough space")


def test_the_layout_an_image_must_hold(tmp_path, capsys):
    doc = tmp_path / "l.yaml"
    doc.write_text("apiVersion: kubellama.dev/v1alpha1\nkind: LlamaServer\nmetadata: {name: x}\nspec:\n"
                   f"  model: {{url: '{URL}', sha256: '{SHA}', cache: {{mode: image, image: {{reference: r/m:1}}}},\n"
                   "          loras: [{url: 'https://m.test/l/adapter.gguf'}]}\n")
    assert model_cache.main([str(doc)]) == 0
    lines = capsys.readouterr().out.split()
    spec = spec_of({"url": URL, "sha256": SHA, "cache": {"mode": "image", "image": {"reference": "r/m:1"}},
                    "loras": [{"url": "https://m.test/l/adapter.gguf"}]})
    model = model_cache.resolve(spec)
    assert lines == [f"sha256-{SHA}/qwen-q4.gguf", model.loras[0].path.removeprefix("/models/")]


def test_lora_scales_start_every_replica_with_the_same_defaults():
    spec = parse({"model": {"url": URL, "loras": [{"url": "https://m.test/a.gguf"},
                                                      {"url": "https://m.test/b.gguf", "scale": 0.25}]},
                      "replicas": 3})
    args = children(spec)["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]["args"]
    m = model_cache.resolve(spec)
    # In list order (ids 0, 1), every adapter with its scale: the server numbers --lora ones first.
    assert [a for a in args if a.startswith("--lora")] == ["--lora-scaled", "--lora-scaled"]
    i = args.index("--lora-scaled")
    assert args[i:i + 6] == ["--lora-scaled", m.loras[0].path, "1", "--lora-scaled", m.loras[1].path, "0.25"]
    plain = parse({"model": {"url": URL, "loras": [{"url": "https://m.test/a.gguf", "scale": 1}]}})
    assert "--lora-scaled" not in children(plain)["StatefulSet"]["spec"]["template"]["spec"]["containers"][0]["args"]


def test_a_surge_pod_that_cannot_be_scheduled_says_why():
    p = rollout.Plan(2, 1, "Surge", rollout.describe("Surge", 1))
    pending = {"metadata": {"name": "chat-1"}, "status": {"conditions": [{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/4 nodes are available: 4 Insufficient nvidia.com/gpu."}]}}
    said = rollout.waiting_surge(p, [spod(0, "r1"), pending], 1)
    assert "Insufficient nvidia.com/gpu" in said.message and "keep serving" in said.message
    assert (said.replicas, said.partition, said.step) == (2, 1, "Surge")
    assert rollout.waiting_surge(p, [spod(0, "r1"), spod(1, "r2", ready=False)], 1) == p
