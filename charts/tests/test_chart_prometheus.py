"""A real Prometheus scrapes a real kubellama-server under load through the chart's relabelling;
every dashboard query and alert expression then runs through Prometheus' HTTP API."""

from __future__ import annotations

import math
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from kubellama_server.testing.wait import free_port
from kubellama_server.testing.wait import wait_until as shared_wait_until

from chart_support import (PROMETHEUS_OPERATOR_APIS, alert_rules, dashboard_queries, label_values_as_promql,
                           load_dashboard, metric_names, one, rule_groups, substitute, variable_queries)

# What the PodMonitor's relabelling sees for a LlamaServer pod (Kubernetes service discovery meta labels).
POD_META = {
    "__meta_kubernetes_namespace": "team-a",
    "__meta_kubernetes_pod_name": "tiny-0",
    "__meta_kubernetes_pod_label_kubellama_dev_llamaserver": "tiny",
    "__meta_kubernetes_pod_annotation_kubellama_dev_model": "tiny.gguf",
}
EXPECTED_LABELS = {"namespace": "team-a", "llamaserver": "tiny", "pod": "tiny-0", "model": "tiny.gguf"}
# ... and for the pod of its router (spec.routing): no model annotation.
ROUTER_POD_META = {
    "__meta_kubernetes_namespace": "team-a",
    "__meta_kubernetes_pod_name": "tiny-router-7d9f-x2x4z",
    "__meta_kubernetes_pod_label_kubellama_dev_llamaserver": "tiny",
}
DASHBOARD_VARIABLES = {"namespace": "team-a", "llamaserver": "tiny", "pod": "tiny-0", "__rate_interval": "1m",
                       "__interval": "15s"}
SCRAPE_INTERVAL_S = 1


def wait_until(check, timeout: float, what: str, proc: subprocess.Popen | None = None, log: Path | None = None):
    """The shared `wait_until`, failing at once when `proc` exits (with the end of its `log`)."""
    def alive() -> None:
        if proc is not None and proc.poll() is not None:
            pytest.fail(f"{what}: the process exited with {proc.returncode}:\n{log.read_text()[-4000:] if log else ''}")

    return shared_wait_until(check, what, timeout, transient=(httpx.HTTPError,), alive=alive,
                             detail=lambda: log.read_text()[-4000:] if log else "")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def objects(helm):
    return helm.template({"monitoring": {"enabled": True}}, api_versions=PROMETHEUS_OPERATOR_APIS)


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[str]:
    """kubellama-server with --metrics on the tiny test model (or $KUBELLAMA_PROMETHEUS_TEST_MODEL)."""
    work = tmp_path_factory.mktemp("server")
    model = os.environ.get("KUBELLAMA_PROMETHEUS_TEST_MODEL")
    if not model:
        from kubellama_server.testing.tiny_gguf import build_tiny_gguf
        model = str(work / "tiny.gguf")
        build_tiny_gguf(model)
    (work / "slots").mkdir()
    port = free_port()
    log = work / "server.log"
    exe = Path(sys.executable).with_name("kubellama-server")
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "-m", model, "--host", "127.0.0.1", "--port", str(port), "--metrics",
                                 "-np", "2", "-c", "1024", "--slot-save-path", str(work / "slots"),
                                 "--log-format", "text"], stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, 120, "kubellama-server /health",
                   proc, log)
        metrics = httpx.get(f"{url}/metrics", timeout=5)
        assert metrics.status_code == 200, f"kubellama-server --metrics: GET /metrics answered {metrics.status_code}"
        yield url
    finally:
        stop(proc)


@pytest.fixture(scope="module")
def router(server, tmp_path_factory) -> Iterator[str]:
    """kubellama-router in front of the server and of a replica that refuses connections (upstream errors)."""
    work = tmp_path_factory.mktemp("router")
    port, dead = free_port(), free_port()
    log = work / "router.log"
    exe = Path(sys.executable).with_name("kubellama-router")
    # round-robin reaches the dead replica; a scrape marks it down for 2 s only, so scrape once
    with open(log, "wb") as out:
        proc = subprocess.Popen([str(exe), "--replica", server, "--replica", f"http://127.0.0.1:{dead}",
                                 "--strategy", "round-robin", "--host", "127.0.0.1", "--port", str(port),
                                 "--scrape-interval", "3600", "--log-level", "warning"],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/health", timeout=2).status_code == 200, 60, "kubellama-router /health",
                   proc, log)
        yield url
    finally:
        stop(proc)


def relabel_configs(pod_monitor: dict[str, Any]) -> list[dict[str, Any]]:
    """The PodMonitor's relabelings as Prometheus relabel_configs (what the Prometheus Operator generates)."""
    keys = {"sourceLabels": "source_labels", "targetLabel": "target_label"}
    (endpoint,) = pod_monitor["spec"]["podMetricsEndpoints"]
    return [{keys.get(k, k): v for k, v in r.items()} for r in endpoint["relabelings"]]


@pytest.fixture(scope="module")
def prometheus(prometheus_bin, objects, server, router, tmp_path_factory) -> Iterator[str]:
    """Prometheus on loopback scraping the server and its router every second, with the chart's alert rules loaded."""
    work = tmp_path_factory.mktemp("prometheus")
    (work / "rules.yaml").write_text(yaml.safe_dump({"groups": rule_groups(objects)}, sort_keys=False))
    pod_monitor = one(objects, "PodMonitor")
    config = {
        "global": {"scrape_interval": f"{SCRAPE_INTERVAL_S}s", "evaluation_interval": f"{SCRAPE_INTERVAL_S}s",
                   "scrape_timeout": f"{SCRAPE_INTERVAL_S}s"},
        "rule_files": [str(work / "rules.yaml")],
        "scrape_configs": [{
            "job_name": "kubellama",
            "metrics_path": pod_monitor["spec"]["podMetricsEndpoints"][0]["path"],
            "static_configs": [{"targets": [server.removeprefix("http://")], "labels": POD_META}],
            "relabel_configs": relabel_configs(pod_monitor),
        }, {
            "job_name": "kubellama-router",
            "metrics_path": pod_monitor["spec"]["podMetricsEndpoints"][0]["path"],
            "static_configs": [{"targets": [router.removeprefix("http://")], "labels": ROUTER_POD_META}],
            "relabel_configs": relabel_configs(pod_monitor),
        }],
    }
    (work / "prometheus.yml").write_text(yaml.safe_dump(config, sort_keys=False))
    port = free_port()
    log = work / "prometheus.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([prometheus_bin, f"--config.file={work / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: httpx.get(f"{url}/-/ready", timeout=2).status_code == 200, 60, "Prometheus ready", proc, log)
        yield url
    finally:
        stop(proc)


def load(url: str) -> None:
    """A little load: concurrent chat/completion requests (more than slots), streaming, an error,
    a client cancellation, and a slot save/restore."""
    chat = {"messages": [{"role": "user", "content": "Write a short poem about llamas."}], "max_tokens": 24}

    def request(i: int) -> None:
        with httpx.Client(base_url=url, timeout=120) as client:
            if i % 3 == 0:
                with client.stream("POST", "/v1/chat/completions", json={**chat, "stream": True}) as r:
                    assert r.status_code == 200
                    for _ in r.iter_lines():
                        pass
            elif i % 3 == 1:
                assert client.post("/v1/chat/completions", json=chat).status_code == 200
            else:
                assert client.post("/completion", json={"prompt": "Once upon a time", "n_predict": 24}).status_code == 200

    with ThreadPoolExecutor(max_workers=5) as pool:
        list(pool.map(request, range(10)))
    with httpx.Client(base_url=url, timeout=120) as client:
        assert client.post("/v1/chat/completions", json={"messages": "not a list"}).status_code == 400
        with client.stream("POST", "/v1/chat/completions",
                           json={**chat, "max_tokens": 4000, "stream": True}) as r:   # cancelled by the client
            next(r.iter_lines())
        # the server frees a cancelled request's slot at its next step; a save before that is a 409
        wait_until(lambda: not client.get("/slots").json()[0]["is_processing"], 10, "slot 0 to be freed")
        saved = client.post("/slots/0?action=save", json={"filename": "slot0.bin"})
        assert saved.status_code == 200, saved.text
        restored = client.post("/slots/0?action=restore", json={"filename": "slot0.bin"})
        assert restored.status_code == 200, restored.text


def query(prometheus: str, expr: str, at: float | None = None) -> list[dict[str, Any]]:
    """An instant query (at time `at`, default now); fails the test with Prometheus' message
    when the expression does not parse."""
    data = {"query": expr} if at is None else {"query": expr, "time": f"{at:.3f}"}
    r = httpx.post(f"{prometheus}/api/v1/query", data=data, timeout=10)
    body = r.json()
    assert r.status_code == 200 and body["status"] == "success", f"{expr}\n-> {body.get('errorType')}: {body.get('error')}"
    return body["data"]["result"]


def route(url: str) -> None:
    """Chats through the router: each replica in turn, the dead one's retried on the server."""
    chat = {"messages": [{"role": "user", "content": "Hello llama."}], "max_tokens": 8}
    with httpx.Client(base_url=url, timeout=120) as client:
        for _ in range(4):
            assert client.post("/v1/chat/completions", json=chat).status_code == 200


@pytest.fixture(scope="module")
def scraped(server, router, prometheus) -> dict[str, Any]:
    """Load in two rounds; before each next step, wait until Prometheus has scraped what the
    server counts, so every series has samples before and after an increase (a rate() needs
    two; on a busy machine a blind sleep may cover a single slow scrape)."""
    totals = ("kubellama_requests_total", "kubellama_time_to_first_token_seconds_count",
              "kubellama_inter_token_latency_seconds_count", "kubellama_request_duration_seconds_count",
              "kubellama_queue_wait_seconds_count")

    router_totals = ("kubellama_router_requests_total", "kubellama_router_upstream_errors_total")

    def server_totals() -> dict[str, float]:
        samples = [s for f in text_string_to_metric_families(httpx.get(f"{server}/metrics").text) for s in f.samples]
        routed = [s for f in text_string_to_metric_families(httpx.get(f"{router}/metrics").text) for s in f.samples]
        return {**{name: sum(s.value for s in samples if s.name == name) for name in totals},
                **{name: sum(s.value for s in routed if s.name == name) for name in router_totals}}

    def wait_scraped(what: str) -> None:
        want = server_totals()

        def caught_up() -> bool:
            for name, value in want.items():
                r = query(prometheus, f"sum({name})")
                if (float(r[0]["value"][1]) if r else 0.0) < value or (value and not r):
                    return False
            return True

        wait_until(caught_up, 60, f"Prometheus to scrape the counters {what}")

    load(server)
    route(router)
    wait_scraped("after the first load")
    load(server)
    time.sleep(2.5)  # the dead replica is back in the rotation (marked down for 2 s after a refusal)
    route(router)
    wait_scraped("after the second load")
    time.sleep(2 * SCRAPE_INTERVAL_S)  # a couple of rule evaluations on the final data
    families = [*text_string_to_metric_families(httpx.get(f"{server}/metrics").text),
                *text_string_to_metric_families(httpx.get(f"{router}/metrics").text)]
    # Panel queries are evaluated at this moment, so their rate() windows cover the load
    # however long the later tests take on a busy machine.
    return {"names": {s.name for f in families for s in f.samples}, "at": time.time()}


def test_relabelling_adds_the_llamaserver_labels(prometheus, scraped):
    result = query(prometheus, "count by (namespace, llamaserver, pod, model) (llamacpp:requests_processing)")
    assert [r["metric"] for r in result] == [EXPECTED_LABELS]
    up = query(prometheus, 'up{llamaserver="tiny"}')
    assert sorted((r["metric"]["pod"], r["value"][1]) for r in up) == [("tiny-0", "1"), ("tiny-router-7d9f-x2x4z", "1")]
    routed = query(prometheus, "count by (namespace, llamaserver, pod) (kubellama_router_queue_length)")
    assert [r["metric"] for r in routed] == [{"namespace": "team-a", "llamaserver": "tiny",
                                              "pod": "tiny-router-7d9f-x2x4z"}]


def test_every_dashboard_query_parses_and_returns_data(prometheus, scraped):
    dashboard = load_dashboard()
    empty = []
    for title, expr in dashboard_queries(dashboard):
        result = query(prometheus, substitute(expr, DASHBOARD_VARIABLES), at=scraped["at"])
        values = [float(r["value"][1]) for r in result]
        if not values or all(math.isnan(v) for v in values):
            empty.append(f"{title}: {expr}")
    assert not empty, "panel queries without data:\n" + "\n".join(empty)
    for name, var_query in variable_queries(dashboard).items():
        promql, label = label_values_as_promql(var_query)
        result = query(prometheus, substitute(promql, DASHBOARD_VARIABLES), at=scraped["at"])
        assert [r["metric"][label] for r in result] == [EXPECTED_LABELS[label]], f"variable ${name}"


def test_every_alert_expression_parses_and_the_rules_load(prometheus, objects, scraped):
    for rule in alert_rules(objects):
        query(prometheus, rule["expr"])
    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    loaded = {r["name"]: r for g in groups for r in g["rules"]}
    assert set(loaded) == {r["alert"] for r in alert_rules(objects)}
    assert all(r["health"] == "ok" for r in loaded.values()), {n: r.get("lastError") for n, r in loaded.items()}
    # a healthy server under a little load raises no server alert
    firing = {r["name"] for r in loaded.values() if r["state"] != "inactive" and r["name"].startswith("Kubellama")
              and "Operator" not in r["name"]}
    assert not firing & {"KubellamaServerDown", "KubellamaRequestErrors", "KubellamaSlotSaveFailures"}, firing


def test_no_metric_is_missing_from_the_server(objects, prometheus, scraped):
    served = scraped["names"]
    r = httpx.get(f"{prometheus}/api/v1/label/__name__/values", timeout=10)
    ingested = set(r.json()["data"])
    used: dict[str, set[str]] = {}
    for title, expr in dashboard_queries(load_dashboard()):
        for name in metric_names(expr):
            used.setdefault(name, set()).add(f"panel {title!r}")
    for var_query in variable_queries(load_dashboard()).values():
        for name in metric_names(label_values_as_promql(var_query)[0]):
            used.setdefault(name, set()).add("dashboard variable")
    for rule in alert_rules(objects):
        for name in metric_names(rule["expr"]):
            if not name.startswith("kubellama_operator_"):  # checked against the operator in test_chart_alerts
                used.setdefault(name, set()).add(f"alert {rule['alert']}")
    used.pop("up", None)   # made by Prometheus itself
    assert len(used) >= 17
    missing = {name: sorted(where) for name, where in used.items() if name not in served}
    assert not missing, f"metrics the dashboard/alerts use but kubellama-server and -router do not serve: {missing}"
    # Prometheus negotiates OpenMetrics first; the names must survive that (e.g. no ':' -> '_' escaping).
    not_ingested = sorted(name for name in used if name not in ingested)
    assert not not_ingested, f"served by kubellama-server but not stored under that name by Prometheus: {not_ingested}"
