{{- /* The chart's name, or nameOverride: app.kubernetes.io/name and the base of every name. */}}
{{- define "sluice.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sluice.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := include "sluice.name" . -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- /* Where the chart's namespaced objects go: the release's namespace, or namespaceOverride. */}}
{{- define "sluice.namespace" -}}
{{- default .Release.Namespace .Values.namespaceOverride -}}
{{- end -}}

{{- define "sluice.labels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "sluice.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sluice.serviceAccountName" -}}
{{- default (include "sluice.fullname" .) .Values.serviceAccount.name -}}
{{- end -}}

{{- /*
The dashboard's names and labels. Its pods carry a name of their own, not only a component: every
selector of the controller's (its Deployment's, immutable, the metrics Service's, the
PodDisruptionBudget's and the NetworkPolicy's) is the name and instance alone, so a component label
added to the controller's name would still be selected by all of them.
*/}}
{{- define "sluice.dashboard.fullname" -}}
{{- printf "%s-dashboard" (include "sluice.fullname" .) | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sluice.dashboard.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sluice.name" . }}-dashboard
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: dashboard
{{- end -}}

{{- define "sluice.dashboard.labels" -}}
{{ include "sluice.dashboard.selectorLabels" . }}
app.kubernetes.io/part-of: {{ include "sluice.name" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version }}
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- /*
An image reference, for the operator's image and the dashboard's: registry/repository (the
repository alone when registry is empty), then @digest when a digest is set, else :tag, the tag
defaulting to the chart's appVersion. Called with (dict "image" .Values.image "context" $).
*/}}
{{- define "sluice.image" -}}
{{- $image := .image -}}
{{- $reference := $image.repository -}}
{{- with $image.registry -}}
{{- $reference = printf "%s/%s" (trimSuffix "/" .) $reference -}}
{{- end -}}
{{- if $image.digest -}}
{{- printf "%s@%s" $reference $image.digest -}}
{{- else -}}
{{- printf "%s:%s" $reference (default .context.Chart.AppVersion $image.tag) -}}
{{- end -}}
{{- end -}}

{{- /*
TopologySpreadConstraints, each without a labelSelector given the selector labels of its own
Deployment's pods. Called with (dict "constraints" LIST "selectorLabels" TEXT).
*/}}
{{- define "sluice.topologySpreadConstraints" -}}
{{- range .constraints }}
- {{ toYaml . | nindent 2 | trim }}
  {{- if not .labelSelector }}
  labelSelector:
    matchLabels:
      {{- $.selectorLabels | nindent 6 }}
  {{- end }}
{{- end }}
{{- end -}}
