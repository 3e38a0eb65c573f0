{{/* The image of the three binaries. */}}
{{- define "scale-agent.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default (printf "v%s" .Chart.AppVersion) }}
{{- end }}

{{/* The labels of the operator's objects. */}}
{{- define "scale-agent.operatorLabels" -}}
app.kubernetes.io/name: scale-agent-operator
app.kubernetes.io/part-of: scale-agent
{{- end }}

{{/* The labels of the hub's objects. */}}
{{- define "scale-agent.hubLabels" -}}
app.kubernetes.io/name: scale-agent-hub
app.kubernetes.io/part-of: scale-agent
{{- end }}

{{/* The container's pull policy, when one is set. */}}
{{- define "scale-agent.pullPolicy" -}}
{{- with .Values.image.pullPolicy }}
imagePullPolicy: {{ . }}
{{- end }}
{{- end }}
