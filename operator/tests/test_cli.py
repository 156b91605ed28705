"""`kubellama-operator` flags and environment, and its health and metrics endpoints over HTTP."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import aiohttp
import pytest

from kmock_harness import NAMESPACE, TEST_CONFIG, Running, eventually
from kubellama_server.testing.wait import free_port
from kubellama_operator import cli, metrics
from kubellama_operator.config import DEFAULT_CPU_IMAGE, DEFAULT_CUDA_IMAGE

ENV = ["KUBELLAMA_WATCH_NAMESPACES", "KUBELLAMA_CPU_IMAGE", "KUBELLAMA_CUDA_IMAGE", "KUBELLAMA_LOG_FORMAT",
       "KUBELLAMA_HEALTH_PORT", "KUBELLAMA_METRICS_PORT", "KUBELLAMA_RESYNC_SECONDS", "KUBELLAMA_IMAGE_PULL_POLICY",
       "KUBELLAMA_PROMETHEUS_NAMESPACE_SELECTOR", "KUBELLAMA_PROMETHEUS_POD_SELECTOR", "KUBELLAMA_ALLOWED_IMAGES",
       "KUBELLAMA_ALLOWED_SERVICE_ACCOUNTS"]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV:
        monkeypatch.delenv(name, raising=False)


def test_defaults():
    config = cli.parse_config([])
    assert config.namespaces == ()  # cluster-wide
    assert config.cpu_image == DEFAULT_CPU_IMAGE == "ghcr.io/kubellama/kubellama-server:0.1.0"
    assert config.cuda_image == DEFAULT_CUDA_IMAGE == "ghcr.io/kubellama/kubellama-server-cuda:0.1.0"
    assert (config.health_port, config.metrics_port, config.log_format) == (8081, 8080, "json")


def test_flags():
    config = cli.parse_config(["-n", "a", "--namespace", "b", "--cpu-image", "c:1", "--cuda-image", "g:1",
                               "--log-format", "text", "--health-port", "9001", "--metrics-port", "9002",
                               "--resync-seconds", "5", "--image-pull-policy", "Never"])
    assert config.namespaces == ("a", "b")
    assert (config.cpu_image, config.cuda_image, config.log_format) == ("c:1", "g:1", "text")
    assert (config.health_port, config.metrics_port, config.resync_seconds) == (9001, 9002, 5.0)
    assert config.image_pull_policy == "Never"


def test_environment(monkeypatch):
    monkeypatch.setenv("KUBELLAMA_WATCH_NAMESPACES", "ml, team-b")
    monkeypatch.setenv("KUBELLAMA_CPU_IMAGE", "r/cpu:2")
    monkeypatch.setenv("KUBELLAMA_METRICS_PORT", "9100")
    config = cli.parse_config([])
    assert config.namespaces == ("ml", "team-b") and config.cpu_image == "r/cpu:2" and config.metrics_port == 9100
    assert cli.parse_config(["-A"]).namespaces == ()
    assert cli.parse_config(["--cpu-image", "flag:wins"]).cpu_image == "flag:wins"


def test_prometheus_selectors(monkeypatch):
    config = cli.parse_config([])
    assert config.prometheus_namespace_selector == (("kubernetes.io/metadata.name", "monitoring"),)
    assert config.prometheus_pod_selector == (("app.kubernetes.io/name", "prometheus"),)
    config = cli.parse_config(["--prometheus-namespace-selector", "team=obs, tier=infra",
                               "--prometheus-pod-selector", ""])
    assert config.prometheus_namespace_selector == (("team", "obs"), ("tier", "infra"))
    assert config.prometheus_pod_selector == (), "empty: any pod of those namespaces"
    monkeypatch.setenv("KUBELLAMA_PROMETHEUS_POD_SELECTOR", "app=prom")
    assert cli.parse_config([]).prometheus_pod_selector == (("app", "prom"),)


def test_allow_lists(monkeypatch):
    assert (cli.parse_config([]).allowed_images, cli.parse_config([]).allowed_service_accounts) == ((), ())
    config = cli.parse_config(["--allowed-image", "ghcr.io/kubellama/*", "--allowed-image", "reg.test/*",
                               "--allowed-service-account", "llm"])
    assert config.allowed_images == ("ghcr.io/kubellama/*", "reg.test/*") and config.allowed_service_accounts == ("llm",)
    monkeypatch.setenv("KUBELLAMA_ALLOWED_IMAGES", "a/*, b/*")
    monkeypatch.setenv("KUBELLAMA_ALLOWED_SERVICE_ACCOUNTS", "x")
    config = cli.parse_config([])
    assert config.allowed_images == ("a/*", "b/*") and config.allowed_service_accounts == ("x",)
    assert cli.parse_config(["--allowed-image", "flag/*"]).allowed_images == ("flag/*",), "the flag wins"


@pytest.mark.parametrize("argv", [["--health-port", "70000"], ["--log-format", "xml"], ["--resync-seconds", "0"],
                                  ["--prometheus-pod-selector", "app"], ["--prometheus-namespace-selector", "a=b c"]])
def test_bad_flags_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.parse_config(argv)
    assert e.value.code == 2
    assert "kubellama-operator" in capsys.readouterr().err


@pytest.mark.parametrize("name,value", [("KUBELLAMA_HEALTH_PORT", "abc"), ("KUBELLAMA_METRICS_PORT", "70000"),
                                        ("KUBELLAMA_RESYNC_SECONDS", "-1"), ("KUBELLAMA_LOG_FORMAT", "xml"),
                                        ("KUBELLAMA_IMAGE_PULL_POLICY", "Sometimes")])
def test_bad_environment_exits_2_with_a_message(monkeypatch, capsys, name, value):
    monkeypatch.setenv(name, value)
    assert cli.main([]) == 2
    err = capsys.readouterr().err
    assert "invalid environment setting" in err and name in err


def test_console_script_help():
    out = subprocess.run([sys.executable, "-m", "kubellama_operator.cli", "--help"], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "--cuda-image" in out.stdout and "--namespace" in out.stdout
    for name in ENV:
        assert name in cli.__doc__, f"{name} is not documented in cli.py"


@pytest.mark.asyncio
async def test_health_and_metrics_endpoints(api):
    config = dataclasses.replace(TEST_CONFIG, bind_address="127.0.0.1", health_port=free_port(),
                                 metrics_port=free_port())
    running = Running(config, endpoints=True)  # the Deployment's probes and Prometheus
    await running.start()
    try:
        async with aiohttp.ClientSession() as http:
            base_h = f"http://127.0.0.1:{config.health_port}"
            base_m = f"http://127.0.0.1:{config.metrics_port}"
            async with http.get(base_h + "/healthz") as r:
                assert r.status == 200
            await eventually(lambda: _status(http, base_h + "/readyz"))
            await api.create("kubellama.dev/v1alpha1", "llamaservers", {
                "apiVersion": "kubellama.dev/v1alpha1", "kind": "LlamaServer",
                "metadata": {"name": "metered", "namespace": NAMESPACE},
                "spec": {"model": {"url": "https://m.test/a.gguf"}}})

            async def scraped():
                async with http.get(base_m + "/metrics") as r:
                    text = await r.text()
                return r.status == 200 and (
                    f'kubellama_operator_llamaserver_phase{{name="metered",namespace="{NAMESPACE}",phase="Pending"}} 1.0'
                    in text) and text

            text = await eventually(scraped)
            for name in ["kubellama_operator_reconcile_total", "kubellama_operator_reconcile_duration_seconds_bucket",
                         "kubellama_operator_children_applied_total", "kubellama_operator_api_requests_total",
                         "kubellama_operator_llamaserver_condition", "kubellama_operator_llamaserver_ready_replicas",
                         "kubellama_operator_info"]:
                assert name in text, name
            assert 'condition="ModelReady"' in text
            async with http.get(base_h + "/metrics") as r:
                assert r.status == 404, "metrics live on their own port"
    finally:
        await running.stop()


async def _status(http, url):
    async with http.get(url) as r:
        return r.status == 200


def test_metric_series_follow_status_changes():
    metrics.record_status("ns", "x", {"phase": "Downloading", "replicas": 1, "readyReplicas": 0,
                                      "conditions": [{"type": "ModelReady", "status": "False", "reason": "Downloading"}]})
    metrics.record_status("ns", "x", {"phase": "Failed", "replicas": 1, "readyReplicas": 0,
                                      "conditions": [{"type": "ModelReady", "status": "False", "reason": "ModelNotFound"}]})
    text = metrics.render().decode()
    assert 'kubellama_operator_llamaserver_phase{name="x",namespace="ns",phase="Failed"} 1.0' in text
    assert 'kubellama_operator_llamaserver_phase{name="x",namespace="ns",phase="Downloading"} 0.0' in text
    assert 'reason="ModelNotFound"' in text and 'reason="Downloading"' not in text
    metrics.forget("ns", "x")
    assert 'name="x"' not in metrics.render().decode()


@pytest.mark.asyncio
async def test_console_script_runs_logs_json_and_stops_on_sigterm(api):
    """The real `kubellama-operator` process: JSON logs, reconciles, exits 0 on SIGTERM."""
    import asyncio
    import json
    import os
    import shutil
    import signal

    script = shutil.which("kubellama-operator", path=os.path.dirname(sys.executable))
    cmd = [script] if script else [sys.executable, "-m", "kubellama_operator.cli"]
    proc = await asyncio.create_subprocess_exec(
        *cmd, "-n", NAMESPACE, "--health-port", str(free_port()), "--metrics-port", str(free_port()),
        "--bind-address", "127.0.0.1", "--log-format", "json",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    lines: list[str] = []

    async def pump():
        async for raw in proc.stdout:
            lines.append(raw.decode(errors="replace").strip())

    reader = asyncio.create_task(pump())
    try:
        await api.create("kubellama.dev/v1alpha1", "llamaservers", {
            "apiVersion": "kubellama.dev/v1alpha1", "kind": "LlamaServer",
            "metadata": {"name": "proc", "namespace": NAMESPACE}, "spec": {"model": {"url": "https://m.test/a.gguf"}}})
        await eventually(lambda: api.objects("apps/v1/statefulsets").get("proc"), timeout=30)
    finally:
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.wait_for(proc.wait(), 30)
        await reader
    assert code == 0, "\n".join(lines[-20:])
    records = [json.loads(line) for line in lines if line.startswith("{")]
    assert records and all("message" in r for r in records), lines[:5]
    assert any("watching" in r["message"] and NAMESPACE in r["message"] for r in records)


def test_hub_mirror(monkeypatch):
    assert cli.parse_config([]).hf_endpoint == ""
    assert cli.parse_config(["--hf-endpoint", "http://mirror.test/"]).hf_endpoint == "http://mirror.test"
    monkeypatch.setenv("KUBELLAMA_HF_ENDPOINT", "http://env.test")
    assert cli.parse_config([]).hf_endpoint == "http://env.test"
