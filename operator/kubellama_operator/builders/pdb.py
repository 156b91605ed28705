"""PodDisruptionBudget: at most one replica voluntarily evicted at a time (only when replicas > 1)."""

from __future__ import annotations

from typing import Any

from ..api import LlamaServerSpec
from .meta import Body, object_meta, selector_labels


def wants_pdb(spec: LlamaServerSpec) -> bool:
    return spec.replicas > 1


def build_pdb(owner: Body) -> dict[str, Any]:
    name = owner["metadata"]["name"]
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": object_meta(owner, name),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": selector_labels(name)}},
    }
