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
  expr: label_replace(kubellama_operator_llamaserver_replicas > 0 and kubellama_operator_llamaserver_ready_replicas == 0, "llamaserver", "$1", "name", "(.+)")
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
  expr: label_replace(kubellama_operator_llamaserver_condition{condition="ModelReady", status="False", reason!~"Downloading|NoPods|ScaledToZero"} == 1, "llamaserver", "$1", "name", "(.+)")
  for: {{ .for }}
  labels:
    {{- include "kubellama.alertLabels" (dict "severity" .severity "extra" $extra) | nindent 4 }}
  annotations:
    summary: >-
      LlamaServer model download is failing.
    description: >-
      The model of LlamaServer {{ "{{ $labels.namespace }}/{{ $labels.llamaserver }}" }} cannot be downloaded ({{ "{{ $labels.reason }}" }}). `kubectl -n {{ "{{ $labels.namespace }}" }} describe llama {{ "{{ $labels.llamaserver }}" }}` shows the fetcher's message (wrong URL, missing token Secret, checksum mismatch, disk full).
    {{- with include "kubellama.runbook" (dict "base" $runbook "alert" "KubellamaModelDownloadFailing") }}
    {{ . }}
    {{- end }}
{{- end }}{{ end }}
{{- with $a.llamaServerFailed }}{{ if .enabled }}
- alert: KubellamaLlamaServerFailed
  expr: label_replace(kubellama_operator_llamaserver_phase{phase="Failed"} == 1, "llamaserver", "$1", "name", "(.+)")
  for: {{ .for }}
  labels:
    {{- include "kubellama.alertLabels" (dict "severity" .severity "extra" $extra) | nindent 4 }}
  annotations:
    summary: >-
      LlamaServer is Failed.
    description: >-
      LlamaServer {{ "{{ $labels.namespace }}/{{ $labels.llamaserver }}" }} has been in phase Failed for {{ .for }}: the operator cannot honour its spec (missing Secret or claim, bad model source). `kubectl -n {{ "{{ $labels.namespace }}" }} describe llama {{ "{{ $labels.llamaserver }}" }}` says what to fix.
    {{- with include "kubellama.runbook" (dict "base" $runbook "alert" "KubellamaLlamaServerFailed") }}
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
  expr: sum by (reason) (rate(kubellama_operator_reconcile_errors_total[10m])) > 0
  for: {{ .for }}
  labels:
    {{- include "kubellama.alertLabels" (dict "severity" .severity "extra" $extra) | nindent 4 }}
  annotations:
    summary: >-
      The kubellama operator keeps failing to reconcile.
    description: >-
      Reconciles have been failing ({{ "{{ $labels.reason }}" }}) for {{ .for }}. Check the operator logs and `kubectl get events --field-selector reason=Failed`.
    {{- with include "kubellama.runbook" (dict "base" $runbook "alert" "KubellamaOperatorReconcileErrors") }}
    {{ . }}
    {{- end }}
{{- end }}{{ end }}
{{- end -}}
