"""What of the e2e set-up can be proven without a cluster (runs in `make test`):
the chart renders with the e2e values and every object validates; the in-cluster
model server and the LlamaServer the e2e tests apply are valid; the model server's
command really serves the model to the real fetcher; the kind config and the
GitHub workflow are well-formed."""

from __future__ import annotations

import hashlib
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from pathlib import Path

import celpy
import e2e_checks
import jsonschema
import kubernetes_validate
import pytest
import yaml

from kubellama_server.testing.wait import free_port, wait_until

from e2e_support import (
    CHART,
    E2E_DIR,
    MODEL_FILE,
    REPO_ROOT,
    find_tool,
    http,
    image,
    image_values,
    load_manifest,
    stop,
    with_image,
)

K8S_VERSIONS = ["1.30", "1.33"]
#: The CRD `helm install` puts in the e2e cluster (the chart's copy of crds/).
CRD_FILE = CHART / "crds" / "kubellama.dev_llamaservers.yaml"
WORKFLOW = REPO_ROOT / ".github" / "workflows" / "e2e.yml"


def validate_all(objects: list[dict]) -> None:
    for obj in objects:
        for version in K8S_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as exc:
                raise AssertionError(f"{obj['kind']}/{obj['metadata'].get('name')} invalid for "
                                     f"Kubernetes {version}: {exc}") from exc


def helm_template(*extra: str) -> list[dict]:
    helm = find_tool("helm")
    if helm is None:
        pytest.skip("helm not found (PATH, $KUBELLAMA_HELM or .tools/bin/helm from `make helm-tool`)")
    proc = subprocess.run([helm, "template", "kubellama", str(CHART), "--namespace", "kubellama-system",
                           "--include-crds", "-f", str(E2E_DIR / "values.yaml"), *extra],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"helm template with e2e/values.yaml failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    overrides = tmp_path_factory.mktemp("values") / "images.yaml"
    overrides.write_text(yaml.safe_dump(image_values()))
    return helm_template("-f", str(overrides))


def test_e2e_values_render_and_validate(rendered: list[dict]) -> None:
    kinds = {d["kind"] for d in rendered}
    assert {"CustomResourceDefinition", "Deployment", "ServiceAccount"} <= kinds, kinds
    validate_all(rendered)
    # No Prometheus Operator in kind: the e2e values must not need its CRDs.
    assert not kinds & {"PodMonitor", "ServiceMonitor", "PrometheusRule"}


def test_e2e_values_use_the_images_under_test(rendered: list[dict]) -> None:
    (deployment,) = [d for d in rendered if d["kind"] == "Deployment"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == image("kubellama-operator")
    assert container["imagePullPolicy"] == "IfNotPresent"  # kind-loaded images are never pulled
    assert image("kubellama-server") in yaml.safe_dump(container)
    args = " ".join(container.get("args", []) + container.get("command", []))
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    assert "IfNotPresent" in args or "IfNotPresent" in env.values(), "server pods must not pull in kind"


def test_e2e_values_follow_image_repo_and_tag(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("IMAGE_REPO", "registry.example/ci")
    monkeypatch.setenv("IMAGE_TAG", "pr-42")
    overrides = tmp_path / "images.yaml"
    overrides.write_text(yaml.safe_dump(image_values()))
    docs = helm_template("-f", str(overrides))
    (deployment,) = [d for d in docs if d["kind"] == "Deployment"]
    text = yaml.safe_dump(deployment)
    assert "registry.example/ci/kubellama-operator:pr-42" in text
    assert "registry.example/ci/kubellama-server:pr-42" in text


# --- the in-cluster model server ---------------------------------------------------------

def test_model_server_manifest_validates() -> None:
    objects = with_image(load_manifest("model-server.yaml"), image("kubellama-server"))
    validate_all(objects)
    deployment, service = objects
    assert (deployment["kind"], service["kind"]) == ("Deployment", "Service")
    pod = deployment["spec"]["template"]
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    (container,) = pod["spec"]["containers"]
    assert container["image"] == image("kubellama-server")  # no image from outside the project
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    (volume,) = pod["spec"]["volumes"]
    assert volume["configMap"]["name"] == "e2e-model"


def _model_url_parts() -> tuple[str, str]:
    (llama,) = load_manifest("llamaserver.yaml")
    url = urllib.parse.urlsplit(llama["spec"]["model"]["url"])
    return url.hostname, url.path.lstrip("/")


def test_llamaserver_points_at_the_model_server() -> None:
    host, path = _model_url_parts()
    deployment, service = load_manifest("model-server.yaml")
    assert host == service["metadata"]["name"]
    assert path == MODEL_FILE
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    probe = container["readinessProbe"]["httpGet"]["path"]
    assert probe == f"/{MODEL_FILE}", "ready only once the model file is served"


def test_model_server_command_serves_the_model_to_the_fetcher(tmp_path: Path) -> None:
    """Run the model server's own command on loopback and fetch from it with kubellama-fetch,
    as the LlamaServer's init container does in the cluster."""
    fetcher = shutil.which("kubellama-fetch", path=str(Path(sys.executable).parent))
    if fetcher is None or importlib.util.find_spec("kubellama_server.fetch") is None:
        pytest.skip("kubellama-fetch (the model fetcher) is not installed yet; run `make install`")
    from kubellama_server.testing.tiny_gguf import build_tiny_gguf

    served = tmp_path / "srv"
    served.mkdir()
    data = build_tiny_gguf(served / MODEL_FILE).read_bytes()
    (deployment, _) = load_manifest("model-server.yaml")
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    command = list(container["command"])
    port = free_port()
    command[command.index("8000")] = str(port)
    command[command.index("0.0.0.0")] = "127.0.0.1"
    command[command.index("/srv/models")] = str(served)
    assert command[0] == "python"
    server = subprocess.Popen([sys.executable, *command[1:]], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        for _ in range(100):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.05)
        _, path = _model_url_parts()
        dest = tmp_path / "models"
        fetch = [fetcher, "--url", f"http://127.0.0.1:{port}/{path}",
                 "--sha256", hashlib.sha256(data).hexdigest(), "--dest", str(dest)]
        proc = subprocess.run(fetch, capture_output=True, text=True, timeout=120,
                              env={**os.environ, "HF_HUB_OFFLINE": "1"})
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.strip().splitlines()[-1] == str(dest / MODEL_FILE)
        assert (dest / MODEL_FILE).read_bytes() == data
        # A path the server does not have: the fetcher's "not found" exit code (3).
        missing = subprocess.run([fetcher, "--url", f"http://127.0.0.1:{port}/nope.gguf", "--dest", str(dest)],
                                 capture_output=True, text=True, timeout=120)
        assert missing.returncode == 3, missing.stderr
    finally:
        stop(server, grace=10)


# --- the e2e checks, against a real server on loopback -----------------------------------

class LocalServer:
    """kubellama-server on loopback with the flags the e2e LlamaServer asks for."""

    def __init__(self, model: Path, slots: Path, ctx: int = 512, extra: tuple[str, ...] = ()):
        (llama,) = load_manifest("llamaserver.yaml")
        spec = llama["spec"]
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        server = shutil.which("kubellama-server", path=str(Path(sys.executable).parent))
        assert server, "kubellama-server is not installed; run `make install`"
        self.cmd = [server, "-m", str(model), "--host", "127.0.0.1", "--port", str(self.port),
                    "-c", str(ctx), "-np", str(spec["server"]["parallel"]), "-a", spec["model"]["alias"],
                    "--metrics", "--slot-save-path", str(slots), *extra]
        self.log = slots.parent / f"server-{self.port}.log"

    def __enter__(self) -> str:
        self.proc = subprocess.Popen(self.cmd, stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        def alive() -> None:
            assert self.proc.poll() is None, f"kubellama-server exited:\n{self.log.read_text()[-3000:]}"

        wait_until(lambda: http("GET", f"{self.url}/health", timeout=2)[0] == 200, "kubellama-server /health", 60,
                   interval=0.2, transient=(OSError,), alive=alive, detail=lambda: self.log.read_text()[-3000:])
        return self.url

    def __exit__(self, *exc) -> None:
        stop(self.proc, grace=40)


@pytest.fixture(scope="module")
def local_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from kubellama_server.testing.tiny_gguf import build_tiny_gguf

    return build_tiny_gguf(tmp_path_factory.mktemp("model") / MODEL_FILE)


def test_e2e_chat_check_on_a_local_server(local_model: Path, tmp_path: Path) -> None:
    with LocalServer(local_model, tmp_path / "slots") as url:
        e2e_checks.check_chat(url)


def test_e2e_metrics_check_on_a_local_server(local_model: Path, tmp_path: Path) -> None:
    with LocalServer(local_model, tmp_path / "slots") as url:
        e2e_checks.check_chat(url)
        e2e_checks.check_metrics(url)


def test_e2e_slot_checks_across_a_restart(local_model: Path, tmp_path: Path) -> None:
    slots = tmp_path / "slots"
    slots.mkdir()
    with LocalServer(local_model, slots) as url:
        saved = e2e_checks.prime_and_save_slot(url)
    assert (slots / e2e_checks.SLOT_FILE).is_file()
    with LocalServer(local_model, slots) as url:  # the "pod" is back: a new process
        assert e2e_checks.cold_cache(url) == 0
        e2e_checks.restore_slot_and_check(url, saved)


def test_e2e_warm_restart_check(local_model: Path, tmp_path: Path) -> None:
    """restoreOnStart (--slot-persist): slots saved on SIGTERM come back by themselves."""
    slots = tmp_path / "slots"
    slots.mkdir()
    with LocalServer(local_model, slots, extra=("--slot-persist",)) as url:
        e2e_checks.prime_slot(url)
    with LocalServer(local_model, slots, extra=("--slot-persist",)) as url:
        e2e_checks.check_prompt_cached(url)
    with LocalServer(local_model, slots) as url:  # the control: without it, a cold start
        assert e2e_checks.cold_cache(url, slot=0) == 0


def test_e2e_context_check_sees_a_doubled_context(local_model: Path, tmp_path: Path) -> None:
    with LocalServer(local_model, tmp_path / "slots", ctx=512) as url:
        before = e2e_checks.context_size(url)
    with LocalServer(local_model, tmp_path / "slots", ctx=1024) as url:
        assert e2e_checks.context_size(url) == 2 * before


# --- the LlamaServer the e2e tests apply -------------------------------------------------

def _crd_schema() -> dict:
    crd = yaml.safe_load(CRD_FILE.read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1alpha1"]
    return version["schema"]["openAPIV3Schema"]


def _cel_errors(schema: dict, value, path: str = "self") -> list[str]:
    """Evaluate the schema's x-kubernetes-validations (create-time rules) on `value`."""
    errors = []
    env = celpy.Environment()
    for rule in schema.get("x-kubernetes-validations", []):
        if "oldSelf" in rule["rule"]:
            continue  # transition rules do not apply on create
        program = env.program(env.compile(rule["rule"]))
        result = program.evaluate({"self": celpy.json_to_cel(value)})
        if isinstance(result, Exception) or not bool(result):
            errors.append(f"{path}: {rule.get('message', rule['rule'])}")
    if isinstance(value, dict):
        for key, sub in schema.get("properties", {}).items():
            if key in value:
                errors += _cel_errors(sub, value[key], f"{path}.{key}")
    return errors


def validate_llamaserver(obj: dict) -> None:
    schema = _crd_schema()
    jsonschema.validate(obj, schema, cls=jsonschema.Draft7Validator)
    assert (obj["apiVersion"], obj["kind"]) == ("kubellama.dev/v1alpha1", "LlamaServer")
    errors = _cel_errors(schema["properties"]["spec"], obj["spec"], "spec")
    assert not errors, errors


def test_llamaserver_manifest_validates_against_the_crd() -> None:
    (llama,) = load_manifest("llamaserver.yaml")
    llama["spec"]["model"]["sha256"] = "0" * 64  # what the tests add before applying
    validate_llamaserver(llama)
    assert llama["spec"]["storage"]["slots"]["enabled"] is True  # the slot restore test needs it


def test_missing_model_variant_validates() -> None:
    """The second LlamaServer the e2e tests apply (a download that must fail)."""
    (llama,) = load_manifest("llamaserver.yaml")
    llama["metadata"]["name"] = "missing-model"
    llama["spec"]["model"] = {"url": "http://e2e-model-server/does-not-exist.gguf"}
    llama["spec"]["storage"]["slots"] = {"enabled": False}
    validate_llamaserver(llama)


@pytest.mark.parametrize("change, expected", [
    (lambda s: s.update(replicas=-1), jsonschema.ValidationError),
    (lambda s: s["model"].update(huggingFace={"repo": "a/b", "file": "c.gguf"}), AssertionError),
    (lambda s: s["storage"]["slots"].update(enabled=False, restoreOnStart=True), AssertionError),
], ids=["negative-replicas", "two-model-sources", "restore-without-slots"])
def test_llamaserver_validation_rejects_bad_specs(change, expected) -> None:
    (llama,) = load_manifest("llamaserver.yaml")
    change(llama["spec"])
    with pytest.raises(expected):
        validate_llamaserver(llama)


# --- kind and the workflow ---------------------------------------------------------------

def test_kind_config() -> None:
    config = yaml.safe_load((E2E_DIR / "kind-config.yaml").read_text())
    assert (config["kind"], config["apiVersion"]) == ("Cluster", "kind.x-k8s.io/v1alpha4")
    roles = [n["role"] for n in config["nodes"]]
    assert roles.count("control-plane") == 1 and "worker" in roles


def test_github_workflow_runs_make_e2e() -> None:
    workflow = yaml.safe_load(WORKFLOW.read_text())
    jobs = workflow["jobs"]
    steps = [s for job in jobs.values() for s in job["steps"]]
    runs = "\n".join(s.get("run", "") for s in steps)
    assert "make e2e" in runs
    assert any("kind" in s.get("uses", "") or "kind" in s.get("run", "") for s in steps)
    assert all(job.get("timeout-minutes") for job in jobs.values()), "a hung cluster must not burn hours"
    # `on:` parses as True in YAML 1.1
    triggers = workflow.get("on", workflow.get(True))
    assert "pull_request" in triggers and "push" in triggers


def _actionlint() -> str:
    candidates = [os.environ.get("KUBELLAMA_ACTIONLINT"), find_tool("actionlint")]
    cache = Path(os.environ.get("KUBELLAMA_CACHE", Path.home() / ".cache" / "kubellama"))
    candidates += sorted(str(p) for p in cache.glob("tools/actionlint-*/actionlint"))
    for candidate in candidates:
        if candidate and Path(candidate).is_file():
            return candidate
    pytest.skip("actionlint not built (`make actionlint-tool`, needs Go)")


def test_actionlint_passes() -> None:
    proc = subprocess.run([_actionlint(), "-no-color", str(WORKFLOW)], capture_output=True, text=True,
                          timeout=120, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_actionlint_catches_a_broken_workflow(tmp_path: Path) -> None:
    broken = tmp_path / "broken.yml"
    broken.write_text(WORKFLOW.read_text().replace("runs-on: ubuntu-latest", "runs-on: ubuntu-latest\n"
                                                   "    if: ${{ matrix.nope.nope }}"))
    proc = subprocess.run([_actionlint(), "-no-color", str(broken)], capture_output=True, text=True,
                          timeout=120, cwd=REPO_ROOT)
    assert proc.returncode != 0 and "nope" in proc.stdout


# --- skipping in `make test`, failing loudly in `make e2e` -------------------------------

def _pytest_cluster_tests(**env: str) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if k not in ("E2E", "KUBECONFIG", "KUBELLAMA_REQUIRE_CLUSTER")}
    return subprocess.run([sys.executable, "-m", "pytest", "e2e/tests/test_cluster.py", "-q", "-rs",
                           "-p", "no:cacheprovider"], env={**clean, **env}, cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120)


def test_cluster_tests_skip_with_one_line_without_a_local_node(tmp_path: Path) -> None:
    """Without E2E=1 the cluster tests run on the local node (e2e/node); on a machine where it
    cannot run (here: an empty cache, so no node binaries) they skip with one line saying why."""
    proc = _pytest_cluster_tests(KUBELLAMA_CACHE=str(tmp_path))
    assert proc.returncode == 0, proc.stdout
    skip_lines = [line for line in proc.stdout.splitlines() if line.startswith("SKIPPED")]
    assert len(skip_lines) == 1 and "no local node here" in skip_lines[0] and "make e2e" in skip_lines[0], proc.stdout
    assert " passed" not in proc.stdout and " failed" not in proc.stdout


def test_cluster_tests_fail_without_a_local_node_in_ci(tmp_path: Path) -> None:
    """KUBELLAMA_REQUIRE_CLUSTER=1 (.ci/run): the same machine fails the run instead of skipping."""
    proc = _pytest_cluster_tests(KUBELLAMA_CACHE=str(tmp_path), KUBELLAMA_REQUIRE_CLUSTER="1")
    assert proc.returncode != 0
    assert "KUBELLAMA_REQUIRE_CLUSTER=1 but the e2e tests cannot run on the local node" in proc.stdout + proc.stderr


def test_cluster_tests_fail_loudly_with_e2e_and_no_cluster(tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "nowhere",
        "clusters": [{"name": "nowhere", "cluster": {"server": f"https://127.0.0.1:{free_port()}"}}],
        "contexts": [{"name": "nowhere", "context": {"cluster": "nowhere", "user": "nobody"}}],
        "users": [{"name": "nobody", "user": {"token": "x"}}]}))
    proc = _pytest_cluster_tests(E2E="1", KUBECONFIG=str(kubeconfig))
    assert proc.returncode != 0
    assert "E2E=1 but the end-to-end tests cannot run" in proc.stdout + proc.stderr


def _make(*args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
    return subprocess.run(["make", "--no-print-directory", *args], cwd=REPO_ROOT, capture_output=True,
                          text=True, timeout=120, env=env)


def test_make_e2e_fails_loudly_without_a_cluster_tool() -> None:
    proc = _make("e2e", "KIND=/nonexistent/kind", "CONTAINER_TOOL=/nonexistent/docker")
    assert proc.returncode != 0
    assert "make e2e needs a Kubernetes cluster" in proc.stderr
    assert "kind (/nonexistent/kind)" in proc.stderr and "docker engine" in proc.stderr
    assert "running the e2e tests" not in proc.stdout  # stopped before installing or building


def test_make_e2e_rejects_an_unknown_cluster_mode() -> None:
    proc = _make("e2e", "E2E_CLUSTER=minikube")
    assert proc.returncode != 0 and "E2E_CLUSTER must be 'kind' or 'existing'" in proc.stderr
