"""A real watch of a Service's EndpointSlices through `kubectl get --watch`, and an in-cluster client that
keeps sending requests through the Service (kube-proxy's rules, not a port-forward pinned to one pod)."""

from __future__ import annotations

import json
import subprocess
import threading
import time

from e2e_support import Kube

#: Runs in the kubellama-server image: completions through the Service until /tmp/stop exists, one JSON
#: line per failure and a summary line at the end.
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


class EndpointWatch:
    """`kubectl get endpointslices -l kubernetes.io/service-name=S --watch --output-watch-events -o json`:
    every event of the Service's slices, the count of Ready endpoints after each."""

    def __init__(self, ns: Kube, service: str):
        self.proc = subprocess.Popen(
            [ns.kubectl, "-n", ns.namespace, "get", "endpointslices", "-l", f"kubernetes.io/service-name={service}",
             "--watch", "--output-watch-events", "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.slices: dict[str, set[str]] = {}
        self.counts: list[tuple[float, int, tuple[str, ...]]] = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        decoder, buf = json.JSONDecoder(), ""
        for chunk in iter(lambda: self.proc.stdout.read(1), ""):
            buf += chunk
            if chunk != "}":
                continue
            try:
                event, end = decoder.raw_decode(buf.lstrip())
            except ValueError:
                continue
            buf = buf.lstrip()[end:]
            obj = event.get("object") or {}
            name = obj.get("metadata", {}).get("name", "")
            if event.get("type") == "DELETED":
                self.slices.pop(name, None)
            else:
                self.slices[name] = {(e.get("targetRef") or {}).get("name", "") for e in obj.get("endpoints") or []
                                     if (e.get("conditions") or {}).get("ready")}
            ready = set().union(*self.slices.values()) if self.slices else set()
            self.counts.append((time.monotonic(), len(ready), tuple(sorted(ready))))

    def stop(self) -> list[tuple[float, int, tuple[str, ...]]]:
        self.proc.terminate()
        self.proc.wait(timeout=20)
        self.thread.join(timeout=10)
        return self.counts
