"""kopf handlers (thin): every trigger ends in one `reconcile.reconcile` pass per LlamaServer.

Triggers: create/update/resume of a LlamaServer; a periodic resync (drift repair, status refresh);
events of its children (a deleted or edited child is re-applied; the router's and autoscaler's
children on spec changes and deletions only) and of its pods (status only).
Passes for one LlamaServer never overlap, and bursts of child events collapse into one pass.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from typing import Any

import kopf

from . import FIELD_MANAGER, GROUP, PLURAL, VERSION, metrics
from .builders.meta import LABEL_MANAGED_BY, LABEL_OWNER
from .config import OperatorConfig
from .kube import ApiError, KubeClient
from .lora_scales import scales_event
from .reconcile import Outcome, reconcile

log = logging.getLogger("kubellama_operator")

CHILD_RESOURCES = [("apps", "v1", "statefulsets"), ("batch", "v1", "jobs"), ("", "v1", "services"),
                   ("", "v1", "configmaps"), ("policy", "v1", "poddisruptionbudgets"),
                   ("networking.k8s.io", "v1", "networkpolicies")]
SERVICEMONITORS = ("monitoring.coreos.com", "v1", "servicemonitors")
#: The router's and the autoscaler's children (spec.routing, spec.autoscaling, spec.inferencePool): a
#: pass when their spec changes or they are deleted, not on their frequent status updates. The CRD-backed
#: ones are watched once their CRD is served (kopf rescans).
SPEC_CHILD_RESOURCES = [("apps", "v1", "deployments"), ("", "v1", "serviceaccounts"),
                        ("rbac.authorization.k8s.io", "v1", "roles"),
                        ("rbac.authorization.k8s.io", "v1", "rolebindings"),
                        ("autoscaling", "v2", "horizontalpodautoscalers"), ("keda.sh", "v1alpha1", "scaledobjects"),
                        ("inference.networking.k8s.io", "v1", "inferencepools")]
MANAGED = {LABEL_MANAGED_BY: FIELD_MANAGER}


class SpecChanges:
    """Which child events change a child's spec: deletions, and MODIFIED with a `metadata.generation`
    not seen before for that object (status updates keep it). Objects without a generation (a Role)
    always count. Bounded by the live children: a deleted one is forgotten."""

    def __init__(self) -> None:
        self.seen: dict[str, int] = {}

    def __call__(self, event_type: str | None, meta: dict[str, Any]) -> bool:
        uid, gen = meta.get("uid"), meta.get("generation")
        if event_type == "DELETED":
            self.seen.pop(uid, None)
            return True
        if uid is not None and gen is not None:
            before, self.seen[uid] = self.seen.get(uid), gen
        else:
            before = None
        # None: kopf's initial listing (records the generation); ADDED: created (by us, or the pass covers it)
        return event_type == "MODIFIED" and (gen is None or before != gen)


def login(**kwargs: Any) -> Any:
    """In-cluster service account first, then a kubeconfig (KUBECONFIG or ~/.kube/config)."""
    return kopf.login_with_service_account(**kwargs) or kopf.login_with_kubeconfig(**kwargs)


def backoff(retry: int) -> float:
    """Seconds before retrying an unsatisfiable spec: 5, 10, 20, ... up to 5 minutes."""
    return float(min(300, 5 * 2 ** min(retry, 10)))


class Operator:
    """Per-run state shared by the handlers: settings, API client, per-object serialization."""

    def __init__(self, config: OperatorConfig):
        self.config = config
        #: kwargs of kopf's last login call (settings, logger), reused to refresh our credentials.
        self.login_kwargs: dict[str, Any] = {"settings": kopf.OperatorSettings(), "logger": log}
        self.client = KubeClient(lambda: login(**self.login_kwargs),
                                 on_request=lambda m, c: metrics.API_REQUESTS.labels(m, str(c)).inc())
        self._locks: dict[tuple[str, str], asyncio.Lock] = defaultdict(asyncio.Lock)
        self._queued: dict[tuple[str, str], int] = defaultdict(int)
        self.started = asyncio.Event()
        self.resync_task: asyncio.Task[None] | None = None

    def forget(self, namespace: str, name: str) -> None:
        """Drop per-object state of a deleted LlamaServer."""
        lock = self._locks.get((namespace, name))
        if lock is not None and not lock.locked():
            del self._locks[(namespace, name)]
        self._queued.pop((namespace, name), None)

    def ensure_resync(self) -> None:
        """Start the resync loop, from a kopf handler: it inherits the context kopf's event poster needs."""
        if self.resync_task is None:
            self.resync_task = asyncio.create_task(self.resync_loop(), name="kubellama-resync")

    async def resync_loop(self) -> None:
        """Reconcile every LlamaServer periodically: repairs drift even when a watch event was missed.

        Our own loop rather than a kopf timer: kopf puts a finalizer on objects with timers, which
        would block `kubectl delete` whenever the operator is not running.
        """
        while True:
            await asyncio.sleep(self.config.resync_seconds)
            try:
                scopes = list(self.config.namespaces) or [None]
                bodies = [b for ns in scopes for b in await self.client.list(f"{GROUP}/{VERSION}", PLURAL, ns)]
            except (ApiError, OSError, asyncio.TimeoutError) as e:
                log.warning("periodic resync could not list LlamaServers (will retry): %s", e)
                continue
            for body in bodies:
                try:
                    await self.run(body, "timer")
                except Exception:  # never let one object stop the loop; kopf's own handlers retry too
                    log.exception("periodic resync of %s/%s failed; retrying next period",
                                  body["metadata"].get("namespace"), body["metadata"].get("name"))

    async def run(self, body: dict[str, Any], trigger: str, *, apply: bool = True) -> Outcome | None:
        key = (body["metadata"]["namespace"], body["metadata"]["name"])
        async with self._locks[key]:
            return await self._pass(body, trigger, apply)

    async def run_for(self, namespace: str, name: str, trigger: str, *, apply: bool) -> None:
        """Reconcile a LlamaServer by name (from a child's event); bursts collapse into one pass."""
        key = (namespace, name)
        if self._queued[key]:
            return  # a pass is already waiting for the lock and will see this change too
        self._queued[key] += 1
        lock = self._locks[key]
        try:
            await lock.acquire()
        finally:
            self._queued[key] -= 1
        try:
            await self._pass({"metadata": {"namespace": namespace, "name": name}}, trigger, apply)
        finally:
            lock.release()

    async def _pass(self, body: dict[str, Any], trigger: str, apply: bool) -> Outcome | None:
        # kopf's body may predate our last status write: work from the stored object.
        meta = body["metadata"]
        fresh = await self.client.get(f"{GROUP}/{VERSION}", "LlamaServer", meta["namespace"], meta["name"])
        if fresh is None or fresh["metadata"].get("deletionTimestamp"):
            return None
        body = fresh
        started = time.monotonic()
        try:
            outcome = await reconcile(self.client, body, self.config, apply=apply)
        except Exception as e:
            metrics.RECONCILE_TOTAL.labels(trigger, "error").inc()
            metrics.RECONCILE_ERRORS.labels(type(e).__name__).inc()
            raise
        finally:
            metrics.RECONCILE_DURATION.labels(trigger).observe(time.monotonic() - started)
        metrics.RECONCILE_TOTAL.labels(trigger, "invalid" if outcome.problems else "success").inc()
        try:
            self.announce(body, trigger, outcome)
        except LookupError as e:  # outside kopf's context: no event poster
            log.warning("could not post events for %s/%s: %r", meta["namespace"], meta["name"], e)
        return outcome

    @staticmethod
    def announce(body: dict[str, Any], trigger: str, outcome: Outcome) -> None:
        """Kubernetes Events for what changed (no repeats for an unchanged state)."""
        spec_change = trigger == "update"
        # Children missing or different although the spec did not change: someone deleted or edited them.
        drift = not spec_change and outcome.previous.get("phase") is not None
        for ref in outcome.created:
            if drift:
                kopf.warn(body, reason="Restored", message=f"re-created {ref}, which was missing")
            else:
                kopf.event(body, type="Normal", reason="Created", message=f"created {ref}")
        for ref in outcome.updated:
            if drift and trigger in ("child", "timer"):
                kopf.warn(body, reason="Reverted", message=f"reverted a change to {ref} made outside the spec")
            else:
                kopf.event(body, type="Normal", reason="Updated", message=f"applied the new spec to {ref}")
        for ref in outcome.deleted:
            kopf.event(body, type="Normal", reason="Deleted", message=f"deleted {ref} (no longer wanted)")
        status = outcome.status
        if outcome.warnings and outcome.message_changed:
            for warning in outcome.warnings:
                kopf.warn(body, reason="SharedClaimNotShareable", message=warning)
        lora = scales_event(outcome.previous, status)
        if lora is not None:
            kopf.event(body, type=lora[0], reason=lora[1], message=lora[2])
        if outcome.phase_changed or (status.get("phase") in ("Failed", "Degraded") and outcome.message_changed):
            phase = status.get("phase", "")
            reason = "InvalidSpec" if outcome.problems else phase
            if phase in ("Failed", "Degraded"):
                kopf.warn(body, reason=reason, message=status.get("message", ""))
            else:
                kopf.event(body, type="Normal", reason=phase, message=status.get("message", ""))


def register(config: OperatorConfig, registry: kopf.OperatorRegistry | None = None) -> tuple[kopf.OperatorRegistry, Operator]:
    """Create the handlers for one operator run in `registry` (a fresh one by default)."""
    registry = registry or kopf.OperatorRegistry()
    op = Operator(config)
    res = (GROUP, VERSION, PLURAL)

    @kopf.on.startup(registry=registry)
    async def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
        settings.peering.standalone = True  # a single replica; no kopf.dev peering resources
        settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=GROUP)
        settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
            prefix=GROUP, key="last-handled-configuration")
        settings.posting.level = logging.WARNING  # our own events for normal steps; kopf's for failures
        settings.posting.reporting_component = FIELD_MANAGER
        settings.watching.server_timeout = 300
        settings.queueing.error_delays = [1, 2, 5, 10, 30, 60]
        op.started.set()

    @kopf.on.cleanup(registry=registry)
    async def close(**_: Any) -> None:
        if op.resync_task is not None:
            op.resync_task.cancel()
            await asyncio.gather(op.resync_task, return_exceptions=True)
        await op.client.close()

    @kopf.on.login(registry=registry)
    def _login(**kwargs: Any) -> Any:
        op.login_kwargs = {k: kwargs[k] for k in ("settings", "logger") if k in kwargs}
        return login(**kwargs)

    async def on_spec(body: kopf.Body, retry: int, reason: str, **_: Any) -> None:
        op.ensure_resync()
        outcome = await op.run(dict(body), str(reason))
        if outcome is not None and outcome.problems:
            raise kopf.TemporaryError(outcome.status.get("message", "invalid spec"), delay=backoff(retry))

    for decorator in (kopf.on.create, kopf.on.update, kopf.on.resume):
        decorator(*res, registry=registry, id=f"reconcile-{decorator.__name__}")(on_spec)

    @kopf.on.event(*res, registry=registry, id="observe")
    async def observe(event: dict[str, Any], body: kopf.Body, **_: Any) -> None:
        op.ensure_resync()
        if event.get("type") == "DELETED":
            metrics.forget(body["metadata"]["namespace"], body["metadata"]["name"])
            op.forget(body["metadata"]["namespace"], body["metadata"]["name"])

    async def on_child(event: dict[str, Any], body: kopf.Body, namespace: str, labels: dict[str, str],
                       **_: Any) -> None:
        owner = labels.get(LABEL_OWNER)
        if owner and namespace and event.get("type") in ("DELETED", "MODIFIED"):
            await _quietly(op.run_for(namespace, owner, "child", apply=True))

    async def on_pod(event: dict[str, Any], namespace: str, labels: dict[str, str], **_: Any) -> None:
        owner = labels.get(LABEL_OWNER)
        if owner and namespace and event.get("type") is not None:
            await _quietly(op.run_for(namespace, owner, "pod", apply=False))

    for group, version, plural in CHILD_RESOURCES + [SERVICEMONITORS]:
        kopf.on.event(group, version, plural, registry=registry, labels=MANAGED,
                      id=f"child-{plural}")(on_child)

    spec_changes = SpecChanges()

    async def on_spec_child(event: dict[str, Any], body: kopf.Body, namespace: str, labels: dict[str, str],
                            **_: Any) -> None:
        owner = labels.get(LABEL_OWNER)
        if owner and namespace and spec_changes(event.get("type"), dict(body.get("metadata") or {})):
            await _quietly(op.run_for(namespace, owner, "child", apply=True))

    for group, version, plural in SPEC_CHILD_RESOURCES:
        kopf.on.event(group, version, plural, registry=registry, labels=MANAGED,
                      id=f"child-{plural}")(on_spec_child)
    kopf.on.event("", "v1", "pods", registry=registry, labels=MANAGED, id="pods")(on_pod)
    return registry, op


async def _quietly(coro: Any) -> None:
    """Child/pod events are hints: the timer repairs anything a failed pass missed."""
    try:
        await coro
    except (ApiError, OSError, asyncio.TimeoutError) as e:
        log.warning("reconcile after a child event failed (the periodic resync will retry): %s", e)
