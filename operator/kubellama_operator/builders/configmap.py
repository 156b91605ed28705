"""ConfigMap holding the system prompt file (`-spf`, JSON `{"prompt": ...}`), only when spec.server.systemPrompt is set."""

from __future__ import annotations

import json
from typing import Any

from ..spec import SYSTEM_PROMPT_FILE, Spec
from .meta import Body, config_name, object_meta


def wants_configmap(spec: Spec) -> bool:
    return bool(spec.get("server", {}).get("systemPrompt"))


def build_configmap(owner: Body, spec: Spec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(owner, config_name(owner["metadata"]["name"])),
        "data": {SYSTEM_PROMPT_FILE: json.dumps({"prompt": spec["server"]["systemPrompt"]}, ensure_ascii=False)},
    }
