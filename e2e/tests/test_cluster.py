"""The whole path on a real cluster: chart → operator → LlamaServer → pods → OpenAI API.

The tests run in file order and share one LlamaServer (`tiny`, e2e/manifests/llamaserver.yaml)
whose life they follow: Ready, chat, metrics, slot save/restore across a pod restart,
a spec change that rolls the pods, scale to two, delete. Run with `make e2e`.
"""

from __future__ import annotations

import concurrent.futures as cf
import copy
import json
import os
import threading
import time
import urllib.request
from typing import Any

import pytest
from kubellama_server.promtext import read_samples

from e2e_checks import (
    check_chat,
    check_metrics,
    check_prompt_cached,
    cold_cache,
    context_size,
    prime_and_save_slot,
    prime_slot,
    restore_slot_and_check,
)
from e2e_support import (
    Kube,
    http_json,
    llamaserver_ready,
    load_manifest,
    log,
    pod_ready,
    port_forward,
    ready_pods,
    server_pods,
)

# The first test also waits for the session set-up (helm install, model server): ~20 min at most.
pytestmark = [pytest.mark.e2e, pytest.mark.timeout(1500)]

NAME = "tiny"
SELECTOR = f"kubellama.dev/llamaserver={NAME}"
PORT = 8080


@pytest.fixture(scope="module")
def llama(ns: Kube, model_server: str) -> str:
    (manifest,) = load_manifest("llamaserver.yaml")
    manifest = copy.deepcopy(manifest)
    manifest["spec"]["model"]["sha256"] = model_server
    ns.apply(manifest)
    yield NAME
    ns("delete", "llamaserver", NAME, "--ignore-not-found", "--wait=false", check=False)


def statefulset(ns: Kube) -> dict:
    (sts,) = ns.get("statefulsets", selector=SELECTOR)
    return sts


def one_ready_pod(ns: Kube) -> dict:
    pods = ready_pods(ns, NAME)
    assert len(pods) == 1, f"expected one ready pod, got {[p['metadata']['name'] for p in pods]}"
    return pods[0]


def wait_ready(ns: Kube, replicas: int = 1, timeout: float | None = None) -> dict:
    timeout = timeout or float(os.environ.get("E2E_READY_TIMEOUT", "600"))
    return ns.wait_for(f"LlamaServer {NAME} Ready with {replicas} ready replica(s)",
                       lambda: llamaserver_ready(ns, NAME, replicas), timeout=timeout, llamaserver=NAME)


def test_llamaserver_becomes_ready(ns: Kube, llama: str) -> None:
    obj = wait_ready(ns)
    status = obj["status"]
    assert status["replicas"] == 1
    assert f"{NAME}.{ns.namespace}.svc" in status["endpoint"], status["endpoint"]
    conditions = {c["type"]: c for c in status.get("conditions", [])}
    for kind in ("ModelReady", "Available"):
        assert conditions.get(kind, {}).get("status") == "True", conditions
    # What `kubectl get llama` shows a person.
    table = ns("get", "llama", NAME)
    assert "Ready" in table and "1/1" in table, table
    # Children carry the agreed labels and an owner reference to the resource.
    sts = statefulset(ns)
    labels = sts["metadata"]["labels"]
    assert labels["app.kubernetes.io/instance"] == NAME
    assert labels["app.kubernetes.io/managed-by"] == "kubellama-operator"
    assert [o["uid"] for o in sts["metadata"]["ownerReferences"]] == [obj["metadata"]["uid"]]
    ports = [p for c in sts["spec"]["template"]["spec"]["containers"] for p in c.get("ports", [])]
    assert {"name": "http", "containerPort": PORT} in [{k: p[k] for k in ("name", "containerPort")} for p in ports]


def test_chat_completion_and_streaming(ns: Kube, llama: str) -> None:
    with port_forward(ns, f"svc/{NAME}", PORT) as url:
        check_chat(url)


def test_metrics_are_exposed(ns: Kube, llama: str) -> None:
    pod = one_ready_pod(ns)["metadata"]["name"]  # the chat test above went to this pod
    with port_forward(ns, f"pod/{pod}", PORT) as url:
        check_metrics(url)


def test_slot_survives_pod_restart(ns: Kube, llama: str) -> None:
    pod = one_ready_pod(ns)
    name = pod["metadata"]["name"]
    with port_forward(ns, f"pod/{name}", PORT) as url:
        saved = prime_and_save_slot(url)

    _restart_pod(ns, pod)  # its slot file stays on the slots volume
    with port_forward(ns, f"pod/{name}", PORT) as url:
        assert cold_cache(url) == 0  # a fresh process: nothing cached but what we restore
        restore_slot_and_check(url, saved)


def _rolled(ns: Kube, old_revision: str, replicas: int = 1) -> bool:
    status = statefulset(ns)["status"]
    return (status.get("updateRevision") != old_revision
            and status.get("currentRevision") == status.get("updateRevision")
            and status.get("updatedReplicas") == replicas and status.get("readyReplicas") == replicas)


def _restart_pod(ns: Kube, pod: dict) -> None:
    name, uid = pod["metadata"]["name"], pod["metadata"]["uid"]
    log(f"deleting pod {name}")
    ns("delete", "pod", name, "--wait=true", timeout=240)

    def back() -> dict | None:
        new = ns.get("pod", name)
        return new if pod_ready(new) and new["metadata"]["uid"] != uid else None

    ns.wait_for(f"pod {name} back and ready", back, timeout=300, llamaserver=NAME)
    wait_ready(ns)


def test_warm_restart_with_restore_on_start(ns: Kube, llama: str) -> None:
    """spec.storage.slots.restoreOnStart: the server saves its slots on SIGTERM and loads
    them at start-up, so a restarted pod answers a repeated prompt from its cache."""
    old_revision = statefulset(ns)["status"]["updateRevision"]
    ns("patch", "llamaserver", NAME, "--type=merge",
       "-p", json.dumps({"spec": {"storage": {"slots": {"restoreOnStart": True}}}}))
    ns.wait_for("the StatefulSet to roll out restoreOnStart", lambda: _rolled(ns, old_revision),
                timeout=400, llamaserver=NAME)
    wait_ready(ns)
    pod = one_ready_pod(ns)
    with port_forward(ns, f"pod/{pod['metadata']['name']}", PORT) as url:
        prime_slot(url)
    _restart_pod(ns, pod)
    with port_forward(ns, f"pod/{pod['metadata']['name']}", PORT) as url:
        check_prompt_cached(url)


def _n_ctx(ns: Kube) -> int:
    pod = one_ready_pod(ns)["metadata"]["name"]
    with port_forward(ns, f"pod/{pod}", PORT) as url:
        return context_size(url)


def test_spec_change_rolls_pods(ns: Kube, llama: str) -> None:
    before_ctx = _n_ctx(ns)
    sts = statefulset(ns)
    old_revision = sts["status"]["updateRevision"]
    old_uid = one_ready_pod(ns)["metadata"]["uid"]
    spec = ns.get("llamaserver", NAME)["spec"]
    new_size = 2 * int(spec["server"]["contextSize"])
    ns("patch", "llamaserver", NAME, "--type=merge",
       "-p", json.dumps({"spec": {"server": {"contextSize": new_size}}}))

    ns.wait_for("the StatefulSet to roll out the new context size", lambda: _rolled(ns, old_revision),
                timeout=400, llamaserver=NAME)
    wait_ready(ns)
    pod = one_ready_pod(ns)
    assert pod["metadata"]["uid"] != old_uid, "the pod was not replaced"
    assert _n_ctx(ns) == 2 * before_ctx  # per-slot or total, the context doubled


def test_scale_to_two_replicas(ns: Kube, llama: str) -> None:
    ns("scale", "llamaserver", NAME, "--replicas=2")
    obj = wait_ready(ns, replicas=2)
    assert obj["spec"]["replicas"] == 2
    assert len(ready_pods(ns, NAME)) == 2
    assert statefulset(ns)["spec"]["replicas"] == 2
    scale = json.loads(ns("get", "--raw",
                          f"/apis/kubellama.dev/v1alpha1/namespaces/{ns.namespace}/llamaservers/{NAME}/scale",
                          namespaced=False))
    assert scale["spec"]["replicas"] == 2 and scale["status"]["replicas"] == 2

    def endpoints_ready() -> bool:
        slices = ns.get("endpointslices", selector=f"kubernetes.io/service-name={NAME}") or []
        ready = [e for s in slices for e in s.get("endpoints") or [] if e.get("conditions", {}).get("ready")]
        return len(ready) == 2

    ns.wait_for(f"Service {NAME} to route to both pods", endpoints_ready, timeout=120, llamaserver=NAME)
    table = ns("get", "llama", NAME)
    assert "2/2" in table, table
    ns.wait_for("a PodDisruptionBudget for the two replicas",
                lambda: ns.get("poddisruptionbudgets", selector=SELECTOR), timeout=60, llamaserver=NAME)


def test_delete_removes_children_and_keeps_slot_volumes(ns: Kube, llama: str) -> None:
    sts = statefulset(ns)
    sts_name = sts["metadata"]["name"]
    policy = sts["spec"].get("persistentVolumeClaimRetentionPolicy", {}).get("whenDeleted", "Retain")
    templates = [t["metadata"]["name"] for t in sts["spec"].get("volumeClaimTemplates", [])]
    slot_templates = [t for t in templates if "slot" in t]
    assert slot_templates, f"no slot volume claim template in {templates}"
    slot_claims = {f"{t}-{sts_name}-{i}" for t in slot_templates for i in range(2)}
    claims_before = {p["metadata"]["name"]: p["metadata"]["uid"] for p in ns.get("pvc") or []}
    assert slot_claims <= set(claims_before), (slot_claims, claims_before)

    ns("delete", "llamaserver", NAME, "--wait=true", timeout=300)

    def children_gone() -> bool:
        left = []
        for kind in ("statefulsets", "services", "pods", "poddisruptionbudgets"):
            left += [f"{kind}/{o['metadata']['name']}" for o in ns.get(kind, selector=SELECTOR) or []]
        if ns.get("service", NAME):
            left.append(f"services/{NAME}")
        if left:
            raise AssertionError(f"still present: {left}")
        return True

    ns.wait_for(f"the children of {NAME} to be garbage-collected", children_gone, timeout=300)
    # Slot data is kept by default (the resource's claim retention policy) so a re-created
    # server can warm-restart; a policy of Delete would remove the claims with the pods.
    assert policy == "Retain", f"default whenDeleted policy is {policy}, expected Retain (keep slot data)"
    time.sleep(5)  # give a wrongly-configured controller time to delete them
    claims_after = {p["metadata"]["name"]: p for p in ns.get("pvc") or []}
    for claim in slot_claims:
        assert claim in claims_after, f"slot claim {claim} was deleted"
        assert claims_after[claim]["metadata"]["uid"] == claims_before[claim]
        assert not claims_after[claim]["metadata"].get("deletionTimestamp"), f"{claim} is being deleted"


def test_missing_model_is_reported(ns: Kube, model_server: str) -> None:
    """A download that fails (404) shows in the resource's status with the fetcher's message."""
    (manifest,) = load_manifest("llamaserver.yaml")
    manifest = copy.deepcopy(manifest)
    manifest["metadata"]["name"] = "missing-model"
    manifest["spec"]["model"] = {"url": "http://e2e-model-server/does-not-exist.gguf"}
    manifest["spec"]["storage"]["slots"] = {"enabled": False}
    ns.apply(manifest)
    try:
        def reported() -> dict | None:
            obj = ns.get("llamaserver", "missing-model") or {}
            for condition in obj.get("status", {}).get("conditions", []):
                text = (condition.get("message") or "").lower()
                if condition["type"] == "ModelReady" and condition["status"] == "False" and (
                        "404" in text or "not found" in text):
                    return obj
            return None

        obj = ns.wait_for("the failed download to show in the status", reported, timeout=300,
                          llamaserver="missing-model")
        assert obj["status"]["phase"] in ("Failed", "Downloading", "Pending", "Degraded")
        assert obj["status"].get("readyReplicas", 0) == 0
    finally:
        ns("delete", "llamaserver", "missing-model", "--ignore-not-found", "--wait=false", check=False)


def test_restricted_namespace_admits_and_runs_a_llamaserver(ns: Kube, model_server: str) -> None:
    """Pod Security Admission at `restricted`: the operator's pods (init containers included)
    are admitted, run as the non-root user, write their volumes and serve."""
    restricted = Kube(f"{ns.namespace}-restricted")
    if restricted.get("namespace", restricted.namespace) is None:
        restricted("create", "namespace", restricted.namespace, namespaced=False)
    restricted("label", "--overwrite", "namespace", restricted.namespace,
               "pod-security.kubernetes.io/enforce=restricted",
               "pod-security.kubernetes.io/enforce-version=latest", namespaced=False)
    (manifest,) = load_manifest("llamaserver.yaml")
    manifest = copy.deepcopy(manifest)
    manifest["metadata"]["name"] = "locked"
    # The model server lives in the main e2e namespace: cross-namespace cluster DNS.
    manifest["spec"]["model"]["url"] = f"http://e2e-model-server.{ns.namespace}.svc/kubellama-tiny.gguf"
    manifest["spec"]["model"]["sha256"] = model_server
    restricted.apply(manifest)
    try:
        restricted.wait_for("LlamaServer locked Ready in the restricted namespace",
                            lambda: llamaserver_ready(restricted, "locked", 1),
                            timeout=float(os.environ.get("E2E_READY_TIMEOUT", "600")), llamaserver="locked")
        events = restricted("get", "events", "-o", "json")
        refused = [e["message"] for e in json.loads(events)["items"]
                   if "violates PodSecurity" in (e.get("message") or "")]
        assert not refused, refused
        with port_forward(restricted, "svc/locked", PORT) as url:
            check_chat(url)
    finally:
        restricted("delete", "namespace", restricted.namespace, "--wait=false", namespaced=False, check=False)


def _replica_pods(ns: Kube, name: str, ready: bool = False) -> list[dict]:
    """The LlamaServer's server pods (its router's pods carry the owner label too)."""
    pods = ready_pods(ns, name) if ready else server_pods(ns, name)
    return [p for p in pods if p["metadata"].get("labels", {}).get("app.kubernetes.io/component") != "router"]


def wait_router_ready(ns: Kube, name: str) -> None:
    """The router Deployment of LlamaServer `name` has its one replica Ready."""
    ns.wait_for(f"the router of LlamaServer {name} Ready",
                lambda: (ns.get("deployment", f"{name}-router") or {}).get("status", {}).get("readyReplicas") == 1,
                timeout=300, llamaserver=name)


def tiny_llamaserver(name: str, model_server: str, *, context_size: int | None = None, slots: bool = True,
                     **spec: Any) -> dict:
    """The e2e LlamaServer (manifests/llamaserver.yaml) as `name`, pinned to the served model's sha256, with
    the spec's top-level fields in `spec` replaced."""
    (manifest,) = load_manifest("llamaserver.yaml")
    manifest = copy.deepcopy(manifest)
    manifest["metadata"]["name"] = name
    manifest["spec"]["model"]["sha256"] = model_server
    if context_size is not None:
        manifest["spec"]["server"]["contextSize"] = context_size
    if not slots:
        manifest["spec"]["storage"]["slots"] = {"enabled": False}
    manifest["spec"].update(spec)
    return manifest


def test_router_serves_from_zero_and_scales_back_to_zero(ns: Kube, model_server: str) -> None:
    """spec.routing with spec.autoscaling.minReplicas 0: nothing runs until a request comes; the
    router holds it while the operator's scale-up brings a replica to Ready (model download and
    load included), follows the replica's endpoint, answers through it, and scales back to zero
    once idle."""
    ns.apply(tiny_llamaserver(
        "routed", model_server, slots=False, replicas=0, routing={"enabled": True, "strategy": "prefix"},
        autoscaling={"enabled": True, "minReplicas": 0, "maxReplicas": 1, "targetRequests": 1,
                     "windowSeconds": 5, "scaleDownDelaySeconds": 5, "holdSeconds": 300}))
    try:
        wait_router_ready(ns, "routed")
        assert not _replica_pods(ns, "routed"), "a replica runs before any request"
        started = time.monotonic()
        with port_forward(ns, "svc/routed-router", PORT) as url:
            check_chat(url)  # held by the router until the first replica is Ready
            replicas = http_json("GET", f"{url}/router/replicas")
        log(f"first request answered from zero in {time.monotonic() - started:.0f}s")
        assert ns.get("llamaserver", "routed")["spec"]["replicas"] == 1
        assert len(_replica_pods(ns, "routed", ready=True)) == 1
        served = [r for r in replicas["replicas"] if r["served"] >= 1]
        assert len(served) == 1 and served[0]["ready"], f"the router did not serve through its replica: {replicas}"
        ns.wait_for("LlamaServer routed scaled back to zero when idle",
                    lambda: ns.get("llamaserver", "routed")["spec"]["replicas"] == 0 and not _replica_pods(ns, "routed"),
                    timeout=300, llamaserver="routed")
    finally:
        ns("delete", "llamaserver", "routed", "--ignore-not-found", "--wait=false", check=False)



def _router_hits(url: str) -> float:
    page = urllib.request.urlopen(f"{url}/metrics", timeout=30).read()
    samples = read_samples(page, ("kubellama_router_requests_total",), limit=None)
    assert samples is not None, f"the router's /metrics is not a Prometheus text page: {page[:300]!r}"
    return sum(s.value for s in samples if s.labels.get("decision") == "hit")


def test_router_keeps_conversations_on_the_replica_holding_their_cache(ns: Kube, model_server: str) -> None:
    """spec.routing with two replicas: each turn of two interleaved conversations sharing a system
    prompt goes to the replica that holds its previous turns' KV cache, and in its own slot there
    (the Service alone would pick a pod at random; the server once gave the second conversation
    the first one's slot)."""
    ns.apply(tiny_llamaserver("sticky", model_server, context_size=2048, slots=False, replicas=2,
                              routing={"enabled": True, "strategy": "prefix"}))
    try:
        ns.wait_for("LlamaServer sticky Ready with 2 replicas", lambda: llamaserver_ready(ns, "sticky", 2),
                    timeout=float(os.environ.get("E2E_READY_TIMEOUT", "600")), llamaserver="sticky")
        wait_router_ready(ns, "sticky")
        with port_forward(ns, "svc/sticky-router", PORT) as url:
            ns.wait_for("the router to follow both replicas (and their slot counts)", lambda: sum(
                bool(r["ready"] and r["slots"]) for r in http_json("GET", f"{url}/router/replicas")["replicas"]) == 2,
                timeout=120)
            convs = [[{"role": "system", "content": "You answer questions about the solar system. " * 3},
                      {"role": "user", "content": f"hello from {k}"}] for k in range(2)]
            previous = [0, 0]
            for turn in range(3):
                for k, messages in enumerate(convs):
                    reply = http_json("POST", f"{url}/v1/chat/completions",
                                      {"messages": messages, "max_tokens": 6, "temperature": 0})
                    usage = reply["usage"]
                    if turn and usage["prompt_tokens_details"]["cached_tokens"] < previous[k] - 1:
                        metrics = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
                        raise AssertionError(  # the whole previous prompt should have come from the cache
                            f"turn {turn} of conversation {k}: {usage}\n"
                            f"{http_json('GET', f'{url}/router/replicas')}\n"
                            + "\n".join(line for line in metrics.splitlines() if line.startswith(
                                ("kubellama_router_requests_total", "kubellama_router_upstream", "kubellama_router_retries")))
                            + "\n" + ns("logs", "deployment/sticky-router", "--tail=100", check=False))
                    previous[k] = usage["prompt_tokens"]
                    messages += [reply["choices"][0]["message"], {"role": "user", "content": f"and turn {turn}?"}]
            assert _router_hits(url) >= 4
    finally:
        ns("delete", "llamaserver", "sticky", "--ignore-not-found", "--wait=false", check=False)


def test_router_scales_up_under_a_queue_and_back_down_when_idle(ns: Kube, model_server: str) -> None:
    """spec.autoscaling (driver router) with one replica: a burst of concurrent requests through the
    router raises spec.replicas to maxReplicas (never past it), the router follows the second pod
    when the burst outlasts its start-up (the tiny model answers it in 1 to 20 s, with the machine's
    load); once idle the LlamaServer scales back down to minReplicas."""
    ns.apply(tiny_llamaserver(
        "bursty", model_server, context_size=2048, slots=False, replicas=1,
        routing={"enabled": True, "strategy": "least-load"},
        autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 2, "targetRequests": 1,
                     "windowSeconds": 2, "scaleDownDelaySeconds": 3, "holdSeconds": 60}))
    seen: list[int] = []
    try:
        ns.wait_for("LlamaServer bursty Ready", lambda: llamaserver_ready(ns, "bursty", 1),
                    timeout=float(os.environ.get("E2E_READY_TIMEOUT", "600")), llamaserver="bursty")
        wait_router_ready(ns, "bursty")
        with port_forward(ns, "svc/bursty-router", PORT) as url:
            def replicas() -> int:
                seen.append(ns.get("llamaserver", "bursty")["spec"]["replicas"])
                return seen[-1]

            body = {"prompt": "Once upon a time", "n_predict": 800, "ignore_eos": True, "temperature": 0}
            stop = threading.Event()

            def client() -> list[int]:  # one of 8 clients on 2 slots: most requests queue, until scaled
                done = []
                while not stop.is_set():
                    done.append(http_json("POST", f"{url}/completion", body, timeout=120)["tokens_predicted"])
                return done

            with cf.ThreadPoolExecutor(8) as pool:  # the burst lasts until the scale-up (a quiet machine
                burst = [pool.submit(client) for _ in range(8)]  # answers 8 requests in a few seconds)
                try:
                    ns.wait_for("the burst to scale bursty up to 2", lambda: replicas() == 2, timeout=30,
                                interval=0.5, llamaserver="bursty")
                finally:
                    stop.set()
                answered = [n for f in burst for n in f.result()]
                assert len(answered) >= 8 and all(n == 800 for n in answered)
            ns.wait_for("the router to follow the second replica", lambda: sum(
                r["ready"] for r in http_json("GET", f"{url}/router/replicas")["replicas"]) == 2
                or replicas() == 1, timeout=60, llamaserver="bursty")
            ns.wait_for("bursty scaled back down to 1 when idle",
                        lambda: replicas() == 1 and len(_replica_pods(ns, "bursty")) == 1,
                        timeout=60, llamaserver="bursty")
        assert max(seen) == 2, seen
    finally:
        ns("delete", "llamaserver", "bursty", "--ignore-not-found", "--wait=false", check=False)


def test_model_change_with_a_shared_cache_and_surge_fails_no_request(ns: Kube, model_server: str) -> None:
    """spec.model.cache shared + spec.rollout.strategy Surge on the real node: two replicas, one CPU-only Job that
    downloads the model once before any server pod; a model change downloads the new one while the old pod serves, then a surge pod takes
    over; an in-cluster client sending requests through the Service the whole time sees no failure, and the
    Service's EndpointSlices (watched) never lack a Ready endpoint."""
    from e2e_support import api, image
    from e2e_watch import client_lines, client_pod
    from endpoint_watch import ReadyWatch

    if os.environ.get("E2E") == "1":
        pytest.skip("needs ReadWriteMany volumes (the local node's hostPath volumes are; kind's local-path "
                    "provisioner has none)")

    name = "swap"
    (manifest,) = load_manifest("llamaserver.yaml")
    manifest = copy.deepcopy(manifest)
    manifest["metadata"]["name"] = name
    manifest["spec"]["model"] = {"url": "http://e2e-model-server/kubellama-tiny.gguf", "alias": "tiny-v1",
                                 "sha256": model_server, "cache": {"mode": "shared", "size": "1Gi"}}
    manifest["spec"]["rollout"] = {"strategy": "Surge"}
    manifest["spec"]["replicas"] = replicas = 2
    manifest["spec"]["storage"] = {"slots": {"enabled": True, "size": "1Gi"}}
    ns.apply(manifest)
    watch = client = None
    try:
        ns.wait_for(f"LlamaServer {name} Ready", lambda: llamaserver_ready(ns, name, replicas),
                    timeout=float(os.environ.get("E2E_READY_TIMEOUT", "600")), llamaserver=name)
        [job] = ns.get("jobs", selector=f"kubellama.dev/llamaserver={name}")  # one download for both replicas
        servers = f"kubellama.dev/llamaserver={name},app.kubernetes.io/name=kubellama-server"
        pods = ns.get("pods", selector=servers)
        assert len(pods) == replicas and not any(p["spec"].get("initContainers") for p in pods)
        assert all({"name": "model", "persistentVolumeClaim": {"claimName": "kubellama-model-cache", "readOnly": True}}
                   in p["spec"]["volumes"] for p in pods)
        assert job["status"].get("succeeded") == 1
        assert "nvidia.com/gpu" not in json.dumps(job["spec"])
        sts = ns.get("statefulset", name)
        assert sts["metadata"]["creationTimestamp"] >= job["status"]["completionTime"], "a server pod before its model"
        old_args = sts["spec"]["template"]["spec"]["containers"][0]["args"]

        watch = ReadyWatch(api(), ns.namespace, name)
        client = f"{name}-client"
        ns.apply(client_pod(client, f"http://{name}:{PORT}", image("kubellama-server")))
        ns.wait_for("the client's first answer", lambda: any(e.get("event") == "model"
                                                              for e in client_lines(ns, client)), timeout=180)
        # Another file (the same bytes under another URL: its cache key differs) and another model id.
        ns("patch", "llamaserver", name, "--type=merge", "-p", json.dumps({"spec": {"model": {
            "url": "http://e2e-model-server/kubellama-tiny.gguf?v=2", "sha256": None, "alias": "tiny-v2"}}}))
        seen: set[str] = set()

        def changed() -> bool:
            obj = ns.get("llamaserver", name)
            rollout = obj["status"].get("rollout") or {}
            seen.add(rollout.get("phase", ""))
            if rollout.get("slots"):
                seen.add("slots")
            sts = ns.get("statefulset", name)
            st = sts["status"]
            return (sts["spec"]["template"]["spec"]["containers"][0]["args"] != old_args and not rollout
                    and sts["spec"]["replicas"] == replicas and st.get("currentRevision") == st.get("updateRevision")
                    and st.get("readyReplicas") == replicas and len(ns.get("pods", selector=servers)) == replicas
                    and obj["status"].get("phase") == "Ready")

        ns.wait_for("the new model on a new pod, the surge pod gone", changed, timeout=600, llamaserver=name)
        ns.wait_for("the client to get the new model", lambda: any(
            e.get("model") == "tiny-v2" for e in client_lines(ns, client)), timeout=60)
        def answered() -> int:
            return max([e["ok"] for e in client_lines(ns, client) if e.get("event") == "progress"] or [0])
        after = answered() + 20  # the old pods gone: twenty more requests through the Service, then stop
        ns.wait_for("twenty more answers after the change", lambda: answered() >= after, timeout=120)
        ns("exec", client, "--", "touch", "/tmp/stop")
        ns.wait_for("the client's summary", lambda: any(e.get("event") == "summary"
                                                         for e in client_lines(ns, client)), timeout=120)
        lines = client_lines(ns, client)
        summary = next(e for e in lines if e.get("event") == "summary")
        log(f"model change through the Service: {summary['ok']} requests answered, {summary['failed']} failed, "
            f"models {summary['models']}; rollout steps seen {sorted(seen)}")
        assert summary["failed"] == 0, [e for e in lines if e.get("event") == "failure"]
        assert summary["models"] == ["tiny-v1", "tiny-v2"], summary
        counts = watch.stop()
        watch = None
        log(f"EndpointSlice events during the change: {[(c, pods) for _, c, pods in counts]}")
        # From the first event with a Ready endpoint (the watch may start before the slice caught up).
        first = next(i for i, (_, c, _) in enumerate(counts) if c > 0)
        assert len(counts) - first > 3 and all(c > 0 for _, c, _ in counts[first:]), counts
        assert len({p for _, _, pods in counts for p in pods}) >= replicas + 1, "the surge pod never served"
        assert "slots" in seen or "Surge" in seen or "Replacing" in seen, seen
    finally:
        if watch is not None:
            watch.stop()
        if client is not None:
            ns("delete", "pod", client, "--ignore-not-found", "--wait=false", check=False)
        ns("delete", "llamaserver", name, "--ignore-not-found", "--wait=false", check=False)


def test_a_failed_download_job_is_reported(ns: Kube, model_server: str) -> None:
    """A shared cache's download Job whose file is a 404: the Job fails at once (kubellama-fetch's exit code 3 is
    final: podFailurePolicy), no server pod is created, and the status says why, as the init containers would."""
    if os.environ.get("E2E") == "1":
        pytest.skip("needs ReadWriteMany volumes (kind's local-path provisioner has none)")
    (manifest,) = load_manifest("llamaserver.yaml")
    manifest = copy.deepcopy(manifest)
    manifest["metadata"]["name"] = "missing-shared"
    manifest["spec"]["model"] = {"url": "http://e2e-model-server/does-not-exist.gguf",
                                 "cache": {"mode": "shared", "size": "1Gi"}}
    manifest["spec"]["storage"] = {"slots": {"enabled": False}}
    ns.apply(manifest)
    try:
        def reported() -> dict | None:
            obj = ns.get("llamaserver", "missing-shared") or {}
            status = obj.get("status", {})
            conditions = {c["type"]: c for c in status.get("conditions", [])}
            model = conditions.get("ModelReady", {})
            return obj if status.get("phase") == "Failed" and model.get("reason") == "ModelNotFound" else None

        obj = ns.wait_for("the failed download Job in the status", reported, timeout=300, llamaserver="missing-shared")
        assert "404" in obj["status"]["message"] or "not found" in obj["status"]["message"].lower(), obj["status"]
        assert obj["status"]["download"]["state"] == "Failed"
        [job] = ns.get("jobs", selector="kubellama.dev/llamaserver=missing-shared")
        assert any(c["type"] == "Failed" and c["reason"] == "PodFailurePolicy" for c in job["status"]["conditions"])
        assert job["status"].get("failed") == 1, "a 404 is not retried"
        assert ns.get("statefulset", "missing-shared") is None, "no server pod without its model"
    finally:
        ns("delete", "llamaserver", "missing-shared", "--ignore-not-found", "--wait=false", check=False)
