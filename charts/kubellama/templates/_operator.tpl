{{/*
Command-line arguments of kubellama-operator (see `kubellama-operator --help`).
*/}}
{{- define "kubellama.operator.args" -}}
{{- $op := .Values.operator -}}
- --log-level={{ upper $op.logLevel }}
- --log-format={{ $op.logFormat }}
- --server-log-format={{ $op.serverLogFormat }}
- --metrics-port={{ $op.metricsPort }}
- --health-port={{ $op.healthPort }}
- --resync-seconds={{ $op.resyncSeconds }}
- --cpu-image={{ include "kubellama.image" (dict "image" .Values.serverImages.cpu "context" $) }}
- --cuda-image={{ include "kubellama.image" (dict "image" .Values.serverImages.cuda "context" $) }}
- --image-pull-policy={{ .Values.serverImages.pullPolicy }}
{{- if $op.watchNamespaces }}
{{- range (uniq $op.watchNamespaces) }}
- --namespace={{ . }}
{{- end }}
{{- else }}
- --all-namespaces
{{- end }}
{{- end -}}

{{/*
Environment of kubellama-operator: the pod's identity.
*/}}
{{- define "kubellama.operator.env" -}}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end -}}
