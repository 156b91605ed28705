{{/*
Expand the name of the chart.
*/}}
{{- define "kubellama.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Create a default fully qualified app name (at most 63 characters, the DNS label limit).
If the release name contains the chart name it is used as the full name.
*/}}
{{- define "kubellama.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{/*
Name of the operator's objects (Deployment, Service, RBAC).
*/}}
{{- define "kubellama.operator.fullname" -}}
{{- printf "%s-operator" (include "kubellama.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Create chart name and version as used by the chart label.
*/}}
{{- define "kubellama.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Namespace of the namespaced objects.
*/}}
{{- define "kubellama.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/*
Common labels.
*/}}
{{- define "kubellama.labels" -}}
helm.sh/chart: {{ include "kubellama.chart" . }}
{{ include "kubellama.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: kubellama
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
Selector labels.
*/}}
{{- define "kubellama.selectorLabels" -}}
app.kubernetes.io/name: {{ include "kubellama.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{/*
Operator labels and selector labels.
*/}}
{{- define "kubellama.operator.labels" -}}
{{ include "kubellama.labels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{- define "kubellama.operator.selectorLabels" -}}
{{ include "kubellama.selectorLabels" . }}
app.kubernetes.io/component: operator
{{- end -}}

{{/*
Name of the operator's ServiceAccount.
*/}}
{{- define "kubellama.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "kubellama.operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false: name an existing ServiceAccount" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{/*
An image reference from {repository, tag, digest}; the tag defaults to the appVersion.
Usage: include "kubellama.image" (dict "image" .Values.operator.image "context" $)
*/}}
{{- define "kubellama.image" -}}
{{- $tag := default .context.Chart.AppVersion .image.tag -}}
{{- if .image.digest -}}
{{- printf "%s@%s" .image.repository .image.digest -}}
{{- else -}}
{{- printf "%s:%s" .image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/*
Whether the cluster serves a Prometheus Operator kind (or monitoring.assumeCRDs is set).
Usage: include "kubellama.monitoring.has" (dict "kind" "PodMonitor" "context" $)
Returns "true" or "".
*/}}
{{- define "kubellama.monitoring.has" -}}
{{- $v := .context.Values.monitoring -}}
{{- if and $v.enabled (or $v.assumeCRDs (.context.Capabilities.APIVersions.Has (printf "monitoring.coreos.com/v1/%s" .kind))) -}}
true
{{- end -}}
{{- end -}}

{{/*
Namespaces the operator watches, as a comma-separated list ("" = all).
*/}}
{{- define "kubellama.watchNamespaces" -}}
{{- join "," (uniq .Values.operator.watchNamespaces) -}}
{{- end -}}

{{/*
Relabelings for LlamaServer pod targets: adds `llamaserver` (the resource's name),
`namespace`, `pod` and `model` (from the pod annotation or label `kubellama.dev/model`).
*/}}
{{- define "kubellama.serverRelabelings" -}}
- action: replace
  sourceLabels: [__meta_kubernetes_pod_label_kubellama_dev_llamaserver]
  targetLabel: llamaserver
- action: replace
  sourceLabels: [__meta_kubernetes_namespace]
  targetLabel: namespace
- action: replace
  sourceLabels: [__meta_kubernetes_pod_name]
  targetLabel: pod
- action: replace
  sourceLabels: [__meta_kubernetes_pod_label_kubellama_dev_model]
  regex: (.+)
  targetLabel: model
- action: replace
  sourceLabels: [__meta_kubernetes_pod_annotation_kubellama_dev_model]
  regex: (.+)
  targetLabel: model
{{- end -}}
