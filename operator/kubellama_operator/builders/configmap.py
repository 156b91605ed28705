"""ConfigMap holding the system prompt file (`-spf`, JSON `{"prompt": ...}`), only when spec.server.systemPrompt is set."""

from __future__ import annotations

import json
from typing import Any

from ..api import LlamaServerSpec
from ..spec import SYSTEM_PROMPT_FILE
from .meta import Body, config_name, object_meta


def wants_configmap(spec: LlamaServerSpec) -> bool:
    return bool(spec.server.system_prompt)


def build_configmap(owner: Body, spec: LlamaServerSpec) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": object_meta(owner, config_name(owner["metadata"]["name"])),
        "data": {SYSTEM_PROMPT_FILE: json.dumps({"prompt": spec.server.system_prompt}, ensure_ascii=False)},
    }
