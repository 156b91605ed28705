"""spec.routing, spec.autoscaling, spec.inferencePool, spec.monitoring and spec.rollout."""

from __future__ import annotations

from typing import Literal, get_args

from .schema import Rule, SpecModel, field

#: kubellama-router's strategies (kubellama_router.strategies.NAMES; a test checks they agree).
RoutingStrategy = Literal["prefix", "least-load", "session", "round-robin", "random", "kubeai-prefixhash"]
ROUTING_STRATEGIES = list(get_args(RoutingStrategy))
#: Who sets the replicas under spec.autoscaling: the router itself, an HPA, or KEDA.
AutoscalingDriver = Literal["router", "hpa", "keda"]
AUTOSCALING_DRIVERS = list(get_args(AutoscalingDriver))
#: The metric an HPA reads (through a metrics adapter): the router's in-flight + queued requests of a LlamaServer.
HPA_METRIC = "kubellama_router_load"
HPA_MIN_REPLICAS_RULE = ("!has(self.enabled) || !self.enabled || !has(self.driver) || self.driver != 'hpa' || "
                         "!has(self.minReplicas) || self.minReplicas >= 1")
HPA_MIN_REPLICAS_MESSAGE = ("spec.autoscaling.minReplicas: 0 needs driver router or keda (an HPA cannot scale to zero "
                            "without the HPAScaleToZero feature gate)")
KEDA_ADDRESS_RULE = ("!has(self.enabled) || !self.enabled || !has(self.driver) || self.driver != 'keda' || "
                     "has(self.prometheusAddress)")
KEDA_ADDRESS_MESSAGE = "spec.autoscaling.driver keda needs spec.autoscaling.prometheusAddress (where KEDA queries)"


class Routing(SpecModel):
    """A cache-aware router in front of the replicas (kubellama-router): keeps a conversation on the
    replica holding its prompt cache, spreads load, retries refused requests. status.endpoint then
    points at the router's Service (<name>-router)."""

    enabled: bool = field("Run the router.", False)
    strategy: RoutingStrategy = field(
        "prefix: longest cached prompt prefix under a bounded load; least-load; session (x-session-id header or the "
        "OpenAI user field); round-robin; random; kubeai-prefixhash (KubeAI's PrefixHash, for comparison).",
        "prefix")
    replicas: int = field("Router pods.", 1, minimum=1, maximum=16)


class Autoscaling(SpecModel):
    """Replicas follow the load the router sees (needs routing.enabled): ceil(moving average of
    in-flight + queued requests / targetRequests), within [minReplicas, maxReplicas]. With
    minReplicas 0 the router holds requests while the first replica starts. driver router: the
    router sets spec.replicas through the scale subresource; hpa: an autoscaling/v2
    HorizontalPodAutoscaler on the metric kubellama_router_load (needs a metrics adapter); keda: a
    KEDA ScaledObject with a Prometheus trigger (needs KEDA's CRD)."""

    enabled: bool = field("Autoscale.", False)
    driver: AutoscalingDriver = field(
        "Who scales: router (the router itself), hpa (a HorizontalPodAutoscaler named after the LlamaServer; "
        "minReplicas >= 1) or keda (a KEDA ScaledObject named after the LlamaServer).", "router")
    prometheus_address: str | None = field(
        "driver keda: the Prometheus KEDA queries for the router's metrics, e.g. "
        "http://prometheus-operated.monitoring.svc:9090.", None, pattern=r"^https?://.+", maxLength=2048)
    min_replicas: int = field("Fewest replicas; 0 scales to zero when idle (router or keda).", 1, minimum=0,
                              maximum=1000)
    max_replicas: int = field("Most replicas.", 3, minimum=1, maximum=1000)
    target_requests: int = field("In-flight + queued requests per replica to aim for.", 4, minimum=1, maximum=100000)
    window_seconds: int = field("Seconds of the moving average (driver router).", 60, minimum=1, maximum=3600)
    scale_down_delay_seconds: int = field(
        "Seconds the lower count must hold before scaling down (hpa: the scale-down stabilization window, at most "
        "3600; keda: the cooldown).", 120, minimum=0, maximum=86400)
    hold_seconds: int = field("Seconds the router holds a request while no replica can take it (scale from zero: "
                              "the model must load meanwhile), then 503.", 300, minimum=1, maximum=3600)

    rules = (
        Rule("spec.autoscaling.minReplicas must not exceed maxReplicas",
             "!has(self.enabled) || !self.enabled || !has(self.minReplicas) || !has(self.maxReplicas) || "
             "self.minReplicas <= self.maxReplicas",
             lambda a: not a.enabled or a.min_replicas <= a.max_replicas),
        Rule(HPA_MIN_REPLICAS_MESSAGE, HPA_MIN_REPLICAS_RULE,
             lambda a: not a.enabled or a.driver != "hpa" or a.min_replicas >= 1),
        Rule(KEDA_ADDRESS_MESSAGE, KEDA_ADDRESS_RULE,
             lambda a: not a.enabled or a.driver != "keda" or bool(a.prometheus_address)),
    )


class EndpointPickerRef(SpecModel):
    """The endpoint picker (EPP) Service the gateway asks which pod takes a request. Optional in
    the v1 schema since v1.5.0 of the extension; most gateways still need one, and older CRDs
    (< v1.5.0) refuse a pool without it."""

    name: str = field("Service name, in the LlamaServer's namespace.", minLength=1, maxLength=253)
    port: int = field("The Service's port (not the target port).", minimum=1, maximum=65535)
    failure_mode: Literal["FailOpen", "FailClose"] = field("What the gateway does when the picker does not answer.",
                                                          "FailClose")


class InferencePool(SpecModel):
    """A Gateway API Inference Extension InferencePool (inference.networking.k8s.io/v1) named after the
    LlamaServer, selecting its server pods on the server port, for clusters that route through an
    inference gateway. Written only when the cluster serves the InferencePool CRD."""

    enabled: bool = field("Write the InferencePool when its CRD is installed.", True)
    endpoint_picker_ref: EndpointPickerRef | None = field(default=None)


class Monitoring(SpecModel):
    """Prometheus scraping."""

    service_monitor: bool = field("Create a ServiceMonitor (when its CRD is installed; pod scrape annotations "
                                  "otherwise).", False)
    interval: str = field("Scrape interval.", "30s", pattern=r"^[0-9]+(ms|s|m|h)$")


#: How pods are replaced when their template changes (rollout.py).
RolloutStrategy = Literal["RollingUpdate", "Surge"]
ROLLOUT_STRATEGIES = list(get_args(RolloutStrategy))


class Rollout(SpecModel):
    """How pods are replaced when their template changes (a new model, new flags)."""

    strategy: RolloutStrategy = field(
        "RollingUpdate: one pod at a time (with one replica the model is unavailable until the new pod is Ready). "
        "Surge: first one extra pod with the new template (it needs room: one more GPU), then the others one at a "
        "time, then the extra pod goes: the Service never lacks a Ready endpoint, with one replica too.",
        "RollingUpdate")
