"""Pure builders of a LlamaServer's child objects: (owner, normalized spec, settings) -> manifests."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..config import OperatorConfig
from ..api import LlamaServerSpec
from ..spec import Model
from .autoscaler import HPA_API, KEDA_API, autoscaling_driver, build_hpa, build_scaledobject
from .configmap import build_configmap, wants_configmap
from .inferencepool import INFERENCEPOOL_API, build_inferencepool, wants_inferencepool
from .meta import Body, config_name, headless_name
from .networkpolicy import build_networkpolicy, wants_networkpolicy
from .pdb import build_pdb, wants_pdb
from .router import build_router, router_refs, wants_router
from .services import build_headless_service, build_service
from .servicemonitor import build_servicemonitor, wants_servicemonitor
from .statefulset import build_statefulset


@dataclass(frozen=True)
class ChildRef:
    """Identifies a child kind and name (for deletion of children no longer wanted)."""

    api_version: str
    kind: str
    name: str


def desired_children(owner: Body, spec: LlamaServerSpec, model: Model, config: OperatorConfig, *,
                     servicemonitor_crd: bool, inferencepool_crd: bool = False,
                     scaledobject_crd: bool = False) -> tuple[list[dict[str, Any]], list[ChildRef]]:
    """The objects that should exist, and the optional ones that should not (to delete).

    A ScaledObject (autoscaling driver keda) only when KEDA's CRD is served (`autoscaling_problem` says why not).
    """
    name = owner["metadata"]["name"]
    sm = wants_servicemonitor(spec, servicemonitor_crd)
    want: list[dict[str, Any]] = []
    drop: list[ChildRef] = []
    if wants_configmap(spec):
        want.append(build_configmap(owner, spec))
    else:
        drop.append(ChildRef("v1", "ConfigMap", config_name(name)))
    want.append(build_headless_service(owner))
    want.append(build_service(owner, spec))
    # Scrape annotations on the pods only when no ServiceMonitor does the job.
    want.append(build_statefulset(owner, spec, model, config, scrape_annotations=not sm))
    if wants_networkpolicy(spec):
        want.append(build_networkpolicy(owner, spec, config))
    else:
        drop.append(ChildRef("networking.k8s.io/v1", "NetworkPolicy", name))
    if wants_pdb(spec):
        want.append(build_pdb(owner))
    else:
        drop.append(ChildRef("policy/v1", "PodDisruptionBudget", name))
    if sm:
        want.append(build_servicemonitor(owner, spec))
    elif servicemonitor_crd:
        drop.append(ChildRef("monitoring.coreos.com/v1", "ServiceMonitor", name))
    if wants_inferencepool(spec, inferencepool_crd):
        want.append(build_inferencepool(owner, spec))
    elif inferencepool_crd:
        drop.append(ChildRef(INFERENCEPOOL_API, "InferencePool", name))
    driver = autoscaling_driver(spec)
    if driver == "hpa":
        want.append(build_hpa(owner, spec))
    else:
        drop.append(ChildRef(HPA_API, "HorizontalPodAutoscaler", name))
    if driver == "keda" and scaledobject_crd:
        want.append(build_scaledobject(owner, spec))
    elif scaledobject_crd:
        drop.append(ChildRef(KEDA_API, "ScaledObject", name))
    if wants_router(spec):
        want.extend(build_router(owner, spec, config))
    else:
        drop.extend(ChildRef(*ref) for ref in router_refs(name))
    return want, drop


__all__ = ["ChildRef", "desired_children", "headless_name"]
