{{- define "aliasip.name" -}}aliasip{{- end -}}

{{- define "aliasip.labels" -}}
app.kubernetes.io/name: aliasip
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ .Chart.Name }}-{{ .Chart.Version }}
{{- end -}}

{{- define "aliasip.image" -}}
{{ .Values.image.repository }}:{{ .Values.image.tag | default .Chart.AppVersion }}
{{- end -}}

{{- define "aliasip.validate" -}}
{{- if not (has .Values.cloud (list "gce" "fake")) -}}
{{- fail (printf "cloud must be gce or fake, not %q" .Values.cloud) -}}
{{- end -}}
{{- if and (eq .Values.cloud "fake") (not .Values.clusterCIDR) -}}
{{- fail "clusterCIDR is required with cloud=fake (use your cluster's pod subnet)" -}}
{{- end -}}
{{- end -}}
