{{/*
The operator's RBAC rules: exactly the API calls kubellama-operator makes, as listed in
operator/kubellama_operator/rbac.py RULES (charts/tests checks the chart grants exactly
those). Namespaced resources go into a Role per watched namespace in namespaced mode.
*/}}
{{- define "kubellama.rbac.namespacedRules" -}}
# The custom resource: watched by kopf; annotations (progress) and status patched.
- apiGroups: ["kubellama.dev"]
  resources: ["llamaservers"]
  verbs: ["get", "list", "watch", "patch", "update"]
- apiGroups: ["kubellama.dev"]
  resources: ["llamaservers/status"]
  verbs: ["get", "patch", "update"]
# Children, applied server-side and deleted when no longer wanted.
- apiGroups: ["apps"]
  resources: ["statefulsets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: [""]
  resources: ["services", "configmaps"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["policy"]
  resources: ["poddisruptionbudgets"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
- apiGroups: ["monitoring.coreos.com"]
  resources: ["servicemonitors"]
  verbs: ["get", "list", "watch", "create", "patch", "update", "delete"]
# Read-only: pods for status, the Secrets and claims a LlamaServer names.
- apiGroups: [""]
  resources: ["pods"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["secrets", "persistentvolumeclaims"]
  verbs: ["get"]
# Kubernetes Events about LlamaServers.
- apiGroups: [""]
  resources: ["events"]
  verbs: ["create", "patch"]
- apiGroups: ["events.k8s.io"]
  resources: ["events"]
  verbs: ["create", "patch"]
{{- end -}}

{{/*
Cluster-scoped rules (kopf's CRD discovery and namespace listing): always a ClusterRole.
*/}}
{{- define "kubellama.rbac.clusterRules" -}}
- apiGroups: ["apiextensions.k8s.io"]
  resources: ["customresourcedefinitions"]
  verbs: ["get", "list", "watch"]
- apiGroups: [""]
  resources: ["namespaces"]
  verbs: ["get", "list", "watch"]
{{- end -}}
