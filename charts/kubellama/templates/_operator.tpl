{{/*
Command-line arguments of kubellama-operator (see `kubellama-operator --help`).
*/}}
{{- define "kubellama.operator.args" -}}
- --log-level={{ .Values.operator.logLevel }}
- --log-format={{ .Values.operator.logFormat }}
- --metrics-port={{ .Values.operator.metricsPort }}
- --health-port={{ .Values.operator.healthPort }}
{{- if .Values.operator.watchNamespaces }}
{{- range (uniq .Values.operator.watchNamespaces) }}
- --namespace={{ . }}
{{- end }}
{{- else }}
- --all-namespaces
{{- end }}
{{- end -}}

{{/*
Environment of kubellama-operator: the default server images and the pod's identity.
*/}}
{{- define "kubellama.operator.env" -}}
- name: KUBELLAMA_SERVER_IMAGE
  value: {{ include "kubellama.image" (dict "image" .Values.serverImages.cpu "context" $) | quote }}
- name: KUBELLAMA_SERVER_CUDA_IMAGE
  value: {{ include "kubellama.image" (dict "image" .Values.serverImages.cuda "context" $) | quote }}
- name: POD_NAMESPACE
  valueFrom:
    fieldRef:
      fieldPath: metadata.namespace
- name: POD_NAME
  valueFrom:
    fieldRef:
      fieldPath: metadata.name
{{- end -}}
