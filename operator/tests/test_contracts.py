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
from kubellama_operator.spec import parse, resolve_model
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
                              "nPredict": 256, "cacheRamMiB": 2048, "shutdownTimeoutSeconds": 45, "extraArgs": ["-tb", "4"]},
                   "storage": {"slots": {"enabled": True, "restoreOnStart": True}},
                   "apiKeySecretRef": {"name": "k"}},
    "pvc": {"model": {"pvc": {"claimName": "c", "path": "dir/m.gguf"}}, "server": {"metrics": False, "gpuLayers": 0}},
    "multimodal": {"model": {"huggingFace": {"repo": "o/r", "file": "m.gguf"}, "tokenSecretRef": {"name": "hf"},
                             "mmproj": {"huggingFace": {"repo": "o/r", "file": "v/mmproj.gguf", "revision": "v2"},
                                        "sha256": "cd" * 32, "offload": False}},
                   "gpu": {"count": 1}},
    "pvc-multimodal": {"model": {"pvc": {"claimName": "c", "path": "m.gguf"},
                                 "mmproj": {"url": "https://m.test/mmproj.gguf"}}},
    "loras": {"model": {"huggingFace": {"repo": "o/r", "file": "m.gguf"}, "tokenSecretRef": {"name": "hf"},
                        "loras": [{"name": "sql", "huggingFace": {"repo": "o/sql", "file": "g/adapter.gguf",
                                                                  "revision": "v2"}, "sha256": "EF" * 32},
                                  {"url": "https://m.test/support/adapter.gguf"}]},
              "server": {"extraArgs": ["--lora-base", "/models/m.gguf"]}},
    "pvc-loras": {"model": {"pvc": {"claimName": "c", "path": "m.gguf"},
                            "mmproj": {"path": "mm.gguf"},
                            "loras": [{"path": "l/sql.gguf"}, {"url": "https://m.test/support/adapter.gguf"}]}},
}


@pytest.mark.parametrize("name", sorted(SPECS))
def test_server_accepts_the_derived_flags(name, tmp_path):
    spec = parse(SPECS[name])
    model = resolve_model(spec)
    args = server_args(spec, model)
    objs, _ = desired_children({"metadata": {"name": "a", "namespace": "n", "uid": "u"}}, spec, model,
                               OperatorConfig(), servicemonitor_crd=False)
    config_map = next((o for o in objs if o["kind"] == "ConfigMap"), {"data": {}})
    # The server reads these files at start: write what the Secret, our ConfigMap and fetch-mmproj would put there.
    for flag, mounted, content in (
            ("--api-key-file", "/var/run/secrets/kubellama/api-key/api-key", "secret\n"),
            ("-spf", "/etc/kubellama/system-prompt.json", config_map["data"].get("system-prompt.json")),
            ("--mmproj", model.mmproj.path if model.mmproj else None, "GGUF")):
        if flag in args:
            assert args[args.index(flag) + 1] == mounted
            local = tmp_path / pathlib.Path(mounted).name
            local.write_text(content)
            args[args.index(flag) + 1] = str(local)
    settings, given = server_cli.parse_settings(args, environ={})
    assert settings.lora == [lora.path for lora in model.loras], "one --lora per adapter, in order"
    if name == "loras":
        assert settings.lora_base == "/models/m.gguf", "--lora-base is not the operator's: it passes through"
    assert settings.model == model.path and settings.host == "0.0.0.0" and settings.port == 8080
    assert settings.alias == model.name and settings.log_format == "json"
    if name == "everything":
        assert (settings.ctx_size, settings.parallel, settings.batch_size, settings.ubatch_size) == (8192, 4, 512, 256)
        assert settings.n_gpu_layers == 999 and settings.main_gpu == 1 and settings.tensor_split == [3.0, 1.0]
        assert settings.embedding and settings.chat_template == "chatml" and settings.n_predict == 256
        assert settings.cache_ram == 2048
        assert settings.system_prompt_file == str(tmp_path / "system-prompt.json")
        assert settings.slot_save_path == "/slots" and settings.slot_persist
        assert settings.api_key_file == str(tmp_path / "api-key")
        assert settings.shutdown_timeout == 45 and settings.threads_batch == 4 and settings.metrics
    if name == "pvc":
        assert not settings.metrics and settings.n_gpu_layers == 0
    if model.mmproj is not None:
        assert settings.mmproj == str(tmp_path / model.mmproj.file)
        assert settings.mmproj_offload is model.mmproj.offload
    else:
        assert not settings.mmproj and settings.mmproj_offload


@pytest.mark.parametrize("name", sorted(SPECS))
def test_fetcher_accepts_the_init_container_args(name):
    spec = parse(SPECS[name])
    model = resolve_model(spec)
    objs, _ = desired_children({"metadata": {"name": "a", "namespace": "n", "uid": "u"}}, spec, model,
                               OperatorConfig(), servicemonitor_crd=False)
    pod = next(o for o in objs if o["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    inits = {c["name"]: c for c in pod.get("initContainers", []) if c["name"] != "check-api-key"}
    wanted = [("fetch-model", spec.model, "/models", model.fetch_args)]
    if model.mmproj is not None:
        wanted.append(("fetch-mmproj", spec.model.mmproj, model.mmproj.dest, model.mmproj.fetch_args))
    for lora, lora_spec in zip(model.loras, spec.model.loras or []):
        wanted.append((f"fetch-lora-{lora.index}", lora_spec, lora.dest, lora.fetch_args))
    assert list(inits) == [name for name, _, _, fetch in wanted if fetch]
    for name, source, dest, _ in wanted:
        if name not in inits:
            continue
        args = fetch_cli.build_parser().parse_args(inits[name]["args"])
        assert str(args.dest) == dest
        hf = source.hugging_face
        assert (args.url, args.hf_repo, args.hf_file, args.hf_revision) == (
            source.url, hf and hf.repo, hf and hf.file, hf and hf.revision)
        assert args.sha256 == (source.sha256.lower() if source.sha256 else None)
        mounts = {m["mountPath"] for m in inits[name]["volumeMounts"]}
        assert any(dest == m or dest.startswith(m + "/") for m in mounts), f"{name} writes {dest} outside its volumes"


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


def _run_init_container(args: list[str], dest: pathlib.Path, tmp_path: pathlib.Path,
                        mmproj_dest: pathlib.Path | None = None, lora_dest: pathlib.Path | None = None) -> tuple[int, str]:
    """Run the init container's command as the kubelet would (volumes remapped: /models to `dest`, /mmproj to
    `mmproj_dest`, /lora to `lora_dest`), return (exit code, termination message)."""
    log = tmp_path / "termination-log"
    log.write_text("")
    args = [_local(a, dest, mmproj_dest, lora_dest) for a in args]
    env = dict(os.environ, KUBELLAMA_TERMINATION_LOG=str(log), HF_HUB_OFFLINE="1")
    proc = subprocess.run([sys.executable, "-m", "kubellama_server.fetch", *args, "--retries", "0"],
                          capture_output=True, text=True, timeout=120, env=env)
    return proc.returncode, log.read_text()


def _local(path: str, models: pathlib.Path, mmproj: pathlib.Path | None, lora: pathlib.Path | None = None) -> str:
    for root, local in (("/models", models), ("/mmproj", mmproj), ("/lora", lora)):
        if local is not None and (path == root or path.startswith(root + "/")):
            return str(local) + path[len(root):]
    return path


def _as_pod(code: int, message: str) -> dict:
    term = {"exitCode": code, "message": message}
    return {"status": {"initContainerStatuses": [{"name": "fetch-model", "state": {"terminated": term}}],
                       "containerStatuses": [{"name": "server", "ready": code == 0,
                                              "state": {"running": {}} if code == 0 else {"waiting": {"reason": "PodInitializing"}}}]}}


def test_fetched_model_size_reaches_the_status(model_host, tmp_path):
    base, source = model_host
    spec = parse({"model": {"url": f"{base}/models/tiny-q4_0.gguf"}})
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
    spec = parse({"model": {"url": f"{base}/models/missing.gguf"}})
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


@pytest.mark.parametrize("model_source", ["url", "pvc"])
def test_fetched_projector_lands_where_the_server_looks(model_host, tmp_path, model_source):
    """fetch-model then fetch-mmproj, run for real: --mmproj names the file fetch-mmproj wrote."""
    base, source = model_host
    model_spec = ({"url": f"{base}/models/tiny-q4_0.gguf"} if model_source == "url"
                  else {"pvc": {"claimName": "c", "path": "tiny-q4_0.gguf"}})
    # Any GGUF passes the fetcher's check: the tiny model stands in for a projector.
    spec = parse({"model": {**model_spec, "mmproj": {"url": f"{base}/models/tiny-q4_0.gguf",
                                                         "sha256": hashlib.sha256(source.read_bytes()).hexdigest()}}})
    model = resolve_model(spec)
    models, scratch = tmp_path / "models", tmp_path / "mmproj-volume"
    models.mkdir()
    objs, _ = desired_children({"metadata": {"name": "a", "namespace": "n", "uid": "u"}}, spec, model,
                               OperatorConfig(), servicemonitor_crd=False)
    pod = next(o for o in objs if o["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    for init in pod["initContainers"]:
        code, message = _run_init_container(init["args"], models, tmp_path, scratch)
        assert code == 0, (init["name"], message)
    args = server_args(spec, model)
    local = pathlib.Path(_local(args[args.index("--mmproj") + 1], models, scratch))
    assert local.read_bytes() == source.read_bytes()
    if model_source == "url":
        assert local.parent == models / "mmproj", "beside the model, in the model volume"
        assert (models / model.file).read_bytes() == source.read_bytes(), "the projector did not replace the model"
    else:
        assert local.parent == scratch and not any(models.iterdir()), "nothing written to the model's claim"


def test_projector_fetch_failure_reaches_the_status(model_host, tmp_path):
    base, _ = model_host
    spec = parse({"model": {"url": f"{base}/models/tiny-q4_0.gguf",
                                "mmproj": {"url": f"{base}/models/mmproj-missing.gguf"}}})
    model = resolve_model(spec)
    code, message = _run_init_container(list(model.mmproj.fetch_args), tmp_path / "models", tmp_path)
    assert code == 3, message
    pod = {"status": {"initContainerStatuses": [
        {"name": "fetch-model", "state": {"terminated": {"exitCode": 0}}},
        {"name": "fetch-mmproj", "state": {"terminated": {"exitCode": code, "message": message}}}]}}
    status = compute_status(name="a", namespace="n", generation=1, desired=1, model=model, endpoint="e", selector="s",
                            pods=[pod], statefulset=None, problems=[])
    model_ready = next(c for c in status["conditions"] if c["type"] == "ModelReady")
    assert (status["phase"], model_ready["reason"]) == ("Failed", "ModelNotFound")
    assert model_ready["message"] == status["message"] == f"multimodal projector download failed: {message.strip()}"
    assert "mmproj-missing.gguf" in status["message"]


@pytest.mark.parametrize("extra, refused", [
    (["--grp-attn-n", "4"], True), (["--grp-attn-n=2", "--grp-attn-w", "1024"], True),
    (["--grp-attn-n", "1"], False), (["--grp-attn-n=1"], False), ([], False)])
def test_operator_refuses_the_self_extend_the_server_refuses(extra, refused, tmp_path, capsys):
    """spec.problems rejects exactly the --grp-attn-n settings kubellama-server refuses with --mmproj."""
    from kubellama_operator.spec import parse, problems

    spec = parse({"model": {"url": "https://m.test/a.gguf", "mmproj": {"url": "https://m.test/mm.gguf"}},
                      "server": {"extraArgs": extra}})
    model = resolve_model(spec)
    args = server_args(spec, model)
    (tmp_path / "mm.gguf").write_text("GGUF")
    args[args.index("--mmproj") + 1] = str(tmp_path / "mm.gguf")
    try:
        server_cli.parse_settings(args, environ={})
        server_refuses = False
    except SystemExit:
        server_refuses = "--grp-attn-n" in capsys.readouterr().err
    assert server_refuses is refused
    assert bool([p for p in problems(spec) if "self-extend" in p]) is refused
    # Without a projector the same settings are the server's business, not a spec problem.
    no_mmproj = parse({"model": {"url": "https://m.test/a.gguf"}, "server": {"extraArgs": extra}})
    assert problems(no_mmproj) == []


@pytest.fixture
def lora_host(model_host):
    """Two tiny LoRA adapters for the tiny model, both named adapter.gguf: /loras/sql/ and /loras/support/."""
    from kubellama_server.testing.tiny_gguf import build_tiny_lora

    base, source = model_host
    www = source.parent.parent
    adapters = []
    for seed, folder in ((99, "sql"), (7, "support")):
        (www / "loras" / folder).mkdir(parents=True)
        adapters.append(build_tiny_lora(www / "loras" / folder / "adapter.gguf", seed=seed))
    return base, source, adapters


@pytest.mark.parametrize("model_source", ["url", "pvc"])
def test_fetched_adapters_load_where_the_server_looks(lora_host, tmp_path, model_source):
    """The init containers run for real, then kubellama-server with the operator's flags: it loads both
    adapters, in the spec's order (ids 0 and 1), though both files have one name."""
    import httpx
    from kubellama_server.testing.live import LiveServer

    base, source, (sql, support) = lora_host
    models, scratch = tmp_path / "models", tmp_path / "lora-volume"
    models.mkdir()
    if model_source == "url":
        model_spec = {"url": f"{base}/models/tiny-q4_0.gguf"}
    else:  # the model and a third adapter are on the claim already
        model_spec = {"pvc": {"claimName": "c", "path": "tiny-q4_0.gguf"}}
        (models / "tiny-q4_0.gguf").write_bytes(source.read_bytes())
        (models / "tuned").mkdir()
        (models / "tuned" / "adapter.gguf").write_bytes(sql.read_bytes())
    loras = [{"name": "sql", "url": f"{base}/loras/sql/adapter.gguf",
              "sha256": hashlib.sha256(sql.read_bytes()).hexdigest()},
             {"name": "support", "url": f"{base}/loras/support/adapter.gguf"}]
    if model_source == "pvc":
        loras.append({"path": "tuned/adapter.gguf"})
    spec = parse({"model": {**model_spec, "loras": loras}, "server": {"contextSize": 256}})
    model = resolve_model(spec)
    objs, _ = desired_children({"metadata": {"name": "a", "namespace": "n", "uid": "u"}}, spec, model,
                               OperatorConfig(), servicemonitor_crd=False)
    pod = next(o for o in objs if o["kind"] == "StatefulSet")["spec"]["template"]["spec"]
    for init in pod["initContainers"]:
        code, message = _run_init_container(init["args"], models, tmp_path, lora_dest=scratch)
        assert code == 0, (init["name"], message)
    args = [_local(a, models, None, scratch) for a in server_args(spec, model)]
    local = [pathlib.Path(args[i + 1]) for i, a in enumerate(args) if a == "--lora"]
    assert [p.read_bytes() for p in local[:2]] == [sql.read_bytes(), support.read_bytes()]
    if model_source == "url":
        assert [p.parent for p in local] == [models / "lora" / "0", models / "lora" / "1"], "in the model volume"
    else:
        assert [p.parent for p in local[:2]] == [scratch / "0", scratch / "1"]
        assert sorted(p.name for p in models.iterdir()) == ["tiny-q4_0.gguf", "tuned"], "nothing written to the claim"
    server = LiveServer(args).start()
    try:
        adapters = httpx.get(server.url + "/lora-adapters", timeout=10).json()
        assert adapters == [{"id": i, "path": str(p), "scale": 1.0} for i, p in enumerate(local)]
        # A request picks one fine-tune by id: the two adapters answer differently.
        outputs = [httpx.post(server.url + "/completion", timeout=60, json={
            "prompt": "hello world", "n_predict": 8, "temperature": 0,
            "lora": [{"id": i, "scale": 1.0}]}).json()["tokens"] for i in (0, 1)]
        assert outputs[0] != outputs[1]
    finally:
        server.stop()


def test_adapter_fetch_failure_reaches_the_status(model_host, tmp_path):
    base, _ = model_host
    spec = parse({"model": {"url": f"{base}/models/tiny-q4_0.gguf", "loras": [
        {"url": f"{base}/models/tiny-q4_0.gguf"}, {"name": "support", "url": f"{base}/loras/missing/adapter.gguf"}]}})
    model = resolve_model(spec)
    code, message = _run_init_container(list(model.loras[1].fetch_args), tmp_path / "models", tmp_path)
    assert code == 3, message
    pod = {"status": {"initContainerStatuses": [
        {"name": "fetch-model", "state": {"terminated": {"exitCode": 0}}},
        {"name": "fetch-lora-0", "state": {"terminated": {"exitCode": 0}}},
        {"name": "fetch-lora-1", "state": {"terminated": {"exitCode": code, "message": message}}}]}}
    status = compute_status(name="a", namespace="n", generation=1, desired=1, model=model, endpoint="e", selector="s",
                            pods=[pod], statefulset=None, problems=[])
    model_ready = next(c for c in status["conditions"] if c["type"] == "ModelReady")
    assert (status["phase"], model_ready["reason"]) == ("Failed", "ModelNotFound")
    assert model_ready["message"] == status["message"] == \
        f"LoRA adapter 1 (support) download failed: {message.strip()}"
    assert "missing/adapter.gguf" in status["message"]


def test_lora_download_progress_from_the_fetchers_own_log_lines(lora_host, tmp_path):
    """What the real fetcher logs while fetch-lora-1 runs becomes the status message."""
    from kubellama_operator.status import describe_progress, download_progress

    base, _, (_, support) = lora_host
    spec = parse({"model": {"url": f"{base}/models/tiny-q4_0.gguf", "loras": [
        {"url": f"{base}/models/tiny-q4_0.gguf"}, {"name": "support", "url": f"{base}/loras/support/adapter.gguf"}]}})
    lora = resolve_model(spec).loras[1]
    args = [_local(a, tmp_path / "models", None) for a in lora.fetch_args]
    proc = subprocess.run([sys.executable, "-m", "kubellama_server.fetch", *args, "--progress", "json"],
                          capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, KUBELLAMA_TERMINATION_LOG=str(tmp_path / "log")))
    assert proc.returncode == 0, proc.stderr
    progress = download_progress(proc.stderr)
    assert progress is not None and progress["file"] == "adapter.gguf"
    text = describe_progress(progress, lora.label)
    assert text.startswith("downloading LoRA adapter 1 (support), adapter.gguf"), text


def test_probes_need_no_api_key_on_a_keyed_server(tmp_path):
    """The kubelet sends no key: every probe path answers 200 on a server started with the operator's
    --api-key-file, while the API itself asks for the key (real HTTP, the tiny model)."""
    import httpx

    from kubellama_server.testing.live import LiveServer
    from kubellama_server.testing.tiny_gguf import build_tiny_gguf

    spec = parse({"model": {"url": "https://m.test/tiny.gguf"}, "apiKeySecretRef": {"name": "k"}})
    model = resolve_model(spec)
    objs, _ = desired_children({"metadata": {"name": "a", "namespace": "n", "uid": "u"}}, spec, model,
                               OperatorConfig(), servicemonitor_crd=False)
    server = next(o for o in objs if o["kind"] == "StatefulSet")["spec"]["template"]["spec"]["containers"][0]
    args = server["args"]
    build_tiny_gguf(tmp_path / "tiny.gguf")
    (tmp_path / "api-key").write_text("s3cret\n")
    args[args.index("-m") + 1] = str(tmp_path / "tiny.gguf")
    args[args.index("--api-key-file") + 1] = str(tmp_path / "api-key")
    live = LiveServer(args).start()
    try:
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = server[probe]["httpGet"]
            assert get["port"] == "http" and "httpHeaders" not in get
            assert httpx.get(live.url + get["path"], timeout=10).status_code == 200, probe
        assert httpx.get(live.url + "/v1/models", timeout=10).status_code == 401
        assert httpx.get(live.url + "/v1/models", headers={"Authorization": "Bearer s3cret"},
                         timeout=10).status_code == 200
    finally:
        live.stop()


def test_termination_budget_uses_the_servers_own_timeouts():
    """The grace period adds up what kubellama-server allows itself after SIGTERM (SAVE_TIMEOUT for the slot
    save with --slot-persist, Scheduler.stop's timeout): a change on either side fails here."""
    import inspect

    from kubellama_operator.builders import statefulset
    from kubellama_server.engine import persistence
    from kubellama_server.engine.scheduler import Scheduler

    assert statefulset.SLOT_SAVE_SECONDS >= persistence.SAVE_TIMEOUT
    assert statefulset.SCHEDULER_STOP_SECONDS >= inspect.signature(Scheduler.stop).parameters["timeout"].default
    spec = parse({"model": {"url": "https://m.test/a.gguf"}, "server": {"shutdownTimeoutSeconds": 45},
                      "storage": {"slots": {"enabled": True, "restoreOnStart": True}}})
    settings, _ = server_cli.parse_settings(server_args(spec, resolve_model(spec)), environ={})
    budget = statefulset.termination_budget(spec)
    assert settings.shutdown_timeout == budget["drain"] and settings.slot_persist
    assert statefulset.termination_grace(spec) >= (statefulset.PRESTOP_SECONDS + settings.shutdown_timeout
                                                   + persistence.SAVE_TIMEOUT + Scheduler.stop.__defaults__[0])
