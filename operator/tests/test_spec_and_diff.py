"""Model resolution, defaulting, the no-op-write check and API paths."""

from __future__ import annotations

import copy

import pytest

from kubellama_operator.builders import desired_children
from kubellama_operator.config import OperatorConfig
from kubellama_operator.diff import HASH_ANNOTATION, contains, needs_apply, with_hash
from kubellama_operator.kube import resource_path
from kubellama_operator.spec import endpoint, normalize, parse, resolve_model

OWNER = {"apiVersion": "kubellama.dev/v1alpha1", "kind": "LlamaServer",
         "metadata": {"name": "a", "namespace": "n", "uid": "u"}}


@pytest.mark.parametrize("model,file,path,name", [
    ({"url": "https://h.test/dir/m-Q4.gguf?x=1#f"}, "m-Q4.gguf", "/models/m-Q4.gguf", "m-Q4.gguf"),
    ({"huggingFace": {"repo": "o/r", "file": "sub/m.gguf"}, "alias": "mine"}, "m.gguf", "/models/m.gguf", "mine"),
    ({"pvc": {"claimName": "c", "path": "./a/../b/m.gguf"}}, "m.gguf", "/models/b/m.gguf", "m.gguf"),
])
def test_resolve_model(model, file, path, name):
    m = resolve_model(parse({"model": model}))
    assert (m.file, m.path, m.name) == (file, path, name)


def test_fetch_args_land_where_the_server_looks():
    """kubellama-fetch --dest DIR puts the file at DIR/<basename>: the server's -m must match."""
    m = resolve_model(parse({"model": {"huggingFace": {"repo": "o/r", "file": "q/x.gguf", "revision": "r1"},
                                           "sha256": "AB" * 32}}))
    assert m.fetch_args == ("--hf-repo", "o/r", "--hf-file", "q/x.gguf", "--hf-revision", "r1",
                            "--sha256", "ab" * 32, "--dest", "/models")
    assert m.path == "/models/" + "q/x.gguf".rsplit("/", 1)[1]
    assert resolve_model(parse({"model": {"pvc": {"claimName": "c", "path": "x.gguf"}}})).fetch_args == ()


def test_normalize_does_not_mutate():
    raw = {"model": {"url": "https://h.test/m.gguf"}, "storage": {"slots": {"enabled": True}}}
    out = normalize(raw)
    assert raw == {"model": {"url": "https://h.test/m.gguf"}, "storage": {"slots": {"enabled": True}}}
    assert out["storage"]["slots"]["size"] == "2Gi" and out["storage"]["model"]["size"] == "20Gi"


def test_endpoint_uses_service_port():
    assert endpoint("a", "ns", parse({"model": {}, "service": {"port": 80}})) == "http://a.ns.svc:80/v1"


def test_contains_ignores_server_defaults_but_not_changes():
    live = {"spec": {"replicas": 1, "template": {"spec": {"containers": [
        {"name": "s", "image": "i", "imagePullPolicy": "IfNotPresent", "terminationMessagePath": "/dev/x"}]}}},
        "status": {"replicas": 1}}
    assert contains(live, {"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "s", "image": "i"}]}}}})
    assert not contains(live, {"spec": {"replicas": 2}})
    assert not contains(live, {"spec": {"template": {"spec": {"containers": [{"name": "s"}, {"name": "t"}]}}}})
    assert contains({"limits": {"nvidia.com/gpu": "2"}}, {"limits": {"nvidia.com/gpu": 2}})
    assert not contains({"x": False}, {"x": 0})
    assert needs_apply(None, {"metadata": {"name": "a"}})
    assert not needs_apply({"metadata": {"name": "a", "uid": "u"}, "spec": {"a": 1}},
                           {"apiVersion": "v1", "kind": "K", "metadata": {"name": "a"}, "spec": {"a": 1}})


def test_resource_paths():
    assert resource_path("v1", "Pod", "ns") == "/api/v1/namespaces/ns/pods"
    assert resource_path("apps/v1", "StatefulSet", "ns", "a") == "/apis/apps/v1/namespaces/ns/statefulsets/a"
    assert resource_path("kubellama.dev/v1alpha1", "llamaservers", "ns", "a", "status") == \
        "/apis/kubellama.dev/v1alpha1/namespaces/ns/llamaservers/a/status"
    assert resource_path("kubellama.dev/v1alpha1", "llamaservers") == "/apis/kubellama.dev/v1alpha1/llamaservers"


def test_removed_fields_are_noticed_through_the_hash():
    old = with_hash({"metadata": {"name": "a"}, "spec": {"nodeSelector": {"a": "1", "b": "2"}}})
    new = with_hash({"metadata": {"name": "a"}, "spec": {"nodeSelector": {"a": "1"}}})
    assert contains(old, {"spec": {"nodeSelector": {"a": "1"}}}), "a subset check alone misses removals"
    assert needs_apply(old, new)
    assert not needs_apply(old, with_hash({"metadata": {"name": "a"}, "spec": {"nodeSelector": {"a": "1", "b": "2"}}}))
    assert old["metadata"]["annotations"][HASH_ANNOTATION] != new["metadata"]["annotations"][HASH_ANNOTATION]


@pytest.mark.parametrize("model,path,dest,source,description", [
    ({"url": "https://h.test/m.gguf", "mmproj": {"url": "https://h.test/v/mmproj-F16.gguf?dl=1"}},
     "/models/mmproj/mmproj-F16.gguf", "/models/mmproj", "url", "https://h.test/v/mmproj-F16.gguf?dl=1"),
    ({"huggingFace": {"repo": "o/r", "file": "m.gguf"}, "mmproj": {"huggingFace": {"repo": "o/r", "file": "x/mm.gguf"}}},
     "/models/mmproj/mm.gguf", "/models/mmproj", "huggingFace", "hf://o/r/x/mm.gguf"),
    ({"pvc": {"claimName": "c", "path": "m.gguf"}, "mmproj": {"url": "https://h.test/mm.gguf"}},
     "/mmproj/mm.gguf", "/mmproj", "url", "https://h.test/mm.gguf"),
    ({"pvc": {"claimName": "c", "path": "m.gguf"}, "mmproj": {"path": "./v/../mm.gguf"}},
     "/models/mm.gguf", "/models", "path", "pvc://c/mm.gguf"),
])
def test_resolve_mmproj(model, path, dest, source, description):
    mm = resolve_model(parse({"model": model})).mmproj
    assert (mm.path, mm.dest, mm.source, mm.description, mm.offload) == (path, dest, source, description, True)
    assert mm.file == path.rsplit("/", 1)[1]
    if source == "path":
        assert mm.fetch_args == ()
    else:  # kubellama-fetch --dest DIR puts the file at DIR/<basename>: the server's --mmproj must match
        assert mm.fetch_args[-2:] == ("--dest", dest) and path == f"{dest}/{mm.file}"


def test_mmproj_offload_and_checksum():
    mm = resolve_model(parse({"model": {"url": "https://h.test/m.gguf", "mmproj": {
        "huggingFace": {"repo": "o/r", "file": "mm.gguf", "revision": "r1"}, "sha256": "CD" * 32,
        "offload": False}}})).mmproj
    assert mm.offload is False
    assert mm.fetch_args == ("--hf-repo", "o/r", "--hf-file", "mm.gguf", "--hf-revision", "r1",
                             "--sha256", "cd" * 32, "--dest", "/models/mmproj")
    assert resolve_model(parse({"model": {"url": "https://h.test/m.gguf"}})).mmproj is None


@pytest.mark.parametrize("model,paths,dests,sources", [
    # Downloaded next to a downloaded model, each adapter in a folder of its own: the same file name twice is fine.
    ({"url": "https://h.test/m.gguf", "loras": [{"url": "https://h.test/a/adapter.gguf?dl=1"},
                                                 {"huggingFace": {"repo": "o/r", "file": "x/adapter.gguf"}}]},
     ["/models/lora/0/adapter.gguf", "/models/lora/1/adapter.gguf"], ["/models/lora/0", "/models/lora/1"],
     ["url", "huggingFace"]),
    # A pvc model: downloads go to the lora emptyDir, files on the claim are used where they are.
    ({"pvc": {"claimName": "c", "path": "m.gguf"}, "loras": [{"path": "./l/../a.gguf"}, {"url": "https://h.test/b.gguf"}]},
     ["/models/a.gguf", "/lora/1/b.gguf"], ["/models", "/lora/1"], ["path", "url"]),
])
def test_resolve_loras(model, paths, dests, sources):
    loras = resolve_model(parse({"model": model})).loras
    assert [(a.index, a.path, a.dest, a.source) for a in loras] == list(zip(range(len(paths)), paths, dests, sources))
    for lora in loras:
        assert lora.file == lora.path.rsplit("/", 1)[1]
        if lora.source == "path":
            assert lora.fetch_args == () and lora.description == "pvc://c/a.gguf"
        else:  # kubellama-fetch --dest DIR puts the file at DIR/<basename>: the server's --lora must match
            assert lora.fetch_args[-2:] == ("--dest", lora.dest) and lora.path == f"{lora.dest}/{lora.file}"


def test_lora_names_checksums_and_labels():
    model = resolve_model(parse({"model": {"url": "https://h.test/m.gguf", "loras": [
        {"name": "sql", "huggingFace": {"repo": "o/r", "file": "sql.gguf", "revision": "r1"}, "sha256": "CD" * 32},
        {"url": "https://h.test/support.gguf"}]}}))
    sql, support = model.loras
    assert sql.fetch_args == ("--hf-repo", "o/r", "--hf-file", "sql.gguf", "--hf-revision", "r1",
                              "--sha256", "cd" * 32, "--dest", "/models/lora/0")
    assert sql.description == "hf://o/r/sql.gguf@r1"
    assert (sql.name, sql.label) == ("sql", "LoRA adapter 0 (sql)")
    assert (support.name, support.label) == ("", "LoRA adapter 1")
    assert resolve_model(parse({"model": {"url": "https://h.test/m.gguf"}})).loras == ()


def test_lora_changes_roll_the_pods():
    """Adding, removing or reordering adapters changes the pod template (new --lora args, new init containers)."""
    base = {"model": {"url": "https://h.test/m.gguf", "loras": [{"url": "https://h.test/a.gguf"},
                                                                 {"url": "https://h.test/b.gguf"}]}}
    swapped = copy.deepcopy(base)
    swapped["model"]["loras"].reverse()

    def sts(spec):
        spec = parse(spec)
        objs, _ = desired_children(OWNER, spec, resolve_model(spec), OperatorConfig(), servicemonitor_crd=False)
        return with_hash(next(o for o in objs if o["kind"] == "StatefulSet"))

    assert needs_apply(sts(base), sts(swapped))
    assert not needs_apply(sts(base), sts(copy.deepcopy(base)))
