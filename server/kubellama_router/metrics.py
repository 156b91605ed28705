"""The router's Prometheus metrics (its own registry, served on /metrics)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily

from .pool import Pool


class _PoolCollector:
    def __init__(self, pool: Pool):
        self.pool = pool

    def collect(self):
        inflight = GaugeMetricFamily("kubellama_router_inflight_requests",
                                     "Requests the router has in flight, per replica.", labels=["replica"])
        ready = GaugeMetricFamily("kubellama_router_replica_ready", "1 when the replica takes requests.",
                                  labels=["replica"])
        ready_set = {r.url for r in self.pool.ready()}
        for rep in list(self.pool.replicas.values()):
            inflight.add_metric([rep.url], rep.inflight)
            ready.add_metric([rep.url], 1.0 if rep.url in ready_set else 0.0)
        queue = GaugeMetricFamily("kubellama_router_queue_length", "Requests waiting for a replica.")
        queue.add_metric([], self.pool.waiting)
        replicas = GaugeMetricFamily("kubellama_router_ready_replicas", "Replicas that take requests.")
        replicas.add_metric([], len(ready_set))
        yield from (inflight, ready, queue, replicas)


#: Why the router answers 503 (pool.Rejected.reason).
REJECT_REASONS = ("queue_full", "timeout", "no_replicas", "exhausted")


class RouterMetrics:
    def __init__(self, pool: Pool, strategy: str):
        self.registry = CollectorRegistry()
        self.strategy = strategy
        self.requests = Counter("kubellama_router_requests", "Requests routed, by strategy decision "
                                "(hit: the replica holding the cache/key; spill: it was too loaded; "
                                "miss: nothing to stick to; pick: no affinity).",
                                ["strategy", "decision"], registry=self.registry)
        self.upstream_errors = Counter("kubellama_router_upstream_errors", "Replica failures "
                                       "(connect: no connection; unavailable: 503; timeout: no answer in --read-timeout; "
                                       "broken: failed otherwise, e.g. mid-response).",
                                       ["replica", "kind"], registry=self.registry)
        self.retries = Counter("kubellama_router_retries", "Requests sent again to another replica.",
                               registry=self.registry)
        self.rejected = Counter("kubellama_router_rejected", "Requests answered 503 by the router.",
                                ["reason"], registry=self.registry)
        for reason in REJECT_REASONS:  # at 0 from the start: rate() and alerts see the first rejection
            self.rejected.labels(reason)
        self.queue_wait = Histogram("kubellama_router_queue_wait_seconds", "Time waiting for a replica.",
                                    buckets=(0.001, 0.01, 0.1, 0.5, 1, 2.5, 5, 10, 30, 60),
                                    registry=self.registry)
        self.scaled = Gauge("kubellama_router_autoscale_replicas", "Replicas the autoscaler last set (--autoscale).",
                            registry=self.registry)
        self.registry.register(_PoolCollector(pool))

    def decision(self, outcome: str) -> None:
        self.requests.labels(self.strategy, outcome).inc()
