"""Pure manifest builders: content for each spec shape, and every object valid Kubernetes."""

from __future__ import annotations

import json
import os
import pathlib
import shutil
import subprocess

import kubernetes_validate
import pytest

from kubellama_operator.builders import desired_children
from kubellama_operator.builders.meta import labels, selector_labels
from kubellama_operator.config import OperatorConfig
from kubellama_operator.spec import parse, resolve_model

K8S_VERSIONS = ["1.29.0", "1.33.0"]
CONFIG = OperatorConfig(cpu_image="reg.test/kubellama-server:1", cuda_image="reg.test/kubellama-server-cuda:1")
URL = "https://models.test/path/gemma-3-270m-q4_k_m.gguf?download=1"
ROOT = pathlib.Path(__file__).resolve().parents[2]


def owner(name="gemma", namespace="ml"):
    return {"apiVersion": "kubellama.dev/v1alpha1", "kind": "LlamaServer",
            "metadata": {"name": name, "namespace": namespace, "uid": "6f1c3d0e-0000-4000-8000-000000000001"}}


def build(spec, *, sm_crd=False, pool_crd=False, name="gemma"):
    s = parse(spec)
    want, drop = desired_children(owner(name), s, resolve_model(s), CONFIG, servicemonitor_crd=sm_crd,
                                  inferencepool_crd=pool_crd)
    return {(o["kind"], o["metadata"]["name"]): o for o in want}, drop


def sts_of(objs, name="gemma"):
    return objs[("StatefulSet", name)]


def pod_of(objs):
    return sts_of(objs)["spec"]["template"]["spec"]


def server_container(objs):
    return next(c for c in pod_of(objs)["containers"] if c["name"] == "server")


def args_of(objs):
    return server_container(objs)["args"]


def flag(args, name):
    return args[args.index(name) + 1] if name in args else None


CPU = {"model": {"url": URL}}
GPU = {"model": {"huggingFace": {"repo": "Qwen/Qwen3-8B-GGUF", "file": "q4/Qwen3-8B-Q4_K_M.gguf", "revision": "abc"},
                 "tokenSecretRef": {"name": "hf"}, "sha256": "A" * 64},
       "replicas": 2, "gpu": {"count": 2, "product": "NVIDIA-L4", "tensorSplit": [3, 1.5], "mainGpu": 1},
       "storage": {"slots": {"enabled": True, "restoreOnStart": True, "size": "8Gi", "storageClassName": "fast"}},
       "apiKeySecretRef": {"name": "keys", "key": "primary"}, "monitoring": {"serviceMonitor": True},
       "server": {"systemPrompt": "You are terse.", "contextSize": 8192, "parallel": 4, "extraArgs": ["--mlock"]},
       "resources": {"limits": {"memory": "24Gi"}, "requests": {"cpu": "4"}},
       "tolerations": [{"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"}],
       "nodeSelector": {"pool": "gpu"}, "runtimeClassName": "nvidia", "priorityClassName": "high",
       "podLabels": {"team": "a", "app.kubernetes.io/instance": "hijack"}, "podAnnotations": {"x": "y"},
       "imagePullSecrets": [{"name": "pull"}], "serviceAccountName": "llm"}
PVC = {"model": {"pvc": {"claimName": "models", "path": "/llama/m.gguf"}}}
SHARED = {"model": {"url": URL}, "replicas": 3,
          "storage": {"model": {"claimName": "rwx-models"}, "retention": {"whenDeleted": "Delete"}}}
MMPROJ_HF = {"repo": "ggml-org/gemma-3-4b-it-GGUF", "file": "mmproj-model-f16.gguf", "revision": "v2"}
MULTIMODAL = {"model": {"huggingFace": {"repo": "ggml-org/gemma-3-4b-it-GGUF", "file": "gemma-3-4b-it-Q4_K_M.gguf"},
                        "tokenSecretRef": {"name": "hf"},
                        "mmproj": {"huggingFace": MMPROJ_HF, "sha256": "B" * 64, "offload": False}},
              "gpu": {"count": 1}}
PVC_MMPROJ_PATH = {"model": {"pvc": {"claimName": "models", "path": "vision/m.gguf"},
                             "mmproj": {"path": "vision/./mmproj.gguf"}}}
PVC_MMPROJ_URL = {"model": {"pvc": {"claimName": "models", "path": "vision/m.gguf"},
                            "mmproj": {"url": "https://models.test/v/mmproj-f16.gguf"}}}
LORA_HF = {"repo": "my-org/qwen-sql-lora-GGUF", "file": "gguf/adapter-f16.gguf", "revision": "v3"}
LORAS = {"model": {"huggingFace": {"repo": "Qwen/Qwen2.5-1.5B-Instruct-GGUF", "file": "qwen2.5-1.5b-instruct-q4_k_m.gguf"},
                   "tokenSecretRef": {"name": "hf"},
                   "mmproj": {"url": "https://models.test/v/mmproj-f16.gguf"},
                   "loras": [{"name": "sql", "huggingFace": LORA_HF, "sha256": "C" * 64},
                             {"name": "support", "url": "https://models.test/support/adapter-f16.gguf"}]}}
PVC_LORAS = {"model": {"pvc": {"claimName": "models", "path": "qwen/m.gguf"},
                       "loras": [{"path": "qwen/loras/./sql.gguf", "name": "sql"},
                                 {"url": "https://models.test/support/adapter-f16.gguf"},
                                 {"huggingFace": {"repo": "o/r", "file": "adapter-f16.gguf"}}]}}
OPEN_TO = {"model": {"url": URL}, "networkPolicy": {
    "allowedNamespaces": ["team-b", "apps", "team-b"],
    "from": [{"ipBlock": {"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]}},
             {"namespaceSelector": {"matchLabels": {"tier": "web"}},
              "podSelector": {"matchExpressions": [{"key": "app", "operator": "In", "values": ["ui"]}]}}]}}
PUBLISHED = {"model": {"url": URL}, "service": {"type": "LoadBalancer"}, "apiKeySecretRef": {"name": "k"}}
SPECS = {"open-to": OPEN_TO, "published": PUBLISHED, "cpu": CPU, "gpu": GPU, "pvc": PVC, "shared": SHARED, "multimodal": MULTIMODAL,
         "pvc-mmproj-path": PVC_MMPROJ_PATH, "pvc-mmproj-url": PVC_MMPROJ_URL, "loras": LORAS, "pvc-loras": PVC_LORAS}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("shape", sorted(SPECS))
def test_every_object_is_valid_kubernetes(shape, version):
    objs, _ = build(SPECS[shape], sm_crd=True)
    for obj in objs.values():
        if obj["apiVersion"].startswith("monitoring.coreos.com"):
            continue  # not a built-in kind: see test_servicemonitor_matches_prometheus_operator_schema
        kubernetes_validate.validate(obj, version, strict=True)


def test_servicemonitor_matches_prometheus_operator_schema():
    validators = pathlib.Path(os.environ.get("KUBELLAMA_MONITORING_VALIDATORS", ROOT / ".tools" / "monitoring-schemas"))
    pkg = validators / "node_modules" / "@kubernetes-models" / "prometheus-operator"
    if shutil.which("node") is None or not pkg.is_dir():
        pytest.skip("Prometheus Operator schema validators not installed (make monitoring-schemas)")
    sm = build(GPU, sm_crd=True)[0][("ServiceMonitor", "gemma")]
    script = ("const m = await import(process.argv[1]); const o = JSON.parse(require_stdin());"
              .replace("require_stdin()", "(await import('node:fs')).readFileSync(0, 'utf8')")
              + "new m.ServiceMonitor(o).validate(); console.log('ok');")
    proc = subprocess.run(["node", "--input-type=module", "-e", script,
                           (pkg / "monitoring.coreos.com" / "v1" / "ServiceMonitor.js").as_uri()],
                          input=json.dumps(sm), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


def test_children_carry_owner_reference_and_labels():
    objs, _ = build(GPU, sm_crd=True)
    assert set(objs) == {("ConfigMap", "gemma-config"), ("Service", "gemma-headless"), ("Service", "gemma"),
                         ("StatefulSet", "gemma"), ("PodDisruptionBudget", "gemma"), ("ServiceMonitor", "gemma"),
                         ("NetworkPolicy", "gemma")}
    for obj in objs.values():
        meta = obj["metadata"]
        assert meta["namespace"] == "ml"
        assert meta["ownerReferences"] == [{"apiVersion": "kubellama.dev/v1alpha1", "kind": "LlamaServer",
                                            "name": "gemma", "uid": owner()["metadata"]["uid"],
                                            "controller": True, "blockOwnerDeletion": True}]
        assert labels("gemma").items() <= meta["labels"].items()
    assert labels("gemma") == {"app.kubernetes.io/name": "kubellama-server", "app.kubernetes.io/instance": "gemma",
                               "app.kubernetes.io/managed-by": "kubellama-operator",
                               "app.kubernetes.io/component": "server", "kubellama.dev/llamaserver": "gemma"}


def test_cpu_server():
    objs, drop = build(CPU)
    pod = pod_of(objs)
    server = server_container(objs)
    assert server["image"] == CONFIG.cpu_image
    assert "resources" not in server or "nvidia.com/gpu" not in server["resources"].get("limits", {})
    assert "tolerations" not in pod and "nodeSelector" not in pod
    args = server["args"]
    assert server["command"] == ["kubellama-server"]
    assert flag(args, "-m") == "/models/gemma-3-270m-q4_k_m.gguf"
    assert flag(args, "--host") == "0.0.0.0" and flag(args, "--port") == "8080"
    assert "--metrics" in args and "-ngl" not in args and "--slot-save-path" not in args
    assert server["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]
    (init,) = pod["initContainers"]
    assert init["command"] == ["kubellama-fetch"]
    assert init["args"] == ["--url", URL, "--dest", "/models"]
    assert init["image"] == CONFIG.cpu_image
    claims = sts_of(objs)["spec"]["volumeClaimTemplates"]
    assert [c["metadata"]["name"] for c in claims] == ["model"]
    assert claims[0]["spec"]["resources"]["requests"]["storage"] == "20Gi"
    # One replica: no PDB; no ServiceMonitor CRD: scrape annotations on the pods instead.
    assert ("PodDisruptionBudget", "gemma") not in objs
    assert sts_of(objs)["spec"]["template"]["metadata"]["annotations"]["prometheus.io/scrape"] == "true"
    assert any(d.kind == "PodDisruptionBudget" for d in drop)
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False


@pytest.mark.parametrize("shape", ["gpu", "multimodal", "pvc-mmproj-url", "loras", "pvc-loras"])
def test_pods_are_locked_down(shape):
    objs, _ = build(SPECS[shape])
    pod = pod_of(objs)
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod["containers"] + pod["initContainers"]:
        sc = c["securityContext"]
        assert sc["readOnlyRootFilesystem"] is True and sc["allowPrivilegeEscalation"] is False
        assert sc["capabilities"] == {"drop": ["ALL"]} and sc["runAsNonRoot"] is True
        assert {"name": "tmp", "mountPath": "/tmp"} in c["volumeMounts"]


def test_probes_and_graceful_shutdown():
    objs, _ = build({**CPU, "server": {"startupTimeoutSeconds": 3600, "shutdownTimeoutSeconds": 90}})
    server = server_container(objs)
    startup = server["startupProbe"]
    assert startup["httpGet"] == {"path": "/health", "port": "http"}
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 3600
    assert server["readinessProbe"]["httpGet"]["path"] == "/health"
    liveness = server["livenessProbe"]
    assert liveness["httpGet"] == {"path": "/health", "port": "http"}, "a stuck server is restarted, not only a dead one"
    assert "tcpSocket" not in liveness and liveness["periodSeconds"] * liveness["failureThreshold"] >= 60
    assert server["lifecycle"]["preStop"]["exec"]["command"][0] == "sleep"
    assert flag(server["args"], "--shutdown-timeout") == "90"
    assert pod_of(objs)["terminationGracePeriodSeconds"] > 90


@pytest.mark.parametrize("server, slots, budget", [
    ({}, {}, {"preStop": 5, "drain": 30, "slotSave": 0, "schedulerStop": 5, "exit": 10}),
    ({"shutdownTimeoutSeconds": 0}, {"enabled": True}, {"preStop": 5, "drain": 0, "slotSave": 0, "schedulerStop": 5,
                                                        "exit": 10}),
    ({"shutdownTimeoutSeconds": 120}, {"enabled": True, "restoreOnStart": True},
     {"preStop": 5, "drain": 120, "slotSave": 60, "schedulerStop": 5, "exit": 10}),
])
def test_termination_grace_is_the_sum_of_the_servers_steps(server, slots, budget):
    from kubellama_operator.builders.statefulset import termination_budget, termination_grace

    spec = parse({**CPU, "server": server, "storage": {"slots": slots}})
    assert termination_budget(spec) == budget
    assert termination_grace(spec) == sum(budget.values())
    objs, _ = build({**CPU, "server": server, "storage": {"slots": slots}})
    assert pod_of(objs)["terminationGracePeriodSeconds"] == sum(budget.values())
    assert flag(args_of(objs), "--shutdown-timeout") == str(budget["drain"]), "the drain is the server's flag"
    assert ("--slot-persist" in args_of(objs)) is bool(budget["slotSave"]), "the save happens only with it"


def test_gpu_server():
    objs, _ = build(GPU, sm_crd=True)
    pod = pod_of(objs)
    server = server_container(objs)
    assert server["image"] == CONFIG.cuda_image and pod["initContainers"][0]["image"] == CONFIG.cuda_image
    assert server["resources"]["limits"] == {"memory": "24Gi", "nvidia.com/gpu": 2}
    assert server["resources"]["requests"] == {"cpu": "4"}
    assert {"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"} in pod["tolerations"]
    assert {"key": "dedicated", "operator": "Equal", "value": "llm", "effect": "NoSchedule"} in pod["tolerations"]
    assert pod["nodeSelector"] == {"pool": "gpu", "nvidia.com/gpu.product": "NVIDIA-L4"}
    assert pod["runtimeClassName"] == "nvidia" and pod["priorityClassName"] == "high"
    assert pod["imagePullSecrets"] == [{"name": "pull"}] and pod["serviceAccountName"] == "llm"
    args = server["args"]
    assert flag(args, "-ngl") == "999" and flag(args, "-mg") == "1" and flag(args, "-ts") == "3,1.5"
    assert flag(args, "-c") == "8192" and flag(args, "-np") == "4"
    assert args[-1] == "--mlock"


def test_gpu_layers_setting_wins():
    objs, _ = build({**CPU, "gpu": {"count": 1}, "server": {"gpuLayers": 20}})
    assert flag(args_of(objs), "-ngl") == "20"


def test_huggingface_fetch_with_token_and_checksum():
    objs, _ = build(GPU)
    init = next(c for c in pod_of(objs)["initContainers"] if c["name"] == "fetch-model")
    assert init["args"] == ["--hf-repo", "Qwen/Qwen3-8B-GGUF", "--hf-file", "q4/Qwen3-8B-Q4_K_M.gguf",
                            "--hf-revision", "abc", "--sha256", "a" * 64, "--dest", "/models"]
    token = next(e for e in init["env"] if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    assert flag(args_of(objs), "-m") == "/models/Qwen3-8B-Q4_K_M.gguf"


def test_slots_api_key_and_system_prompt():
    objs, _ = build(GPU, sm_crd=True)
    args = args_of(objs)
    assert flag(args, "--slot-save-path") == "/slots" and "--slot-persist" in args
    assert flag(args, "--api-key-file") == "/var/run/secrets/kubellama/api-key/api-key"
    assert flag(args, "-spf") == "/etc/kubellama/system-prompt.json"
    assert json.loads(objs[("ConfigMap", "gemma-config")]["data"]["system-prompt.json"]) == {"prompt": "You are terse."}
    vols = {v["name"]: v for v in pod_of(objs)["volumes"]}
    assert vols["api-key"]["secret"]["secretName"] == "keys"
    assert vols["api-key"]["secret"]["optional"] is True, "a missing Secret is reported by check-api-key instead"
    assert vols["api-key"]["secret"]["items"] == [{"key": "primary", "path": "api-key"}]
    mounts = {m["name"]: m for m in server_container(objs)["volumeMounts"]}
    assert mounts["slots"]["mountPath"] == "/slots" and mounts["api-key"]["readOnly"] is True
    claims = {c["metadata"]["name"]: c["spec"] for c in sts_of(objs)["spec"]["volumeClaimTemplates"]}
    assert claims["slots"] == {"accessModes": ["ReadWriteOnce"], "resources": {"requests": {"storage": "8Gi"}},
                               "storageClassName": "fast"}
    # Slot persistence needs time to save on shutdown: the server's 60 s on top of the drain.
    assert pod_of(objs)["terminationGracePeriodSeconds"] == 5 + 30 + 60 + 5 + 10


def test_api_key_secret_is_checked_by_the_first_init_container():
    """The operator reads no Secret: an init container that needs the key makes the kubelet report a missing one."""
    objs, _ = build(GPU)
    check, fetch = pod_of(objs)["initContainers"][:2]
    assert (check["name"], fetch["name"]) == ("check-api-key", "fetch-model")
    assert check["command"] == ["true"] and "args" not in check
    assert check["volumeMounts"] == [{"name": "tmp", "mountPath": "/tmp"}], "not the key's volume"
    assert check["env"] == [{"name": "API_KEY", "valueFrom": {"secretKeyRef": {"name": "keys", "key": "primary"}}}]
    assert "optional" not in check["env"][0]["valueFrom"]["secretKeyRef"]
    assert check["image"] == server_container(objs)["image"]
    assert check["securityContext"]["readOnlyRootFilesystem"] is True
    assert "check-api-key" not in [c["name"] for c in pod_of(build(CPU)[0]).get("initContainers", [])]
    pvc = pod_of(build({**PVC, "apiKeySecretRef": {"name": "k"}})[0])
    assert [c["name"] for c in pvc["initContainers"]] == ["check-api-key"]


def test_slots_without_restore():
    objs, _ = build({**CPU, "storage": {"slots": {"enabled": True}}})
    args = args_of(objs)
    assert "--slot-save-path" in args and "--slot-persist" not in args


def test_pvc_source_needs_no_download():
    objs, _ = build(PVC)
    pod = pod_of(objs)
    assert "initContainers" not in pod
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod["volumes"]
    assert "volumeClaimTemplates" not in sts_of(objs)["spec"]
    assert flag(args_of(objs), "-m") == "/models/llama/m.gguf"


def test_shared_model_claim_and_retention():
    objs, _ = build(SHARED)
    spec = sts_of(objs)["spec"]
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "rwx-models", "readOnly": False}} in \
        spec["template"]["spec"]["volumes"]
    assert "volumeClaimTemplates" not in spec
    assert spec["persistentVolumeClaimRetentionPolicy"] == {"whenDeleted": "Delete", "whenScaled": "Retain"}
    assert objs[("PodDisruptionBudget", "gemma")]["spec"]["maxUnavailable"] == 1


def test_statefulset_shape():
    objs, _ = build(GPU)
    spec = sts_of(objs)["spec"]
    assert spec["replicas"] == 2
    assert spec["serviceName"] == "gemma-headless"
    assert spec["selector"]["matchLabels"] == selector_labels("gemma")
    tmpl_labels = spec["template"]["metadata"]["labels"]
    assert tmpl_labels["app.kubernetes.io/instance"] == "gemma", "podLabels cannot break the selector"
    assert tmpl_labels["team"] == "a"
    assert spec["template"]["metadata"]["annotations"]["x"] == "y"


def test_services():
    objs, _ = build({**CPU, "service": {"type": "LoadBalancer", "port": 80, "annotations": {"lb": "internal"}}})
    svc = objs[("Service", "gemma")]
    assert svc["spec"]["type"] == "LoadBalancer"
    assert svc["spec"]["ports"] == [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
    assert svc["spec"]["selector"] == selector_labels("gemma")
    assert svc["metadata"]["annotations"] == {"lb": "internal"}
    headless = objs[("Service", "gemma-headless")]
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True


def test_servicemonitor_only_with_crd_and_flag():
    objs, _ = build(GPU, sm_crd=True)
    sm = objs[("ServiceMonitor", "gemma")]
    (endpoint,) = sm["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"], endpoint["interval"]) == ("http", "/metrics", "30s")
    assert {r["targetLabel"] for r in endpoint["relabelings"]} == {"llamaserver", "namespace", "pod", "model"}
    assert sts_of(objs)["spec"]["template"]["metadata"]["annotations"]["kubellama.dev/model"]
    assert sm["spec"]["selector"]["matchLabels"]["kubellama.dev/service-role"] == "api"
    assert "prometheus.io/scrape" not in sts_of(objs)["spec"]["template"]["metadata"].get("annotations", {})
    objs, drop = build(GPU, sm_crd=False)
    assert ("ServiceMonitor", "gemma") not in objs
    assert sts_of(objs)["spec"]["template"]["metadata"]["annotations"]["prometheus.io/port"] == "8080"
    objs, drop = build(CPU, sm_crd=True)
    assert ("ServiceMonitor", "gemma") not in objs and any(d.kind == "ServiceMonitor" for d in drop)


def test_image_override_and_metrics_off():
    objs, _ = build({**CPU, "image": "mine/server:dev", "server": {"metrics": False}})
    assert server_container(objs)["image"] == "mine/server:dev"
    assert "--metrics" not in args_of(objs)
    assert "prometheus.io/scrape" not in sts_of(objs)["spec"]["template"]["metadata"].get("annotations", {})


def test_builders_are_pure():
    spec = parse(GPU)
    before = spec.model_dump_json()
    model = resolve_model(spec)
    first = desired_children(owner(), spec, model, CONFIG, servicemonitor_crd=False)
    second = desired_children(owner(), spec, model, CONFIG, servicemonitor_crd=False)
    assert first == second and spec.model_dump_json() == before


def init_containers(objs):
    return {c["name"]: c for c in pod_of(objs).get("initContainers", [])}


def test_mmproj_is_fetched_after_the_model_into_the_model_volume():
    objs, _ = build(MULTIMODAL)
    pod = pod_of(objs)
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model", "fetch-mmproj"]
    model, mmproj = pod["initContainers"]
    assert mmproj["args"] == ["--hf-repo", "ggml-org/gemma-3-4b-it-GGUF", "--hf-file", "mmproj-model-f16.gguf",
                              "--hf-revision", "v2", "--sha256", "b" * 64, "--dest", "/models/mmproj"]
    # The same image, volume, security settings and resources as the model's download.
    for key in ("image", "imagePullPolicy", "command", "volumeMounts", "resources", "securityContext",
                "terminationMessagePolicy"):
        assert mmproj[key] == model[key], key
    assert model["image"] == CONFIG.cuda_image
    assert {"name": "model", "mountPath": "/models"} in mmproj["volumeMounts"]
    # The model's token is used for the projector's Hugging Face download too.
    token = next(e for e in mmproj["env"] if e["name"] == "HF_TOKEN")
    assert token["valueFrom"]["secretKeyRef"] == {"name": "hf", "key": "token"}
    args = args_of(objs)
    assert flag(args, "--mmproj") == "/models/mmproj/mmproj-model-f16.gguf"
    assert flag(args, "-m") == "/models/gemma-3-4b-it-Q4_K_M.gguf"
    assert "--no-mmproj-offload" in args
    # The server reads it from the model volume it already mounts; no extra volume.
    assert {v["name"] for v in pod["volumes"]} == {"tmp"}
    assert [c["metadata"]["name"] for c in sts_of(objs)["spec"]["volumeClaimTemplates"]] == ["model"]


def test_mmproj_offload_is_the_default_and_url_projectors_get_no_token():
    objs, _ = build({"model": {"url": URL, "mmproj": {"url": "https://models.test/p/mmproj.gguf?x=1"}}})
    args = args_of(objs)
    assert flag(args, "--mmproj") == "/models/mmproj/mmproj.gguf" and "--no-mmproj-offload" not in args
    mmproj = init_containers(objs)["fetch-mmproj"]
    assert mmproj["args"] == ["--url", "https://models.test/p/mmproj.gguf?x=1", "--dest", "/models/mmproj"]
    assert "HF_TOKEN" not in {e["name"] for e in mmproj["env"]}
    # A url model with a Hugging Face projector: only the projector's download gets the token.
    objs, _ = build({"model": {"url": URL, "tokenSecretRef": {"name": "hf"},
                               "mmproj": {"huggingFace": {"repo": "o/r", "file": "mm.gguf"}}}})
    inits = init_containers(objs)
    assert "HF_TOKEN" not in {e["name"] for e in inits["fetch-model"]["env"]}
    assert "HF_TOKEN" in {e["name"] for e in inits["fetch-mmproj"]["env"]}


def test_mmproj_on_the_model_claim_needs_no_download():
    objs, _ = build(PVC_MMPROJ_PATH)
    pod = pod_of(objs)
    assert "initContainers" not in pod
    assert flag(args_of(objs), "--mmproj") == "/models/vision/mmproj.gguf"
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod["volumes"]


def test_mmproj_download_for_a_pvc_model_uses_an_emptydir():
    """The model's claim stays read-only: a downloaded projector goes into a volume of its own."""
    objs, _ = build(PVC_MMPROJ_URL)
    pod = pod_of(objs)
    (init,) = pod["initContainers"]
    assert init["name"] == "fetch-mmproj"
    assert init["args"] == ["--url", "https://models.test/v/mmproj-f16.gguf", "--dest", "/mmproj"]
    assert init["volumeMounts"] == [{"name": "mmproj", "mountPath": "/mmproj"}, {"name": "tmp", "mountPath": "/tmp"}]
    assert {"name": "HF_HOME", "value": "/mmproj/.hf"} in init["env"]
    assert {"name": "mmproj", "emptyDir": {}} in pod["volumes"]
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod["volumes"]
    mounts = {m["name"]: m for m in server_container(objs)["volumeMounts"]}
    assert mounts["mmproj"] == {"name": "mmproj", "mountPath": "/mmproj", "readOnly": True}
    assert flag(args_of(objs), "--mmproj") == "/mmproj/mmproj-f16.gguf"
    assert flag(args_of(objs), "-m") == "/models/vision/m.gguf"
    assert "volumeClaimTemplates" not in sts_of(objs)["spec"]


def test_no_mmproj_no_projector_flags():
    for spec in (CPU, GPU, PVC, SHARED):
        objs, _ = build(spec)
        assert not {"--mmproj", "--no-mmproj-offload"} & set(args_of(objs))
        assert "fetch-mmproj" not in init_containers(objs)


# --- LoRA adapters: one fetch-lora-<i> init container each, then --lora in order ----------------------------


def flags(args, name):
    return [args[i + 1] for i, a in enumerate(args) if a == name]


def test_loras_are_fetched_after_the_model_and_projector_into_folders_of_their_own():
    objs, _ = build(LORAS)
    pod = pod_of(objs)
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-model", "fetch-mmproj", "fetch-lora-0", "fetch-lora-1"]
    model, _, sql, support = pod["initContainers"]
    assert sql["args"] == ["--hf-repo", "my-org/qwen-sql-lora-GGUF", "--hf-file", "gguf/adapter-f16.gguf",
                           "--hf-revision", "v3", "--sha256", "c" * 64, "--dest", "/models/lora/0"]
    assert support["args"] == ["--url", "https://models.test/support/adapter-f16.gguf", "--dest", "/models/lora/1"]
    # The same image, volume, security settings and resources as the model's download.
    for lora in (sql, support):
        for key in ("image", "imagePullPolicy", "command", "volumeMounts", "resources", "securityContext",
                    "terminationMessagePolicy"):
            assert lora[key] == model[key], key
    # The model's token goes to Hugging Face downloads only.
    assert next(e for e in sql["env"] if e["name"] == "HF_TOKEN")["valueFrom"]["secretKeyRef"] == \
        {"name": "hf", "key": "token"}
    assert "HF_TOKEN" not in {e["name"] for e in support["env"]}
    # --lora for each adapter, in the list's order (the server's ids): two files of one name do not meet.
    args = args_of(objs)
    assert flags(args, "--lora") == ["/models/lora/0/adapter-f16.gguf", "/models/lora/1/adapter-f16.gguf"]
    assert flag(args, "--mmproj") == "/models/mmproj/mmproj-f16.gguf"
    # The server reads them from the model volume it already mounts; no extra volume.
    assert {v["name"] for v in pod["volumes"]} == {"tmp"}
    assert {m["name"] for m in server_container(objs)["volumeMounts"]} == {"model", "tmp"}


def test_loras_for_a_pvc_model():
    """Files on the claim are used where they are; downloads go to an emptyDir (the claim stays read-only)."""
    objs, _ = build(PVC_LORAS)
    pod = pod_of(objs)
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-lora-1", "fetch-lora-2"], "adapter 0 is on the claim"
    support, hf = pod["initContainers"]
    assert support["args"] == ["--url", "https://models.test/support/adapter-f16.gguf", "--dest", "/lora/1"]
    assert hf["args"] == ["--hf-repo", "o/r", "--hf-file", "adapter-f16.gguf", "--dest", "/lora/2"]
    for init in (support, hf):
        assert init["volumeMounts"] == [{"name": "lora", "mountPath": "/lora"}, {"name": "tmp", "mountPath": "/tmp"}]
        assert {"name": "HF_HOME", "value": "/lora/.hf"} in init["env"]
    assert {"name": "lora", "emptyDir": {}} in pod["volumes"]
    assert {"name": "model", "persistentVolumeClaim": {"claimName": "models", "readOnly": True}} in pod["volumes"]
    mounts = {m["name"]: m for m in server_container(objs)["volumeMounts"]}
    assert mounts["lora"] == {"name": "lora", "mountPath": "/lora", "readOnly": True}
    assert mounts["model"]["readOnly"] is True
    assert flags(args_of(objs), "--lora") == ["/models/qwen/loras/sql.gguf", "/lora/1/adapter-f16.gguf",
                                             "/lora/2/adapter-f16.gguf"]
    assert "volumeClaimTemplates" not in sts_of(objs)["spec"]


def test_loras_on_the_claim_need_no_download_and_no_volume():
    objs, _ = build({"model": {"pvc": {"claimName": "models", "path": "m.gguf"},
                               "loras": [{"path": "a.gguf"}, {"path": "b/a.gguf"}]}})
    pod = pod_of(objs)
    assert "initContainers" not in pod
    assert {v["name"] for v in pod["volumes"]} == {"tmp", "model"}
    assert flags(args_of(objs), "--lora") == ["/models/a.gguf", "/models/b/a.gguf"]


def test_a_pvc_model_with_a_downloaded_projector_and_adapters_gets_both_emptydirs():
    objs, _ = build({"model": {**PVC_MMPROJ_URL["model"], "loras": [{"url": "https://models.test/a.gguf"}]}})
    pod = pod_of(objs)
    assert [c["name"] for c in pod["initContainers"]] == ["fetch-mmproj", "fetch-lora-0"]
    assert {"name": "mmproj", "emptyDir": {}} in pod["volumes"] and {"name": "lora", "emptyDir": {}} in pod["volumes"]
    assert [m["name"] for m in pod["initContainers"][1]["volumeMounts"]] == ["lora", "tmp"]


def test_sixteen_loras_make_valid_names():
    objs, _ = build({"model": {"url": URL, "loras": [{"url": f"https://models.test/{i}/a.gguf"} for i in range(16)]}})
    names = [c["name"] for c in pod_of(objs)["initContainers"]]
    assert names == ["fetch-model"] + [f"fetch-lora-{i}" for i in range(16)]
    assert flags(args_of(objs), "--lora") == [f"/models/lora/{i}/a.gguf" for i in range(16)]
    kubernetes_validate.validate(sts_of(objs), K8S_VERSIONS[-1], strict=True)


def test_no_loras_no_lora_flags():
    for spec in (CPU, GPU, PVC, SHARED, MULTIMODAL):
        objs, _ = build(spec)
        assert "--lora" not in args_of(objs)
        assert not [n for n in init_containers(objs) if n.startswith("fetch-lora")]
        assert "lora" not in {v["name"] for v in pod_of(objs)["volumes"]}


def networkpolicy_of(objs, name="gemma"):
    return objs[("NetworkPolicy", name)]


def test_networkpolicy_admits_only_the_router_and_prometheus_by_default():
    objs, drop = build(CPU)
    policy = networkpolicy_of(objs)
    assert policy["spec"]["podSelector"] == {"matchLabels": selector_labels("gemma")}
    assert policy["spec"]["policyTypes"] == ["Ingress"], "egress stays open: the fetchers download models"
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    assert rule["from"] == [
        {"podSelector": {"matchLabels": {"app.kubernetes.io/component": "router"}}},
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}},
         "podSelector": {"matchLabels": {"app.kubernetes.io/name": "prometheus"}}}]
    assert "NetworkPolicy" not in [d.kind for d in drop]


def test_networkpolicy_adds_the_namespaces_and_peers_the_spec_names():
    rule = networkpolicy_of(build(OPEN_TO)[0])["spec"]["ingress"][0]
    assert rule["from"][2:] == [
        {"namespaceSelector": {"matchExpressions": [{"key": "kubernetes.io/metadata.name", "operator": "In",
                                                     "values": ["apps", "team-b"]}]}},
        *OPEN_TO["networkPolicy"]["from"]]


def test_networkpolicy_follows_the_operators_prometheus_settings():
    from kubellama_operator.builders.networkpolicy import build_networkpolicy

    spec = parse(CPU)
    config = OperatorConfig(prometheus_namespace_selector=(("team", "obs"),), prometheus_pod_selector=())
    peers = build_networkpolicy(owner(), spec, config)["spec"]["ingress"][0]["from"]
    assert peers[1] == {"namespaceSelector": {"matchLabels": {"team": "obs"}}}, "no pod selector: any pod there"
    everywhere = OperatorConfig(prometheus_namespace_selector=(), prometheus_pod_selector=())
    assert build_networkpolicy(owner(), spec, everywhere)["spec"]["ingress"][0]["from"][1] == {"namespaceSelector": {}}


def test_networkpolicy_admits_the_operator_to_servers_with_lora_adapters():
    """The status pass reads the LoRA scales of the server pods (/metrics): their policy admits the operator."""
    from kubellama_operator.builders.networkpolicy import build_networkpolicy

    config = OperatorConfig(operator_namespace="kubellama-system",
                            operator_pod_selector=(("app.kubernetes.io/instance", "kl"),
                                                   ("app.kubernetes.io/component", "operator")))
    lora = parse({"model": {"url": URL, "loras": [{"url": "https://models.test/sql.gguf"}]}})
    peers = build_networkpolicy(owner(), lora, config)["spec"]["ingress"][0]["from"]
    assert peers[2:] == [{"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "kubellama-system"}},
                          "podSelector": {"matchLabels": {"app.kubernetes.io/instance": "kl",
                                                          "app.kubernetes.io/component": "operator"}}}]
    # No adapters, metrics off (nothing to read), or an operator outside the cluster: not admitted.
    no_metrics = parse({"model": {"url": URL, "loras": [{"url": URL}]}, "server": {"metrics": False}})
    for spec, cfg in ((parse(CPU), config), (no_metrics, config), (lora, OperatorConfig())):
        assert len(build_networkpolicy(owner(), spec, cfg)["spec"]["ingress"][0]["from"]) == 2


def test_networkpolicy_is_open_for_a_published_service_and_can_be_turned_off():
    (rule,) = networkpolicy_of(build(PUBLISHED)[0])["spec"]["ingress"]
    assert "from" not in rule and rule["ports"] == [{"protocol": "TCP", "port": 8080}]
    objs, drop = build({**CPU, "networkPolicy": {"enabled": False}})
    assert ("NetworkPolicy", "gemma") not in objs
    assert [(d.api_version, d.kind, d.name) for d in drop if d.kind == "NetworkPolicy"] == [
        ("networking.k8s.io/v1", "NetworkPolicy", "gemma")]


def test_hub_mirror_reaches_only_hugging_face_downloads():
    """--hf-endpoint: every huggingFace download (model, projector, adapters) gets HF_ENDPOINT; a url one not."""
    from dataclasses import replace

    from kubellama_operator.builders.statefulset import pod_spec

    spec = parse({"model": {"huggingFace": {"repo": "o/r", "file": "m.gguf"},
                                "mmproj": {"url": "https://models.test/mm.gguf"}}})
    mirror = replace(CONFIG, hf_endpoint="http://hub-mirror.ml.svc:8080")
    inits = {c["name"]: c for c in pod_spec(owner("gemma"), spec, resolve_model(spec), mirror)["initContainers"]}
    assert {"name": "HF_ENDPOINT", "value": "http://hub-mirror.ml.svc:8080"} in inits["fetch-model"]["env"]
    assert "HF_ENDPOINT" not in {e["name"] for e in inits["fetch-mmproj"]["env"]}
    plain = {c["name"]: c for c in pod_spec(owner("gemma"), spec, resolve_model(spec), CONFIG)["initContainers"]}
    assert "HF_ENDPOINT" not in {e["name"] for e in plain["fetch-model"]["env"]}
