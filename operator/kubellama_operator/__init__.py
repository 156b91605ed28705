"""kubellama operator: reconciles `LlamaServer` resources into llama.cpp-compatible servers.

Module map: `api/` (the typed `LlamaServerSpec`: single source of truth for the CRD's schema, defaults
and CEL rules, and what the builders receive), `crd` (renders the CRD from it), `spec` (defaulting,
parsing and checks; where the model's files come from and go), `serverargs` (server flags), `builders/` (pure manifest
builders), `diff` (skip no-op writes), `status` (phase and conditions), `kube` (small async API
client), `reconcile` (one reconcile pass), `handlers` (thin kopf handlers), `config` and `cli`
(settings, flags), `rbac`, `metrics`, `health`.
"""

GROUP = "kubellama.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
KIND = "LlamaServer"
PLURAL = "llamaservers"
SINGULAR = "llamaserver"
SHORT_NAMES = ["llama"]
CRD_NAME = f"{PLURAL}.{GROUP}"

#: Field manager for server-side apply and the "managed-by" label value.
FIELD_MANAGER = "kubellama-operator"

__version__ = "0.1.0"
