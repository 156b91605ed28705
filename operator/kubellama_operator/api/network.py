"""spec.service and spec.networkPolicy: who reaches the server pods."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from .schema import Markers, Rule, SpecModel, field

#: A Service reachable from outside the cluster needs an API key, unless explicitly allowed without one.
EXTERNAL_SERVICE_TYPES = ("NodePort", "LoadBalancer")
EXTERNAL_SERVICE_RULE = ("!has(self.service) || !has(self.service.type) || self.service.type == 'ClusterIP' "
                         "|| has(self.apiKeySecretRef) || (has(self.service.allowUnauthenticated) "
                         "&& self.service.allowUnauthenticated)")
EXTERNAL_SERVICE_MESSAGE = ("a NodePort or LoadBalancer spec.service exposes the server outside the cluster: set "
                            "spec.apiKeySecretRef, or spec.service.allowUnauthenticated: true to serve without a key")


class Service(SpecModel):
    """The ClusterIP (or other) Service named after the LlamaServer."""

    type: Literal["ClusterIP", "NodePort", "LoadBalancer"] = field("Service type.", "ClusterIP")
    port: int = field("Service port.", 8080, minimum=1, maximum=65535)
    annotations: dict[str, str] | None = field("Service annotations.", None)
    allow_unauthenticated: bool | None = field(
        "Allow a NodePort or LoadBalancer Service without spec.apiKeySecretRef (the server is then open to whoever "
        "reaches the node or load balancer). Without it, such a Service needs an API key.", None)

    @property
    def external(self) -> bool:
        """Published outside the cluster (NodePort or LoadBalancer)."""
        return self.type in EXTERNAL_SERVICE_TYPES


class LabelSelectorRequirement(SpecModel):
    """A LabelSelectorRequirement."""

    key: str = field(minLength=1)
    operator: Literal["In", "NotIn", "Exists", "DoesNotExist"]
    values: list[str] | None = field(default=None, maxItems=64)


class LabelSelector(SpecModel):
    match_labels: dict[str, str] | None = field("Labels the object must have.", None)
    match_expressions: list[LabelSelectorRequirement] | None = field("Set-based requirements.", None, maxItems=16)


class IPBlock(SpecModel):
    """An IP range."""

    cidr: str = field("CIDR, e.g. 10.0.0.0/8.", minLength=1)
    except_: list[str] | None = field("CIDRs inside cidr to leave out.", None, alias="except", maxItems=16)


def _peer_problems(peer: NetworkPolicyPeer, where: str) -> list[str]:
    """What the API server would refuse in the NetworkPolicy built from a peer (CEL cannot check CIDRs on every
    API server version): said up front instead of failing the apply."""
    if not peer.model_fields_set:
        return [f"{where} needs podSelector, namespaceSelector or ipBlock"]
    out = []
    if peer.ip_block is not None and len(peer.model_fields_set) > 1:
        out.append(f"{where}: ipBlock cannot be combined with podSelector or namespaceSelector")
    for cidr in [peer.ip_block.cidr, *(peer.ip_block.except_ or [])] if peer.ip_block is not None else []:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            out.append(f"{where}.ipBlock: {cidr!r} is not a CIDR (e.g. 10.0.0.0/8)")
    for key, selector in (("podSelector", peer.pod_selector), ("namespaceSelector", peer.namespace_selector)):
        for expr in (selector.match_expressions or []) if selector is not None else []:
            has_values = bool(expr.values)
            if has_values != (expr.operator in ("In", "NotIn")):
                out.append(f"{where}.{key}: operator {expr.operator} "
                           + ("needs values" if not has_values else "takes no values"))
    return out


class NetworkPolicyPeer(SpecModel):
    """A NetworkPolicyPeer: pods, namespaces or an IP block."""

    pod_selector: LabelSelector | None = field(
        "Pods (in the namespaces of namespaceSelector, else in the LlamaServer's namespace).", None)
    namespace_selector: LabelSelector | None = field("Namespaces.", None)
    ip_block: IPBlock | None = field(default=None)

    rules = (Rule(find=_peer_problems),)


class NetworkPolicy(SpecModel):
    """The NetworkPolicy (named after the LlamaServer) that admits traffic to the server pods' port: the
    router (pods labelled app.kubernetes.io/component: router in the same namespace), the Prometheus
    the operator is configured with (--prometheus-namespace-selector/--prometheus-pod-selector), and
    what is listed here; nothing else. With a NodePort or LoadBalancer service every source is admitted
    (the Service publishes the port outside the cluster; spec.apiKeySecretRef guards it)."""

    enabled: bool = field("Create the NetworkPolicy; false leaves the pods open to every pod of the cluster.", True)
    allowed_namespaces: list[Annotated[str, Markers(pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", maxLength=63)]] \
        | None = field("Namespaces (by name) whose pods may call the server.", None, maxItems=32)
    from_: list[NetworkPolicyPeer] | None = field("More sources (core NetworkPolicyPeer).", None, alias="from",
                                                   maxItems=16)
