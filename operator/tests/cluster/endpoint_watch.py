"""Watch (not sample) a Service's EndpointSlices: every change is seen, with its count of Ready endpoints.

`ReadyWatch(kube_factory, namespace, service)` lists the slices, then follows a watch from that list's
resourceVersion in a thread; `counts` is the total of Ready endpoints after each event, `pods` every pod
name ever seen Ready. Used on the control plane (kwok) and on the real local node.
"""

from __future__ import annotations

import json
import threading
import time
from typing import Any, Callable


def _ready(slice_: dict[str, Any]) -> set[str]:
    out = set()
    for ep in slice_.get("endpoints") or []:
        if (ep.get("conditions") or {}).get("ready"):
            ref = ep.get("targetRef") or {}
            out.add(ref.get("name") or ",".join(ep.get("addresses") or []))
    return out


class ReadyWatch:
    def __init__(self, kube_factory: Callable[[], Any], namespace: str, service: str):
        self.kube = kube_factory()
        self.base = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
        self.selector = f"kubernetes.io/service-name={service}"
        self.slices: dict[str, set[str]] = {}
        self.counts: list[tuple[float, int, tuple[str, ...]]] = []
        self.pods: set[str] = set()
        self.error: BaseException | None = None
        self._stop = threading.Event()
        listing = self.kube.get(self.base, labelSelector=self.selector)
        for s in listing["items"]:
            self.slices[s["metadata"]["name"]] = _ready(s)
        self._record()
        self._rv = listing["metadata"]["resourceVersion"]
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _record(self) -> None:
        ready = set().union(*self.slices.values()) if self.slices else set()
        self.pods |= ready
        self.counts.append((time.monotonic(), len(ready), tuple(sorted(ready))))

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                params = {"labelSelector": self.selector, "watch": "true", "resourceVersion": self._rv,
                          "timeoutSeconds": "30", "allowWatchBookmarks": "true"}
                with self.kube.http.stream("GET", self.base, params=params, timeout=None) as r:
                    r.raise_for_status()
                    for line in r.iter_lines():
                        if self._stop.is_set():
                            return
                        if not line:
                            continue
                        event = json.loads(line)
                        obj = event["object"]
                        if event["type"] == "ERROR":
                            raise RuntimeError(f"watch error: {obj}")
                        self._rv = obj["metadata"]["resourceVersion"]
                        if event["type"] == "BOOKMARK":
                            continue
                        name = obj["metadata"]["name"]
                        if event["type"] == "DELETED":
                            self.slices.pop(name, None)
                        else:
                            self.slices[name] = _ready(obj)
                        self._record()
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            if not self._stop.is_set():
                self.error = exc

    def stop(self) -> list[tuple[float, int, tuple[str, ...]]]:
        """End the watch; raise what broke it; return the history of Ready counts."""
        self._stop.set()
        self.kube.close()
        self.thread.join(timeout=10)
        if self.error is not None:
            raise AssertionError(f"the EndpointSlice watch broke: {self.error!r}")
        return self.counts

    def never_empty(self) -> bool:
        return all(count > 0 for _, count, _ in self.counts)
