{{/*
The operator's RBAC rules: exactly the API calls kubellama-operator makes
(operator/kubellama_operator/rbac.py RULES; charts/tests checks the two agree).
Namespaced rules go into a Role per watched namespace in namespaced mode.
*/}}
{{- define "kubellama.rbac.namespacedRules" -}}
- apiGroups: ["kubellama.dev"]
  resources: ["llamaservers"]
  verbs: ["get", "list", "watch", "patch"]
{{- end -}}

{{/*
Cluster-scoped rules: always in a ClusterRole.
*/}}
{{- define "kubellama.rbac.clusterRules" -}}
{{- end -}}
