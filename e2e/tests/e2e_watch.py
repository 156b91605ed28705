"""An in-cluster client that keeps sending requests through a Service (kube-proxy's rules, not a port-forward
pinned to one pod); its EndpointSlices are watched with `endpoint_watch.ReadyWatch` (e2e/controlplane)."""

from __future__ import annotations

import json

from e2e_support import Kube

#: Runs in the kubellama-server image: completions through the Service until /tmp/stop exists, one JSON
#: line per failure, per new model and per 10 answers ("progress"), and a summary line at the end.
CLIENT = r"""
import json, os, time, urllib.request
url, ok, failed, models, first = os.environ["URL"], 0, 0, [], None
while not os.path.exists("/tmp/stop"):
    body = json.dumps({"prompt": "Hello", "max_tokens": 2}).encode()
    req = urllib.request.Request(url + "/v1/completions", body, {"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            model = json.loads(r.read())["model"]
        ok += 1
        if ok % 10 == 0:
            print(json.dumps({"event": "progress", "ok": ok, "model": model}), flush=True)
        if model not in models:
            models.append(model)
            print(json.dumps({"event": "model", "model": model}), flush=True)
    except Exception as e:
        failed += 1
        print(json.dumps({"event": "failure", "error": repr(e)[:300], "at": time.time()}), flush=True)
    time.sleep(0.05)
print(json.dumps({"event": "summary", "ok": ok, "failed": failed, "models": models}), flush=True)
"""


def client_pod(name: str, url: str, image: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
            "spec": {"restartPolicy": "Never", "automountServiceAccountToken": False,
                     "securityContext": {"runAsNonRoot": True, "runAsUser": 10001,
                                         "seccompProfile": {"type": "RuntimeDefault"}},
                     "containers": [{"name": "client", "image": image, "imagePullPolicy": "IfNotPresent",
                                     "command": ["python", "-c", CLIENT], "env": [{"name": "URL", "value": url}],
                                     "resources": {"requests": {"cpu": "50m", "memory": "32Mi"},
                                                   "limits": {"memory": "128Mi"}},
                                     "securityContext": {"allowPrivilegeEscalation": False,
                                                         "capabilities": {"drop": ["ALL"]}}}]}}


def client_lines(ns: Kube, name: str) -> list[dict]:
    out = []
    for line in ns("logs", name, check=False).splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            pass
    return out
