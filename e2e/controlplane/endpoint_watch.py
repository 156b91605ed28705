"""Watch (not sample) a Service's EndpointSlices: every change is seen, with its count of Ready endpoints.

`ReadyWatch(kube, namespace, service)` lists the slices with a `kubellama_controlplane.Kube`, then follows a
watch from that list's resourceVersion (the operator's `KubeClient.watch`, on the client's own thread, started
again where it ended when the API server closes it); `counts` is the total of Ready endpoints after each event,
`pods` every pod name ever seen Ready. Used on the control plane (kwok) and on the real local node.
"""

from __future__ import annotations

import concurrent.futures
import threading
import time
from typing import Any


def _ready(slice_: dict[str, Any]) -> set[str]:
    out = set()
    for ep in slice_.get("endpoints") or []:
        if (ep.get("conditions") or {}).get("ready"):
            ref = ep.get("targetRef") or {}
            out.add(ref.get("name") or ",".join(ep.get("addresses") or []))
    return out


class ReadyWatch:
    def __init__(self, kube: Any, namespace: str, service: str):
        self.api = kube.api  # kubesync.SyncKubeClient
        self.base = f"/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices"
        self.selector = f"kubernetes.io/service-name={service}"
        self.slices: dict[str, set[str]] = {}
        self.counts: list[tuple[float, int, tuple[str, ...]]] = []
        self.pods: set[str] = set()
        self.error: BaseException | None = None
        self._lock = threading.Lock()
        self._stopped = False
        listing = kube.get(self.base, labelSelector=self.selector)
        for s in listing["items"]:
            self.slices[s["metadata"]["name"]] = _ready(s)
        self._record()
        self._rv = listing["metadata"]["resourceVersion"]
        self._follow()

    def _record(self) -> None:
        ready = set().union(*self.slices.values()) if self.slices else set()
        self.pods |= ready
        self.counts.append((time.monotonic(), len(ready), tuple(sorted(ready))))

    def _follow(self) -> None:
        with self._lock:
            if self._stopped:
                return
            self._watch = self.api.watch(self.base, {"labelSelector": self.selector, "resourceVersion": self._rv},
                                         self._on_event, timeout_seconds=60)
        self._watch.add_done_callback(self._ended)

    def _on_event(self, event: dict[str, Any]) -> None:
        obj = event["object"]
        if event["type"] == "ERROR":
            raise RuntimeError(f"watch error: {obj}")
        self._rv = obj["metadata"]["resourceVersion"]
        name = obj["metadata"]["name"]
        if event["type"] == "DELETED":
            self.slices.pop(name, None)
        else:
            self.slices[name] = _ready(obj)
        self._record()

    def _ended(self, done: concurrent.futures.Future) -> None:
        if done.cancelled() or self._stopped:
            return
        if done.exception() is not None:
            self.error = done.exception()
            return
        self._follow()  # the API server ended the watch (timeoutSeconds): go on from the last event

    def stop(self) -> list[tuple[float, int, tuple[str, ...]]]:
        """End the watch; raise what broke it; return the history of Ready counts."""
        with self._lock:
            self._stopped = True
            self._watch.cancel()
        if self.error is not None:
            raise AssertionError(f"the EndpointSlice watch broke: {self.error!r}")
        return self.counts

    def never_empty(self) -> bool:
        return all(count > 0 for _, count, _ in self.counts)
