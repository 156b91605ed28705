"""The typed LlamaServer spec: one class per sub-object, the single source of the CRD's schema, defaults and
CEL rules (`crd` renders it) and of what the builders receive (`spec.parse`).

Adding a field: declare it once in its class, e.g. (as `spec.rollout` and `spec.model.loras[].scale` are)::

    rollout: Rollout = field(default=Rollout)              # a sub-object, defaulted to {}
    scale: float | None = field("Scale the adapter starts with.", None, minimum=-16, maximum=16)

(`field(description, default, **OpenAPI markers, rules=(Rule(...),))`; a class's docstring is its
description, its `rules` its CEL `x-kubernetes-validations`, each with the operator's own check `ok`).
Then regenerate the CRD (`python -m kubellama_operator.crd > crds/kubellama.dev_llamaservers.yaml`,
`make chart-crds`) and read the value as `spec.rollout.strategy` in the builders.
"""

from .llamaserver import PHASES, LlamaServerSpec, LlamaServerStatus
from .model import MAX_LORAS, LoraSource, ModelSource, ProjectorSource
from .schema import Rule, SpecModel, check, field, object_schema

__all__ = ["LlamaServerSpec", "LlamaServerStatus", "PHASES", "MAX_LORAS", "ModelSource", "ProjectorSource",
           "LoraSource", "Rule", "SpecModel", "check", "field", "object_schema"]
