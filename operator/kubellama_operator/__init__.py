"""kubellama operator: reconciles `LlamaServer` resources into llama.cpp-compatible servers.

Module map: `crd` (the CRD, single source of truth for schema and defaults), `spec`
(defaulting and runtime checks), `serverargs` (server flags), `builders/` (pure manifest
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
