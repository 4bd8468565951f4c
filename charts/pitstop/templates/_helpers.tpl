{{/* Labels on every object: those of manifests/ plus Helm's. */}}
{{- define "pitstop.labels" -}}
app.kubernetes.io/name: pitstop
app.kubernetes.io/part-of: pitstop
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- end }}

{{/* The operator's Pods, as manifests/ selects them (the Deployment's selector is
immutable, so it stays what kustomize installs). */}}
{{- define "pitstop.selectorLabels" -}}
app.kubernetes.io/name: pitstop
app.kubernetes.io/component: operator
{{- end }}

{{- define "pitstop.image" -}}
{{- if .Values.image.digest -}}
{{ .Values.image.repository }}@{{ .Values.image.digest }}
{{- else -}}
{{ .Values.image.repository }}:{{ .Values.image.tag }}
{{- end -}}
{{- end }}
