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
- --prometheus-namespace-selector={{ include "kubellama.matchLabelsText" .Values.networkPolicy.prometheus.namespaceSelector }}
- --prometheus-pod-selector={{ include "kubellama.matchLabelsText" .Values.networkPolicy.prometheus.podSelector }}
- --operator-pod-selector={{ include "kubellama.matchLabelsText" (include "kubellama.operator.selectorLabels" . | fromYaml) }}
{{- with $op.huggingFaceEndpoint }}
- --hf-endpoint={{ . }}
{{- end }}
{{- range $op.allowedImages }}
- --allowed-image={{ . }}
{{- end }}
{{- range $op.allowedServiceAccounts }}
- --allowed-service-account={{ . }}
{{- end }}
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

{{/*
A map of labels as kubellama-operator's selector flags take it: k=v,k2=v2 (sorted by key).
*/}}
{{- define "kubellama.matchLabelsText" -}}
{{- $parts := list -}}
{{- range $k, $v := . -}}
{{- $parts = append $parts (printf "%s=%s" $k $v) -}}
{{- end -}}
{{- join "," $parts -}}
{{- end -}}
