"""The operator with `operator.watchNamespaces` set: the chart's per-namespace Roles are enough,
and LlamaServers outside the watched namespaces are left alone."""

from __future__ import annotations

import httpx
import uuid

import kubellama_controlplane as kcp
import pytest
from kubellama_server.promtext import read_samples
from chart_operator import LLAMA_API, assert_no_forbidden, chart_operator, llama, status_of, wait_phase

kcp.skip_module_if_unavailable()


@pytest.fixture(scope="module")
def watched(kube: kcp.Kube):
    names = [f"watched-{uuid.uuid4().hex[:6]}", f"other-{uuid.uuid4().hex[:6]}"]
    for name in names:
        kube.create({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name}})
        kube.wait_for(lambda n=name: kube.read("v1", "ServiceAccount", "default", n), f"namespace {name} ready")
    yield names[0], names[1]
    for name in names:
        kube.remove("v1", "Namespace", name)
    for name in names:
        kube.wait_for(lambda n=name: not kube.list("v1", "Pod", n), f"pods of {name} gone", timeout=90)


def test_namespaced_operator_needs_only_the_charts_roles(control_plane, kube, helm, llama_crd, watched,
                                                          tmp_path):
    ns, other = watched
    with chart_operator(control_plane, kube, helm, tmp_path, "kn",
                        "--set", f"operator.watchNamespaces={{{ns}}}") as operator:
        before = 0
        # The other namespace's first: by the time "mine" is Ready (passes on its pods' events, seconds later),
        # an operator watching every namespace would long have handled "theirs" (no sleep that a stalled
        # operator would also pass).
        kube.create(llama("theirs", other))
        kube.create(llama("mine", ns))
        status = wait_phase(kube, operator, "mine", ns, "Ready", readyReplicas=1)
        assert status["endpoint"] == f"http://mine.{ns}.svc:8080/v1"
        assert kube.read("apps/v1", "StatefulSet", "mine", ns)

        # The operator's own account of what it handled: its per-LlamaServer series.
        scraped = httpx.get(f"{operator.metrics_url}/metrics", timeout=10).content
        phases = [s.labels for s in read_samples(scraped, ("kubellama_operator_llamaserver_phase",))]
        assert any(labels.get("namespace") == ns and labels.get("name") == "mine" for labels in phases), phases
        assert not any(labels.get("namespace") == other for labels in phases), phases
        assert status_of(kube, "theirs", other) == {}
        assert kube.read("apps/v1", "StatefulSet", "theirs", other) is None

        kube.remove(LLAMA_API, "LlamaServer", "mine", ns)
        kube.wait_for(lambda: kube.read("apps/v1", "StatefulSet", "mine", ns) is None,
                      "the garbage collector to delete the StatefulSet")
        assert_no_forbidden(control_plane, operator, before)
