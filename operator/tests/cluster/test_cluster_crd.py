"""The LlamaServer CRD on a real API server: structural schema, defaults, CEL, subresources."""

from __future__ import annotations

import copy
import uuid

import kubellama_controlplane as kcp
import pytest

kcp.skip_module_if_unavailable()

LLAMA_API = "kubellama.dev/v1alpha1"
MODEL_URL = "http://models.invalid/tiny.gguf"
MMPROJ_URL = "http://models.invalid/mmproj-tiny.gguf"
LORA_URL = "http://models.invalid/loras/sql/adapter.gguf"
PVC = {"pvc": {"claimName": "models", "path": "m.gguf"}}


@pytest.fixture(scope="module")
def ns(kube):
    """One namespace for this module's objects (no pods: nothing to wait for)."""
    name = f"crd-{uuid.uuid4().hex[:8]}"
    kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
    yield name
    kube.remove("v1", "Namespace", name)


def llama(name: str, namespace: str, **spec) -> dict:
    return {"apiVersion": LLAMA_API, "kind": "LlamaServer",
            "metadata": {"name": name, "namespace": namespace},
            "spec": {"model": {"url": MODEL_URL}, **spec}}


def rejected(kube: kcp.Kube, obj: dict, update: bool = False) -> str:
    """Create (or replace) `obj` and return the API server's 422 message."""
    with pytest.raises(kcp.ApiError) as err:
        if update:
            kube.request("PUT", kube.path_of(obj), json=obj)
        else:
            kube.create(obj)
    assert err.value.status == 422, err.value
    return err.value.message


@pytest.mark.parametrize("spec, message", [
    ({"model": {"url": MODEL_URL, "huggingFace": {"repo": "a/b", "file": "m.gguf"}}},
     "spec.model needs exactly one source: url, huggingFace or pvc"),
    ({"model": {"alias": "nothing"}},
     "spec.model needs exactly one source: url, huggingFace or pvc"),
    ({"model": {"url": MODEL_URL, "tokenSecretRef": {"name": "hf"}}},
     "spec.model.tokenSecretRef is only used with a huggingFace source"),
    ({"model": {"url": MODEL_URL}, "replicas": -1},
     "spec.replicas: Invalid value: -1: spec.replicas in body should be greater than or equal to 0"),
    ({"model": {"url": MODEL_URL}, "server": {"extraArgs": ["--port=9000"]}},
     "spec.server.extraArgs may not set flags the operator manages"),
    ({"model": {"url": MODEL_URL}, "gpu": {"product": "NVIDIA-L4"}},
     "spec.gpu.product, tensorSplit and mainGpu need spec.gpu.count > 0"),
    ({"model": {"url": MODEL_URL}, "gpu": {"count": 1, "tensorSplit": [1, 1]}},
     "spec.gpu.tensorSplit has more entries than spec.gpu.count"),
    ({"model": {"url": MODEL_URL}, "storage": {"slots": {"restoreOnStart": True}}},
     "spec.storage.slots.restoreOnStart needs spec.storage.slots.enabled: true"),
    ({"model": {"pvc": {"claimName": "models", "path": "m.gguf"}},
      "storage": {"model": {"claimName": "cache"}}},
     "spec.storage.model.claimName is unused with a pvc model source"),
    ({"model": {"url": "ftp://example.com/m.gguf"}},
     "spec.model.url in body should match"),
    ({"model": {"url": MODEL_URL, "mmproj": {"url": MMPROJ_URL, "path": "mm.gguf"}}},
     "spec.model.mmproj needs exactly one source: url, huggingFace or path"),
    ({"model": {"url": MODEL_URL, "mmproj": {"offload": False}}},
     "spec.model.mmproj needs exactly one source: url, huggingFace or path"),
    ({"model": {"url": MODEL_URL, "mmproj": {"path": "mm.gguf"}}},
     "spec.model.mmproj.path is a file on the model's claim and needs a pvc model source"),
    ({"model": {"url": MODEL_URL, "mmproj": {"url": MMPROJ_URL}}, "server": {"extraArgs": ["--grp-attn-n", "4"]}},
     "spec.server.extraArgs turns on self-extend (--grp-attn-n > 1)"),
    ({"model": {"url": MODEL_URL, "mmproj": {"url": MMPROJ_URL}}, "server": {"extraArgs": ["--grp-attn-n=8"]}},
     "spec.server.extraArgs turns on self-extend (--grp-attn-n > 1)"),
    ({"model": {"url": MODEL_URL}, "server": {"extraArgs": ["--mmproj=/models/mm.gguf"]}},
     "spec.server.extraArgs may not set flags the operator manages"),
    ({"model": {"url": MODEL_URL, "mmproj": {"url": MMPROJ_URL}, "tokenSecretRef": {"name": "hf"}}},
     "spec.model.tokenSecretRef is only used with a huggingFace source"),
    ({"model": {**PVC, "loras": [{"url": LORA_URL, "path": "a.gguf"}]}},
     "each spec.model.loras entry needs exactly one source: url, huggingFace or path"),
    ({"model": {"url": MODEL_URL, "loras": [{"url": LORA_URL}, {"name": "sql"}]}},
     "each spec.model.loras entry needs exactly one source: url, huggingFace or path"),
    ({"model": {"url": MODEL_URL, "loras": [{"url": LORA_URL}, {"path": "a.gguf"}]}},
     "spec.model.loras[].path is a file on the model's claim and needs a pvc model source"),
    ({"model": {**PVC, "loras": [{"path": "l/a.gguf"}, {"url": LORA_URL}, {"path": "l/a.gguf"}]}},
     "two spec.model.loras entries name the same path: list each adapter once"),
    ({"model": {"url": MODEL_URL, "loras": [{"url": LORA_URL}], "tokenSecretRef": {"name": "hf"}}},
     "spec.model.tokenSecretRef is only used with a huggingFace source"),
    ({"model": {"url": MODEL_URL}, "server": {"extraArgs": ["--lora", "/models/a.gguf"]}},
     "spec.server.extraArgs may not set flags the operator manages"),
    ({"model": {"url": MODEL_URL}, "server": {"extraArgs": ["--path=/"]}},
     "spec.server.extraArgs may not set flags the operator manages or refuses"),
    ({"model": {"url": MODEL_URL}, "service": {"type": "LoadBalancer"}},
     "a NodePort or LoadBalancer spec.service exposes the server outside the cluster"),
    ({"model": {"url": MODEL_URL, "loras": [{"url": f"http://models.invalid/{i}.gguf"} for i in range(17)]}},
     "spec.model.loras: Too many: 17: must have at most 16 items"),
])
def test_api_server_rejects_invalid_llamaservers(kube, llama_crd, ns, spec, message):
    obj = llama("bad", ns)
    obj["spec"] = spec
    assert message in rejected(kube, obj)


def test_defaults_are_applied_by_the_api_server(kube, llama_crd, ns):
    created = kube.create(llama("defaults", ns))
    spec = created["spec"]
    assert spec["replicas"] == 1
    assert spec["service"] == {"type": "ClusterIP", "port": 8080}
    assert spec["gpu"] == {"count": 0, "resourceName": "nvidia.com/gpu"}
    assert spec["server"]["metrics"] is True
    assert spec["storage"]["model"]["size"] == "20Gi"


@pytest.mark.parametrize("model, extra_args", [
    ({"url": MODEL_URL, "mmproj": {"huggingFace": {"repo": "o/r", "file": "mm.gguf"}},
      "tokenSecretRef": {"name": "hf"}}, ["--grp-attn-n", "1"]),
    ({"pvc": {"claimName": "models", "path": "m.gguf"}, "mmproj": {"path": "vision/mm.gguf", "offload": False}},
     ["-v"] * 63 + ["--grp-attn-n"]),
    ({"pvc": {"claimName": "models", "path": "m.gguf"}, "mmproj": {"url": MMPROJ_URL}}, []),
], ids=["hf-with-token", "on-the-claim-64-args", "downloaded-for-a-pvc-model"])
def test_api_server_accepts_and_defaults_a_projector(kube, llama_crd, ns, model, extra_args):
    created = kube.create(llama(f"mm-{uuid.uuid4().hex[:6]}", ns, model=model, server={"extraArgs": extra_args}))
    assert created["spec"]["model"]["mmproj"] == {"offload": True, **model["mmproj"]}
    kube.remove(LLAMA_API, "LlamaServer", created["metadata"]["name"], ns)


@pytest.mark.parametrize("model", [
    {"huggingFace": {"repo": "o/r", "file": "m.gguf"}, "tokenSecretRef": {"name": "hf"},
     "loras": [{"name": "sql", "huggingFace": {"repo": "o/sql", "file": "adapter.gguf", "revision": "v1"},
                "sha256": "ab" * 32}, {"name": "support", "url": LORA_URL}]},
    {"url": MODEL_URL, "tokenSecretRef": {"name": "hf"}, "loras": [{"huggingFace": {"repo": "o/r", "file": "a.gguf"}}]},
    {**PVC, "loras": [{"path": "l/" + "a" * 1000 + ".gguf"}, {"path": "l/b.gguf"}, {"url": LORA_URL}]},
    {"url": MODEL_URL, "loras": [{"url": f"http://models.invalid/{i}/adapter.gguf"} for i in range(16)]},
], ids=["hf-with-token", "token-only-for-an-adapter", "on-the-claim-and-downloaded", "sixteen"])
def test_api_server_accepts_loras_as_they_are(kube, llama_crd, ns, model):
    """No defaults inside an adapter; the rules (CEL cost included) pass at the list's limits."""
    created = kube.create(llama(f"lora-{uuid.uuid4().hex[:6]}", ns, model=model))
    assert created["spec"]["model"]["loras"] == model["loras"]
    kube.remove(LLAMA_API, "LlamaServer", created["metadata"]["name"], ns)


def test_transition_rules_reject_immutable_changes(kube, llama_crd, ns):
    current = kube.create(llama("immutable", ns))

    to_pvc = copy.deepcopy(current)
    to_pvc["spec"]["model"] = {"pvc": {"claimName": "models", "path": "m.gguf"}}
    assert "switching between a pvc model source and a downloaded one" in rejected(kube, to_pvc, update=True)

    resized = copy.deepcopy(current)
    resized["spec"]["storage"]["model"]["size"] = "40Gi"
    assert "spec.storage.model: volume claim settings are immutable" in rejected(kube, resized, update=True)

    # A mutable field still changes.
    ok = copy.deepcopy(current)
    ok["spec"]["server"]["contextSize"] = 4096
    updated = kube.request("PUT", kube.path_of(ok), json=ok)
    assert updated["spec"]["server"]["contextSize"] == 4096
    assert updated["metadata"]["generation"] == current["metadata"]["generation"] + 1


def test_scale_subresource_and_short_name(kube, kubectl, llama_crd, ns):
    kube.create(llama("scaled", ns))
    kubectl("scale", "llamaserver/scaled", "--replicas=3", "-n", ns)
    assert kube.read(LLAMA_API, "LlamaServer", "scaled", ns)["spec"]["replicas"] == 3
    scale = kube.get(kube.path(LLAMA_API, "LlamaServer", ns, "scaled") + "/scale")
    assert scale["kind"] == "Scale" and scale["spec"]["replicas"] == 3
    out = kubectl("get", "llama", "-n", ns, "-o", "name").stdout.split()
    assert "llamaserver.kubellama.dev/scaled" in out


def test_status_is_a_subresource(kube, llama_crd, ns):
    created = kube.create(llama("status", ns))
    path = kube.path_of(created)
    # The main resource ignores status; only /status writes it.
    kube.patch(path, {"status": {"phase": "Ready"}})
    assert "phase" not in (kube.read(LLAMA_API, "LlamaServer", "status", ns).get("status") or {})
    kube.patch(path + "/status", {"status": {"phase": "Ready"}})
    assert kube.read(LLAMA_API, "LlamaServer", "status", ns)["status"]["phase"] == "Ready"
    with pytest.raises(kcp.ApiError) as err:
        kube.patch(path + "/status", {"status": {"phase": "Exploded"}})
    assert err.value.status == 422
