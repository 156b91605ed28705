"""The CRD: generated file up to date, valid for several Kubernetes versions, examples accepted,
and the schema + CEL rules reject what the issue says must be rejected at `kubectl apply` time."""

from __future__ import annotations

import copy
import pathlib

import kubernetes_validate
import pytest
import yaml

from admission import admit, root_schema
from kubellama_operator import rbac
from kubellama_operator.crd import build_crd, render
from kubellama_operator.spec import normalize, parse, problems, resolve_model

ROOT = pathlib.Path(__file__).resolve().parents[2]
CRD_FILE = ROOT / "crds" / "kubellama.dev_llamaservers.yaml"
EXAMPLES = sorted((ROOT / "crds" / "examples").glob("*.yaml"))
K8S_VERSIONS = ["1.29.0", "1.33.0"]

BASE = {"apiVersion": "kubellama.dev/v1alpha1", "kind": "LlamaServer", "metadata": {"name": "m"},
        "spec": {"model": {"url": "https://example.test/m.gguf"}}}
MMPROJ_MODEL = {"url": "https://e.test/m.gguf", "mmproj": {"url": "https://e.test/mmproj.gguf"}}
PVC_MODEL = {"pvc": {"claimName": "c", "path": "m.gguf"}}


def loras(*adapters, model=None):
    """A model (a url one unless `model`) with these LoRA adapters."""
    return {**(model or {"url": "https://e.test/m.gguf"}), "loras": list(adapters)}


def server(**spec_updates):
    obj = copy.deepcopy(BASE)
    obj["spec"].update(spec_updates)
    return obj


def test_crd_file_is_generated_from_crd_py():
    assert CRD_FILE.read_text() == render(), (
        "crds/kubellama.dev_llamaservers.yaml is stale: run "
        "`python -m kubellama_operator.crd > crds/kubellama.dev_llamaservers.yaml`")


@pytest.mark.parametrize("version", K8S_VERSIONS)
def test_crd_is_valid_kubernetes(version):
    kubernetes_validate.validate(yaml.safe_load(CRD_FILE.read_text()), version, strict=True)


def test_crd_names_subresources_and_columns():
    crd = build_crd()
    names = crd["spec"]["names"]
    assert (crd["spec"]["group"], names["kind"], names["plural"], names["shortNames"]) == (
        "kubellama.dev", "LlamaServer", "llamaservers", ["llama"])
    assert crd["spec"]["scope"] == "Namespaced"
    version = crd["spec"]["versions"][0]
    assert version["name"] == "v1alpha1" and version["served"] and version["storage"]
    assert version["subresources"]["status"] == {}
    assert version["subresources"]["scale"] == {"specReplicasPath": ".spec.replicas",
                                                "statusReplicasPath": ".status.replicas",
                                                "labelSelectorPath": ".status.selector"}
    columns = [c["name"] for c in version["additionalPrinterColumns"] if not c.get("priority")]
    assert columns == ["Phase", "Model", "Ready", "Endpoint", "Age"]


def _structural(node, path="spec"):
    """Every schema node has a type (or is int-or-string / preserve-unknown-fields)."""
    bad = []
    if not ("type" in node or node.get("x-kubernetes-int-or-string") or node.get("x-kubernetes-preserve-unknown-fields")):
        bad.append(path)
    for key, sub in (node.get("properties") or {}).items():
        bad += _structural(sub, f"{path}.{key}")
    if isinstance(node.get("items"), dict):
        bad += _structural(node["items"], f"{path}[]")
    return bad


def test_schema_is_structural():
    assert _structural(root_schema()) == []


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_are_accepted(path):
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    servers = [d for d in docs if d["kind"] == "LlamaServer"]
    assert servers, f"{path.name} has no LlamaServer"
    for doc in docs:
        if doc["kind"] == "LlamaServer":
            defaulted, errors = admit(doc)
            assert errors == []
            assert problems(normalize(defaulted["spec"])) == []
        else:
            for version in K8S_VERSIONS:
                kubernetes_validate.validate(doc, version, strict=True)


def test_examples_cover_cpu_and_gpu_with_slots():
    specs = [d["spec"] for p in EXAMPLES for d in yaml.safe_load_all(p.read_text()) if d and d["kind"] == "LlamaServer"]
    assert any(s.get("gpu", {}).get("count", 0) == 0 for s in specs)
    gpu = [s for s in specs if s.get("gpu", {}).get("count", 0) > 0]
    assert gpu and gpu[0]["replicas"] == 2 and gpu[0]["storage"]["slots"]["restoreOnStart"]
    assert "huggingFace" in gpu[0]["model"]


def test_examples_cover_loras():
    specs = [d["spec"] for p in EXAMPLES for d in yaml.safe_load_all(p.read_text()) if d and d["kind"] == "LlamaServer"]
    (tuned,) = [s for s in specs if s["model"].get("loras")]
    model = resolve_model(parse(tuned))
    assert len(model.loras) >= 2 and all(lora.name for lora in model.loras)
    assert [lora.dest for lora in model.loras] == [f"/models/lora/{i}" for i in range(len(model.loras))]


def test_examples_cover_a_multimodal_model():
    specs = [d["spec"] for p in EXAMPLES for d in yaml.safe_load_all(p.read_text()) if d and d["kind"] == "LlamaServer"]
    (vision,) = [s for s in specs if "mmproj" in s["model"]]
    assert "huggingFace" in vision["model"]["mmproj"]
    assert resolve_model(parse(vision)).mmproj.path == "/models/mmproj/mmproj-model-f16.gguf"


def test_defaults_fill_nested_objects():
    defaulted, errors = admit(BASE)
    assert errors == []
    spec = defaulted["spec"]
    assert spec["replicas"] == 1
    assert spec["gpu"] == {"count": 0, "resourceName": "nvidia.com/gpu"}
    assert spec["server"]["metrics"] is True
    assert spec["service"] == {"type": "ClusterIP", "port": 8080}
    assert spec["networkPolicy"] == {"enabled": True}, "on unless turned off"
    assert spec["storage"]["slots"] == {"enabled": False, "size": "2Gi", "restoreOnStart": False}
    assert spec["storage"]["retention"] == {"whenDeleted": "Retain", "whenScaled": "Retain"}
    assert spec == normalize(BASE["spec"])


REJECTED = {
    "two sources": server(model={"url": "https://e.test/m.gguf", "pvc": {"claimName": "c", "path": "m.gguf"}}),
    "no source": server(model={"alias": "x"}),
    "no model": {**BASE, "spec": {"replicas": 1}},
    "negative replicas": server(replicas=-1),
    "negative gpu count": server(gpu={"count": -1}),
    "pvc without claimName": server(model={"pvc": {"path": "m.gguf"}}),
    "restoreOnStart without slots": server(storage={"slots": {"restoreOnStart": True}}),
    "gpu product on a CPU server": server(gpu={"product": "NVIDIA-L4"}),
    "tensorSplit longer than count": server(gpu={"count": 1, "tensorSplit": [1, 1]}),
    "managed flag in extraArgs": server(server={"extraArgs": ["--port=9000"]}),
    "managed flag alone": server(server={"extraArgs": ["-m", "/x.gguf"]}),
    "static files in extraArgs": server(server={"extraArgs": ["--path", "/"]}),
    "api key in extraArgs": server(server={"extraArgs": ["--api-key=secret"]}),
    "tls in extraArgs": server(server={"extraArgs": ["--ssl-key-file", "/k.pem"]}),
    "shutdown timeout in extraArgs": server(server={"extraArgs": ["--shutdown-timeout=600"]}),
    "token with url source": server(model={"url": "https://e.test/m.gguf", "tokenSecretRef": {"name": "t"}}),
    "bad sha256": server(model={"url": "https://e.test/m.gguf", "sha256": "abc"}),
    "not an http url": server(model={"url": "ftp://e.test/m.gguf"}),
    "unknown field": server(modle={"url": "https://e.test/m.gguf"}),
    "bad service type": server(service={"type": "ExternalName"}),
    "load balancer without a key": server(service={"type": "LoadBalancer"}),
    "network policy namespace not a name": server(networkPolicy={"allowedNamespaces": ["Team_A"]}),
    "network policy peer without cidr": server(networkPolicy={"from": [{"ipBlock": {"except": ["10.0.0.0/8"]}}]}),
    "network policy unknown peer field": server(networkPolicy={"from": [{"serviceAccount": "x"}]}),
    "node port without a key": server(service={"type": "NodePort", "allowUnauthenticated": False}),
    "claimName with pvc source": server(model={"pvc": {"claimName": "c", "path": "m.gguf"}},
                                        storage={"model": {"claimName": "other"}}),
    "mmproj with two sources": server(model={"url": "https://e.test/m.gguf", "mmproj": {
        "url": "https://e.test/mm.gguf", "huggingFace": {"repo": "o/r", "file": "mm.gguf"}}}),
    "mmproj without a source": server(model={"url": "https://e.test/m.gguf", "mmproj": {"offload": False}}),
    "mmproj path with a url model": server(model={"url": "https://e.test/m.gguf", "mmproj": {"path": "mm.gguf"}}),
    "mmproj path with an hf model": server(model={"huggingFace": {"repo": "o/r", "file": "m.gguf"},
                                                  "mmproj": {"path": "mm.gguf"}}),
    "mmproj with self-extend": server(model=MMPROJ_MODEL, server={"extraArgs": ["--grp-attn-n", "4"]}),
    "mmproj with self-extend, = form": server(model=MMPROJ_MODEL,
                                              server={"extraArgs": ["-c", "8192", "--grp-attn-n=16"]}),
    "mmproj flag in extraArgs": server(server={"extraArgs": ["--mmproj", "/models/mm.gguf"]}),
    "mmproj offload flag in extraArgs": server(model=MMPROJ_MODEL, server={"extraArgs": ["--no-mmproj-offload"]}),
    "mmproj hf without file": server(model={"url": "https://e.test/m.gguf", "mmproj": {"huggingFace": {"repo": "o/r"}}}),
    "mmproj bad sha256": server(model={**MMPROJ_MODEL, "mmproj": {"url": "https://e.test/mm.gguf", "sha256": "x"}}),
    "mmproj absolute path": server(model={"pvc": {"claimName": "c", "path": "m.gguf"}, "mmproj": {"path": "/mm.gguf"}}),
    "token with url model and url mmproj": server(model={**MMPROJ_MODEL, "tokenSecretRef": {"name": "t"}}),
    "lora with two sources": server(model=loras({"url": "https://e.test/a.gguf", "path": "a.gguf"}, model=PVC_MODEL)),
    "lora without a source": server(model=loras({"url": "https://e.test/a.gguf"}, {"name": "sql"})),
    "lora path with a url model": server(model=loras({"url": "https://e.test/a.gguf"}, {"path": "a.gguf"})),
    "lora path with an hf model": server(model=loras({"path": "a.gguf"}, model={
        "huggingFace": {"repo": "o/r", "file": "m.gguf"}})),
    "the same lora path twice": server(model=loras({"path": "l/a.gguf", "name": "x"}, {"url": "https://e.test/a.gguf"},
                                                   {"path": "l/a.gguf", "name": "y"}, model=PVC_MODEL)),
    "lora flag in extraArgs": server(server={"extraArgs": ["--lora", "/models/a.gguf"]}),
    "lora flag in extraArgs, = form": server(server={"extraArgs": ["--lora=/models/a.gguf"]}),
    "token with url model and url loras": server(model={**loras({"url": "https://e.test/a.gguf"}),
                                                        "tokenSecretRef": {"name": "t"}}),
    "lora hf without file": server(model=loras({"huggingFace": {"repo": "o/r"}})),
    "lora bad sha256": server(model=loras({"url": "https://e.test/a.gguf", "sha256": "x"})),
    "lora absolute path": server(model=loras({"path": "/a.gguf"}, model=PVC_MODEL)),
    "lora not an http url": server(model=loras({"url": "ftp://e.test/a.gguf"})),
    "lora empty name": server(model=loras({"url": "https://e.test/a.gguf", "name": ""})),
    "lora unknown field": server(model=loras({"url": "https://e.test/a.gguf", "weight": 0.5})),
    "lora scale out of range": server(model=loras({"url": "https://e.test/a.gguf", "scale": 17})),
    "lora-scaled in extraArgs": server(server={"extraArgs": ["--lora-scaled", "/models/a.gguf", "0.5"]}),
    "cache mode unknown": server(model={"url": "https://e.test/m.gguf", "cache": {"mode": "nfs"}}),
    "cache claim without claimName": server(model={"url": "https://e.test/m.gguf", "cache": {"mode": "claim"}}),
    "cache claimName with mode shared": server(model={"url": "https://e.test/m.gguf",
                                                      "cache": {"mode": "shared", "claimName": "c"}}),
    "cache image without image": server(model={"url": "https://e.test/m.gguf", "cache": {"mode": "image"}}),
    "cache image with mode shared": server(model={"url": "https://e.test/m.gguf", "cache": {
        "mode": "shared", "image": {"reference": "r/m:1"}}}),
    "cache size with mode claim": server(model={"url": "https://e.test/m.gguf", "cache": {
        "mode": "claim", "claimName": "c", "size": "5Gi"}}),
    "shared cache with a pvc model": server(model={**PVC_MODEL, "cache": {"mode": "shared"}}),
    "shared cache with storage.model.claimName": server(model={"url": "https://e.test/m.gguf", "cache": {
        "mode": "shared"}}, storage={"model": {"claimName": "c"}}),
    "rollout strategy unknown": server(rollout={"strategy": "BlueGreen"}),
    "too many loras": server(model=loras(*[{"url": f"https://e.test/{i}.gguf"} for i in range(17)])),
}


@pytest.mark.parametrize("name", sorted(REJECTED))
def test_invalid_specs_are_rejected(name):
    _, errors = admit(REJECTED[name])
    assert errors, f"{name!r} was accepted"


CEL_ONLY = ["two sources", "no source", "restoreOnStart without slots", "gpu product on a CPU server",
            "tensorSplit longer than count", "managed flag in extraArgs", "managed flag alone",
            "load balancer without a key", "node port without a key", "static files in extraArgs", "api key in extraArgs", "tls in extraArgs", "shutdown timeout in extraArgs",
            "token with url source", "claimName with pvc source", "mmproj with two sources",
            "mmproj without a source", "mmproj path with a url model", "mmproj path with an hf model",
            "mmproj with self-extend", "mmproj with self-extend, = form", "mmproj flag in extraArgs",
            "mmproj offload flag in extraArgs", "token with url model and url mmproj", "lora with two sources",
            "lora without a source", "lora path with a url model", "lora path with an hf model",
            "the same lora path twice", "lora flag in extraArgs", "lora flag in extraArgs, = form",
            "token with url model and url loras", "too many loras", "cache claim without claimName",
            "cache claimName with mode shared", "cache image without image", "cache image with mode shared",
            "cache size with mode claim", "shared cache with a pvc model", "shared cache with storage.model.claimName"]


@pytest.mark.parametrize("name", CEL_ONLY)
def test_operator_checks_agree_with_cel(name):
    """The operator's own checks (for API servers that did not run CEL) reject the same specs."""
    assert problems(normalize(REJECTED[name]["spec"]))


ACCEPTED = {
    "url": server(),
    "network policy peers": server(networkPolicy={"allowedNamespaces": ["apps"], "from": [
        {"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
        {"namespaceSelector": {"matchLabels": {"team": "a"}},
         "podSelector": {"matchExpressions": [{"key": "app", "operator": "Exists"}]}}]}),
    "network policy off": server(networkPolicy={"enabled": False}),
    "load balancer with a key": server(service={"type": "LoadBalancer"}, apiKeySecretRef={"name": "k"}),
    "node port allowed without a key": server(service={"type": "NodePort", "allowUnauthenticated": True}),
    "cluster ip without a key": server(service={"type": "ClusterIP", "allowUnauthenticated": False}),
    "hf with revision and token": server(model={"huggingFace": {"repo": "org/repo", "file": "a/b.gguf",
                                                                "revision": "v1"},
                                                "tokenSecretRef": {"name": "hf"}}),
    "pvc": server(model={"pvc": {"claimName": "models", "path": "llama/m.gguf"}}),
    "zero replicas": server(replicas=0),
    "gpu split": server(gpu={"count": 2, "tensorSplit": [3, 1], "mainGpu": 0, "product": "NVIDIA-A100"}),
    "slots": server(storage={"slots": {"enabled": True, "restoreOnStart": True}}),
    "extra args": server(server={"extraArgs": ["-tb", "4", "--mlock", "--grp-attn-w=1024"]}),
    "quantities": server(resources={"limits": {"cpu": 2, "memory": "4Gi"}}, storage={"model": {"size": "5G"}}),
    "mmproj url": server(model=MMPROJ_MODEL),
    "mmproj hf with the model's token": server(model={
        "huggingFace": {"repo": "o/r", "file": "m.gguf"}, "tokenSecretRef": {"name": "hf"},
        "mmproj": {"huggingFace": {"repo": "o/r", "file": "mmproj.gguf", "revision": "v1"}, "sha256": "a" * 64,
                   "offload": False}}),
    "token only for the mmproj": server(model={"url": "https://e.test/m.gguf", "tokenSecretRef": {"name": "hf"},
                                               "mmproj": {"huggingFace": {"repo": "o/r", "file": "mm.gguf"}}}),
    "mmproj path on the model's claim": server(model={"pvc": {"claimName": "c", "path": "m.gguf"},
                                                      "mmproj": {"path": "vision/mm.gguf"}}),
    "mmproj download for a pvc model": server(model={"pvc": {"claimName": "c", "path": "m.gguf"},
                                                     "mmproj": {"url": "https://e.test/mm.gguf"}}),
    "mmproj with self-extend off": server(model=MMPROJ_MODEL, server={"extraArgs": ["--grp-attn-n", "1",
                                                                                      "--grp-attn-n=1"]}),
    "mmproj with a trailing --grp-attn-n": server(model=MMPROJ_MODEL, server={"extraArgs": ["-c", "4", "--grp-attn-n"]}),
    "self-extend without mmproj": server(server={"extraArgs": ["--grp-attn-n", "4", "--grp-attn-w", "2048"]}),
    "mmproj with 64 extraArgs": server(model=MMPROJ_MODEL, server={"extraArgs": ["-v"] * 63 + ["--grp-attn-n"]}),
    "loras url and hf with the model's token": server(model={
        **loras({"url": "https://e.test/a/adapter.gguf", "name": "sql", "sha256": "a" * 64},
                {"huggingFace": {"repo": "o/r", "file": "b/adapter.gguf", "revision": "v1"}, "name": "support"}),
        "tokenSecretRef": {"name": "hf"}}),
    "token only for a lora": server(model={**loras({"url": "https://e.test/a.gguf"},
                                                   {"huggingFace": {"repo": "o/r", "file": "b.gguf"}}),
                                           "tokenSecretRef": {"name": "hf"}}),
    "loras on the model's claim and downloaded": server(model=loras(
        {"path": "l/a.gguf"}, {"path": "l/b.gguf"}, {"url": "https://e.test/l/a.gguf"}, model=PVC_MODEL)),
    "16 loras": server(model=loras(*[{"url": f"https://e.test/{i}/adapter.gguf"} for i in range(16)])),
    "no loras": server(model=loras()),
    "loras with a projector": server(model={**MMPROJ_MODEL, "loras": [{"url": "https://e.test/a.gguf"}]}),
    "shared cache": server(model={"url": "https://e.test/m.gguf", "cache": {
        "mode": "shared", "size": "200Gi", "storageClassName": "nfs", "cleanupAfterSeconds": 60}},
        rollout={"strategy": "Surge"}),
    "cache claim": server(model={"huggingFace": {"repo": "o/r", "file": "m.gguf"}, "cache": {
        "mode": "claim", "claimName": "models"}}),
    "cache image": server(model={"url": "https://e.test/m.gguf", "cache": {
        "mode": "image", "image": {"reference": "registry.test/models/m:1", "pullPolicy": "IfNotPresent"}}}),
    "lora scales": server(model=loras({"url": "https://e.test/a.gguf", "scale": 0.5},
                                      {"url": "https://e.test/b.gguf", "scale": -1})),
    "per-replica cache with a pvc model": server(model={**PVC_MODEL, "cache": {"mode": "perReplica"}}),
    "lora-base passes through": server(model=loras({"url": "https://e.test/a.gguf"}),
                                       server={"extraArgs": ["--lora-base", "/models/m.gguf"]}),
}


#: Accepted by CEL (the self-extend rule's edge cases), refused by the operator: --grp-attn-n lacks its value.
TRAILING_FLAG = {"mmproj with 64 extraArgs", "mmproj with a trailing --grp-attn-n"}


@pytest.mark.parametrize("name", sorted(ACCEPTED))
def test_valid_specs_are_accepted(name):
    defaulted, errors = admit(ACCEPTED[name])
    assert errors == []
    found = problems(normalize(defaulted["spec"]))
    if name in TRAILING_FLAG:
        assert len(found) == 1 and "--grp-attn-n: expected one argument" in found[0], found
    else:
        assert found == []


# What CEL cannot see (argparse's attached values, abbreviations, unknown flags): the operator refuses it.
OPERATOR_ONLY = {
    "attached short value": ["-m/models/other.gguf"],
    "abbreviation": ["--hos=0.0.0.0"],
    "abbreviated slot save path": ["--slot-save=/tmp/x"],
    "unknown flag": ["--bogus", "1"],
    "bad value": ["-c", "many"],
}


@pytest.mark.parametrize("peer, message", [
    ({"ipBlock": {"cidr": "10.0.0.0/33"}}, "'10.0.0.0/33' is not a CIDR"),
    ({"ipBlock": {"cidr": "10.0.0.0/8", "except": ["ten"]}}, "'ten' is not a CIDR"),
    ({"ipBlock": {"cidr": "fd00::/8"}, "podSelector": {}}, "ipBlock cannot be combined"),
    ({"podSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]}}, "operator In needs values"),
    ({"namespaceSelector": {"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}},
     "operator Exists takes no values"),
    ({}, "needs podSelector, namespaceSelector or ipBlock"),
])
def test_network_policy_peers_the_api_server_would_refuse(peer, message):
    """The schema admits them; the NetworkPolicy apply would fail: the operator says so in the status instead."""
    obj = server(networkPolicy={"from": [peer]})
    defaulted, errors = admit(obj)
    assert errors == []
    found = problems(normalize(defaulted["spec"]))
    assert len(found) == 1 and found[0].startswith("spec.networkPolicy.from[0]") and message in found[0], found


@pytest.mark.parametrize("name", sorted(OPERATOR_ONLY))
def test_extra_args_cel_cannot_see_are_refused_by_the_operator(name):
    obj = server(server={"extraArgs": OPERATOR_ONLY[name]})
    defaulted, errors = admit(obj)
    assert errors == [], "CEL compares strings only"
    found = problems(normalize(defaulted["spec"]))
    assert len(found) == 1 and "spec.server.extraArgs" in found[0], found


def test_transition_rules():
    old = server(storage={"slots": {"enabled": True}})
    # restoreOnStart may change; the slot claim's size may not; switching to a pvc source may not.
    assert admit(server(storage={"slots": {"enabled": True, "restoreOnStart": True}}), old)[1] == []
    assert admit(server(storage={"slots": {"enabled": True, "size": "9Gi"}}), old)[1]
    assert admit(server(storage={"slots": {"enabled": True}, "model": {"size": "50Gi"}}), old)[1]
    assert admit(server(model={"pvc": {"claimName": "c", "path": "m.gguf"}},
                        storage={"slots": {"enabled": True}}), old)[1]
    # Scaling and other spec changes are fine.
    assert admit(server(replicas=3, storage={"slots": {"enabled": True}}), old)[1] == []
    # A per-replica cache (volume claim templates) cannot become a shared one, nor back; shared modes may swap.
    shared = server(model={"url": "https://e.test/m.gguf", "cache": {"mode": "shared"}})
    claim = server(model={"url": "https://e.test/n.gguf", "cache": {"mode": "claim", "claimName": "c"}})
    assert admit(shared, BASE)[1] and admit(BASE, shared)[1]
    assert admit(claim, shared)[1] == []
    assert admit(server(model={"url": "https://e.test/m.gguf", "cache": {"mode": "perReplica"}}), BASE)[1] == []


def test_rbac_rules_are_valid_and_cover_the_crd():
    role = rbac.cluster_role()
    for version in K8S_VERSIONS:
        kubernetes_validate.validate(role, version, strict=True)
    assert rbac.allows("kubellama.dev", "llamaservers", "watch")
    assert rbac.allows("kubellama.dev", "llamaservers/status", "patch")
    assert not any(rbac.allows("", "secrets", verb) for verb in ("get", "list", "watch")), \
        "the operator reads no Secret: a missing one is seen in the pods' status"


def test_mmproj_defaults():
    defaulted, errors = admit(server(model=MMPROJ_MODEL))
    assert errors == []
    assert defaulted["spec"]["model"]["mmproj"] == {"url": "https://e.test/mmproj.gguf", "offload": True}
    assert defaulted["spec"] == normalize(server(model=MMPROJ_MODEL)["spec"])
    assert "mmproj" not in admit(BASE)[0]["spec"]["model"], "no projector unless asked for"


@pytest.mark.parametrize("args, on", [
    (["--grp-attn-n", "2"], True), (["--grp-attn-n=2"], True), (["--grp-attn-n", "016"], True),
    (["-v"] * 62 + ["--grp-attn-n", "4"], True), (["--grp-attn-n=10", "-v"], True),
    (["--grp-attn-n", "1"], False), (["--grp-attn-n=01"], False), (["--grp-attn-n"], False),
    (["--grp-attn-w", "4"], False), (["4", "--grp-attn-n"], False), (["--grp-attn-n", "0"], False),
])
def test_self_extend_check_agrees_with_cel(args, on):
    """`spec.turns_on_self_extend` and the CRD's rule read extraArgs the same way."""
    from kubellama_operator.api.server import turns_on_self_extend

    assert turns_on_self_extend(args) is on
    _, errors = admit(server(model=MMPROJ_MODEL, server={"extraArgs": args}))
    assert bool([e for e in errors if "self-extend" in e]) is on
    assert bool([p for p in problems(normalize(server(model=MMPROJ_MODEL, server={"extraArgs": args})["spec"]))
                 if "self-extend" in p]) is on


def test_loras_are_not_defaulted():
    defaulted, errors = admit(server(model=loras({"url": "https://e.test/a.gguf"})))
    assert errors == []
    assert defaulted["spec"]["model"]["loras"] == [{"url": "https://e.test/a.gguf"}]
    assert "loras" not in admit(BASE)[0]["spec"]["model"], "no adapters unless asked for"


@pytest.mark.parametrize("name", ["lora with two sources", "lora without a source", "lora path with a url model",
                                  "the same lora path twice"])
def test_lora_messages_say_how_to_fix(name):
    """CEL and `spec.problems` say the same thing (the operator's message also names the entry)."""
    _, errors = admit(REJECTED[name])
    found = problems(normalize(REJECTED[name]["spec"]))
    key = {"lora with two sources": "exactly one source", "lora without a source": "exactly one source",
           "lora path with a url model": "needs a pvc model source", "the same lora path twice": "same path"}[name]
    assert any(key in e for e in errors) and any(key in p for p in found), (errors, found)
    if name == "the same lora path twice":
        assert found == ["two spec.model.loras entries name the same path (l/a.gguf): list each adapter once"]
    if name == "lora without a source":
        assert found == ["spec.model.loras[1] needs exactly one source: url, huggingFace or path"]
