{{/*
Labels of every alert: severity plus monitoring.prometheusRule.additionalAlertLabels.
*/}}
{{- define "kubellama.alertLabels" -}}
severity: {{ .severity }}
{{- with .extra }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{/*
runbook_url annotation when monitoring.prometheusRule.runbookBaseUrl is set.
*/}}
{{- define "kubellama.runbook" -}}
{{- if .base -}}
runbook_url: {{ printf "%s#%s" .base (lower .alert) | quote }}
{{- end }}
{{- end -}}

{{/*
Alerts on the operator's metrics (kubellama_operator_*, see
operator/kubellama_operator/metrics.py).
*/}}
{{- define "kubellama.operatorAlerts" -}}
{{- $a := .alerts -}}
{{- $extra := .extra -}}
{{- $runbook := .runbook -}}
{{- with $a.noReadyReplicas }}{{ if .enabled }}
- alert: KubellamaNoReadyReplicas
  expr: kubellama_operator_llamaserver_desired_replicas > 0 and kubellama_operator_llamaserver_ready_replicas == 0
  for: {{ .for }}
  labels:
    {{- include "kubellama.alertLabels" (dict "severity" .severity "extra" $extra) | nindent 4 }}
  annotations:
    summary: >-
      LlamaServer has no ready replica.
    description: >-
      LlamaServer {{ "{{ $labels.namespace }}/{{ $labels.llamaserver }}" }} wants replicas but none has been ready for {{ .for }}. See `kubectl -n {{ "{{ $labels.namespace }}" }} describe llama {{ "{{ $labels.llamaserver }}" }}`.
    {{- with include "kubellama.runbook" (dict "base" $runbook "alert" "KubellamaNoReadyReplicas") }}
    {{ . }}
    {{- end }}
{{- end }}{{ end }}
{{- with $a.modelDownloadFailing }}{{ if .enabled }}
- alert: KubellamaModelDownloadFailing
  expr: kubellama_operator_llamaserver_condition{condition="ModelReady", status="False", reason="DownloadFailed"} == 1
  for: {{ .for }}
  labels:
    {{- include "kubellama.alertLabels" (dict "severity" .severity "extra" $extra) | nindent 4 }}
  annotations:
    summary: >-
      LlamaServer model download is failing.
    description: >-
      The model of LlamaServer {{ "{{ $labels.namespace }}/{{ $labels.llamaserver }}" }} cannot be downloaded. `kubectl -n {{ "{{ $labels.namespace }}" }} describe llama {{ "{{ $labels.llamaserver }}" }}` shows the fetcher's message (wrong URL, missing token Secret, checksum mismatch, disk full).
    {{- with include "kubellama.runbook" (dict "base" $runbook "alert" "KubellamaModelDownloadFailing") }}
    {{ . }}
    {{- end }}
{{- end }}{{ end }}
{{- with $a.operatorDown }}{{ if .enabled }}
- alert: KubellamaOperatorDown
  expr: up{job="kubellama-operator"} == 0 or absent(up{job="kubellama-operator"})
  for: {{ .for }}
  labels:
    {{- include "kubellama.alertLabels" (dict "severity" .severity "extra" $extra) | nindent 4 }}
  annotations:
    summary: >-
      The kubellama operator is down.
    description: >-
      The kubellama operator's metrics endpoint has not answered for {{ .for }}; LlamaServers are not reconciled. Check the operator Deployment and its logs.
    {{- with include "kubellama.runbook" (dict "base" $runbook "alert" "KubellamaOperatorDown") }}
    {{ . }}
    {{- end }}
{{- end }}{{ end }}
{{- with $a.operatorErrors }}{{ if .enabled }}
- alert: KubellamaOperatorReconcileErrors
  expr: sum by (namespace, llamaserver) (rate(kubellama_operator_reconcile_errors_total[10m])) > 0
  for: {{ .for }}
  labels:
    {{- include "kubellama.alertLabels" (dict "severity" .severity "extra" $extra) | nindent 4 }}
  annotations:
    summary: >-
      The kubellama operator keeps failing to reconcile.
    description: >-
      Reconciling LlamaServer {{ "{{ $labels.namespace }}/{{ $labels.llamaserver }}" }} has failed for {{ .for }}. Check the LlamaServer's events and the operator logs.
    {{- with include "kubellama.runbook" (dict "base" $runbook "alert" "KubellamaOperatorReconcileErrors") }}
    {{ . }}
    {{- end }}
{{- end }}{{ end }}
{{- end -}}
