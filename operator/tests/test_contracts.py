"""The operator's side of its contracts with the server and the fetcher, checked against the real ones:
the server flags it derives parse with `kubellama-server`'s own parser, and what the real
`kubellama-fetch` leaves as its termination message (success and failure) becomes the status."""

from __future__ import annotations

import hashlib
import http.server
import os
import pathlib
import subprocess
import sys
import threading

import pytest

from kubellama_operator.builders import desired_children
from kubellama_operator.config import OperatorConfig
from kubellama_operator.serverargs import server_args
from kubellama_operator.spec import normalize, resolve_model
from kubellama_operator.status import compute_status, pod_view

server_cli = pytest.importorskip("kubellama_server.cli")
fetch_cli = pytest.importorskip("kubellama_server.fetch.cli")

SPECS = {
    "cpu": {"model": {"url": "https://m.test/a.gguf"}},
    "everything": {"model": {"huggingFace": {"repo": "o/r", "file": "x/m.gguf", "revision": "v1"}, "alias": "m",
                             "sha256": "ab" * 32},
                   "gpu": {"count": 2, "tensorSplit": [3, 1], "mainGpu": 1},
                   "server": {"contextSize": 8192, "parallel": 4, "batchSize": 512, "ubatchSize": 256, "threads": 8,
                              "embedding": True, "chatTemplate": "chatml", "systemPrompt": "Be brief.",
                              "nPredict": 256, "shutdownTimeoutSeconds": 45, "extraArgs": ["-tb", "4"]},
                   "storage": {"slots": {"enabled": True, "restoreOnStart": True}},
                   "apiKeySecretRef": {"name": "k"}},
    "pvc": {"model": {"pvc": {"claimName": "c", "path": "dir/m.gguf"}}, "server": {"metrics": False, "gpuLayers": 0}},
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_server_accepts_the_derived_flags(name, tmp_path):
    spec = normalize(SPECS[name])
    model = resolve_model(spec)
    args = server_args(spec, model)
    objs, _ = desired_children({"metadata": {"name": "a", "namespace": "n", "uid": "u"}}, spec, model,
                               OperatorConfig(), servicemonitor_crd=False)
    config_map = next((o for o in objs if o["kind"] == "ConfigMap"), {"data": {}})
    # The server reads these files at start: write what the Secret and our ConfigMap would mount.
    for flag, mounted, content in (
            ("--api-key-file", "/var/run/secrets/kubellama/api-key/api-key", "secret\n"),
            ("-spf", "/etc/kubellama/system-prompt.json", config_map["data"].get("system-prompt.json"))):
        if flag in args:
            assert args[args.index(flag) + 1] == mounted
            local = tmp_path / pathlib.Path(mounted).name
            local.write_text(content)
            args[args.index(flag) + 1] = str(local)
    settings, given = server_cli.parse_settings(args, environ={})
    assert settings.model == model.path and settings.host == "0.0.0.0" and settings.port == 8080
    assert settings.alias == model.name and settings.log_format == "json"
    if name == "everything":
        assert (settings.ctx_size, settings.parallel, settings.batch_size, settings.ubatch_size) == (8192, 4, 512, 256)
        assert settings.n_gpu_layers == 999 and settings.main_gpu == 1 and settings.tensor_split == [3.0, 1.0]
        assert settings.embedding and settings.chat_template == "chatml" and settings.n_predict == 256
        assert settings.system_prompt_file == str(tmp_path / "system-prompt.json")
        assert settings.slot_save_path == "/slots" and settings.slot_persist
        assert settings.api_key_file == str(tmp_path / "api-key")
        assert settings.shutdown_timeout == 45 and settings.threads_batch == 4 and settings.metrics
    if name == "pvc":
        assert not settings.metrics and settings.n_gpu_layers == 0


@pytest.mark.parametrize("name", sorted(SPECS))
def test_fetcher_accepts_the_init_container_args(name):
    spec = normalize(SPECS[name])
    model = resolve_model(spec)
    objs, _ = desired_children({"metadata": {"name": "a", "namespace": "n", "uid": "u"}}, spec, model,
                               OperatorConfig(), servicemonitor_crd=False)
    pod = next(o for o in objs if o["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    if not model.fetch_args:
        assert "initContainers" not in pod
        return
    (init,) = pod["initContainers"]
    args = fetch_cli.build_parser().parse_args(init["args"])
    assert str(args.dest) == "/models"
    assert (args.url, args.hf_repo, args.hf_file, args.hf_revision) == (
        spec["model"].get("url"), spec["model"].get("huggingFace", {}).get("repo"),
        spec["model"].get("huggingFace", {}).get("file"), spec["model"].get("huggingFace", {}).get("revision"))


@pytest.fixture
def model_host(tmp_path):
    """A loopback HTTP server with a tiny real GGUF model at /models/tiny-q4_0.gguf."""
    from kubellama_server.testing.tiny_gguf import build_tiny_gguf

    root = tmp_path / "www"
    (root / "models").mkdir(parents=True)
    build_tiny_gguf(root / "models" / "tiny-q4_0.gguf")
    handler = lambda *a, **kw: http.server.SimpleHTTPRequestHandler(*a, directory=str(root), **kw)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root / "models" / "tiny-q4_0.gguf"
    server.shutdown()


def _run_init_container(args: list[str], dest: pathlib.Path, tmp_path: pathlib.Path) -> tuple[int, str]:
    """Run the init container's command as the kubelet would (dest remapped), return (exit code, termination message)."""
    log = tmp_path / "termination-log"
    log.write_text("")
    args = [str(dest) if a == "/models" else a for a in args]
    env = dict(os.environ, KUBELLAMA_TERMINATION_LOG=str(log), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "kubellama_server.fetch", *args, "--retries", "0"],
                          capture_output=True, text=True, timeout=120, env=env)
    return proc.returncode, log.read_text()


def _as_pod(code: int, message: str) -> dict:
    term = {"exitCode": code, "message": message}
    return {"status": {"initContainerStatuses": [{"name": "fetch-model", "state": {"terminated": term}}],
                       "containerStatuses": [{"name": "server", "ready": code == 0,
                                              "state": {"running": {}} if code == 0 else {"waiting": {"reason": "PodInitializing"}}}]}}


def test_fetched_model_size_reaches_the_status(model_host, tmp_path):
    base, source = model_host
    spec = normalize({"model": {"url": f"{base}/models/tiny-q4_0.gguf"}})
    model = resolve_model(spec)
    code, message = _run_init_container(list(model.fetch_args), tmp_path / "models", tmp_path)
    assert code == 0, message
    assert (tmp_path / "models" / model.file).stat().st_size == source.stat().st_size
    status = compute_status(name="a", namespace="n", generation=1, desired=1, model=model, endpoint="e", selector="s",
                            pods=[_as_pod(code, message)], statefulset=None, problems=[])
    assert status["model"]["sizeBytes"] == source.stat().st_size
    assert status["model"]["sha256"] == hashlib.sha256(source.read_bytes()).hexdigest()
    assert status["model"]["path"] == model.path


def test_fetch_failure_reason_and_message_reach_the_status(model_host, tmp_path):
    base, _ = model_host
    spec = normalize({"model": {"url": f"{base}/models/missing.gguf"}})
    code, message = _run_init_container(list(resolve_model(spec).fetch_args), tmp_path / "models", tmp_path)
    assert code == 3, message
    view = pod_view(_as_pod(code, message))
    assert view.stage == "Failed" and view.reason == "ModelNotFound"
    assert message.strip() and message.strip() in view.message


def test_download_progress_from_the_fetchers_own_log_lines():
    import io

    from kubellama_server.fetch.progress import JsonProgress

    from kubellama_operator.status import describe_progress, download_progress

    stream = io.StringIO()
    reporter = JsonProgress(stream, interval=0)
    reporter.start("m.gguf", 4 * 1024 ** 3, url="https://m.test/m.gguf")
    reporter.update(1024 ** 3)
    progress = download_progress("not json\n" + stream.getvalue())
    assert progress["event"] == "progress" and progress["bytes_total"] == 4 * 1024 ** 3
    text = describe_progress(progress)
    assert text.startswith("downloading m.gguf: 25% of 4.0 GiB"), text
    assert describe_progress(None) == "downloading the model"
