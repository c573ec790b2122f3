{{/* Chart name, at most 63 characters. */}}
{{- define "ml-service.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Full name, at most 63 characters (a DNS label). Objects with a suffix use
"ml-service.suffixed" so the suffix survives truncation.
*/}}
{{- define "ml-service.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* "<fullname>-<suffix>" within 63 characters: (dict "ctx" $ "suffix" "test") */}}
{{- define "ml-service.suffixed" -}}
{{- $max := sub 62 (len .suffix) | int }}
{{- printf "%s-%s" (include "ml-service.fullname" .ctx | trunc $max | trimSuffix "-") .suffix }}
{{- end }}

{{- define "ml-service.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels: never change them between chart versions (Deployment selectors are immutable). */}}
{{- define "ml-service.selectorLabels" -}}
app.kubernetes.io/name: {{ include "ml-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/component: server
{{- end }}

{{/* Labels of every object, without the component (the helm test pod is another component). */}}
{{- define "ml-service.commonLabels" -}}
helm.sh/chart: {{ include "ml-service.chart" . }}
app.kubernetes.io/name: {{ include "ml-service.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ include "ml-service.imageTag" . | trunc 63 | trimSuffix "-" | quote }}
app.kubernetes.io/part-of: ml-service
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{- define "ml-service.labels" -}}
{{ include "ml-service.commonLabels" . }}
app.kubernetes.io/component: server
{{- end }}

{{- define "ml-service.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "ml-service.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "ml-service.imageTag" -}}
{{- .Values.image.tag | default .Chart.AppVersion | toString }}
{{- end }}

{{/* repository:tag, or repository:tag@digest when a digest pins the image. */}}
{{- define "ml-service.image" -}}
{{- $ref := printf "%s:%s" .Values.image.repository (include "ml-service.imageTag" .) }}
{{- if .Values.image.digest }}
{{- $ref = printf "%s@%s" $ref .Values.image.digest }}
{{- end }}
{{- $ref }}
{{- end }}

{{/* The model mode (values.yaml, `model`, states the rule): "uri", "registry" or "image". */}}
{{- define "ml-service.modelMode" -}}
{{- if .Values.model.uri }}uri{{ else if .Values.mlflow.trackingUri }}registry{{ else }}image{{ end }}
{{- end }}

{{/* MODEL_URI the chart sets: model.uri, or models:/<name>/<version>, or models:/<name>@<alias>;
empty in image mode, where the image's own MODEL_URI applies. */}}
{{- define "ml-service.modelUri" -}}
{{- $m := .Values.model }}
{{- $mode := include "ml-service.modelMode" . }}
{{- if eq $mode "uri" }}
{{- $m.uri }}
{{- else if and (eq $mode "registry") (toString $m.version) }}
{{- printf "models:/%s/%s" $m.name (toString $m.version) }}
{{- else if eq $mode "registry" }}
{{- printf "models:/%s@%s" $m.name $m.alias }}
{{- end }}
{{- end }}

{{/* A URI without its userinfo (https://user:token@host/ -> https://host/), for NOTES. */}}
{{- define "ml-service.redactUri" -}}
{{- regexReplaceAll "^([A-Za-z][A-Za-z0-9+.-]*://)[^/@]*@" . "${1}" }}
{{- end }}

{{/* Cross-field rules the JSON schema cannot express; each message names the keys to fix. */}}
{{- define "ml-service.validate" -}}
{{- $m := .Values.model }}
{{- $version := toString $m.version }}
{{- $mode := include "ml-service.modelMode" . }}
{{- if eq $mode "uri" }}
{{- if or $version $m.alias }}
{{- fail (printf "model.uri (%s) names the model to serve, so model.%s would be ignored: unset model.%s, or unset model.uri to serve from the registry" $m.uri (ternary "version" "alias" (ne $version "")) (ternary "version" "alias" (ne $version ""))) }}
{{- end }}
{{- if and (hasPrefix "models:/" $m.uri) (not .Values.mlflow.trackingUri) }}
{{- fail "model.uri is a registry URI (models:/...), so mlflow.trackingUri must be set" }}
{{- end }}
{{- else if eq $mode "registry" }}
{{- if and $version $m.alias }}
{{- fail (printf "model.version (%s) and model.alias (%s) are both set: the registry serves one of them; unset one" $version $m.alias) }}
{{- end }}
{{- if not (or $version $m.alias) }}
{{- fail "mlflow.trackingUri is set, so the model comes from the registry: set model.version (an exact version) or model.alias (e.g. champion); or unset mlflow.trackingUri to serve the model baked into the image" }}
{{- end }}
{{- else if or $version $m.alias }}
{{- fail (printf "model.%s selects a registry model but mlflow.trackingUri is empty: set mlflow.trackingUri, or unset model.%s to serve the model baked into the image" (ternary "version" "alias" (ne $version "")) (ternary "version" "alias" (ne $version ""))) }}
{{- end }}
{{- if and (eq (toString .Values.updateStrategy.maxSurge) "0") (eq (toString .Values.updateStrategy.maxUnavailable) "0") }}
{{- fail "updateStrategy.maxSurge and updateStrategy.maxUnavailable are both 0: a rollout could never replace a pod; allow one of them" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (lt (int .Values.autoscaling.maxReplicas) (int .Values.autoscaling.minReplicas)) }}
{{- fail "autoscaling.maxReplicas must be >= autoscaling.minReplicas" }}
{{- end }}
{{- if and .Values.autoscaling.enabled (not .Values.autoscaling.targetCPUUtilizationPercentage) (not .Values.autoscaling.targetMemoryUtilizationPercentage) (not .Values.autoscaling.customMetrics) }}
{{- fail "autoscaling.enabled needs at least one metric: targetCPUUtilizationPercentage, targetMemoryUtilizationPercentage or customMetrics" }}
{{- end }}
{{- if and .Values.serviceMonitor.enabled (gt (include "ml-service.durationSeconds" .Values.serviceMonitor.scrapeTimeout | float64) (include "ml-service.durationSeconds" .Values.serviceMonitor.interval | float64)) }}
{{- fail "serviceMonitor.scrapeTimeout must not exceed serviceMonitor.interval" }}
{{- end }}
{{- range .Values.env }}
{{- if has .name (list "HOST" "PORT") }}
{{- fail (printf "env: %s is set by the chart (the probes and the Service depend on it)" .name) }}
{{- end }}
{{- end }}
{{- end }}

{{/* "30s" / "1m" / "500ms" -> seconds, for comparisons. */}}
{{- define "ml-service.durationSeconds" -}}
{{- $d := toString . }}
{{- if hasSuffix "ms" $d }}{{ divf (trimSuffix "ms" $d | float64) 1000 }}
{{- else if hasSuffix "s" $d }}{{ trimSuffix "s" $d | float64 }}
{{- else if hasSuffix "m" $d }}{{ mulf (trimSuffix "m" $d | float64) 60 }}
{{- else if hasSuffix "h" $d }}{{ mulf (trimSuffix "h" $d | float64) 3600 }}
{{- else }}{{ fail (printf "not a duration: %s" $d) }}
{{- end }}
{{- end }}

{{/* Environment handed to the server through the ConfigMap (non-secret settings only). */}}
{{- define "ml-service.configData" -}}
HOST: "0.0.0.0"
PORT: "8000"
{{- with include "ml-service.modelUri" . }}
MODEL_URI: {{ . | quote }}
{{- end }}
{{- if eq (include "ml-service.modelMode" .) "uri" }}
# Labels of a model.uri model: the image's own (its demo model's) must not stick to it.
MODEL_NAME: {{ .Values.model.name | quote }}
MODEL_VERSION: ""
{{- end }}
{{- with .Values.mlflow.trackingUri }}
MLFLOW_TRACKING_URI: {{ . | quote }}
{{- end }}
LOG_LEVEL: {{ .Values.logLevel | quote }}
SHUTDOWN_DRAIN_SECONDS: {{ .Values.shutdown.drainSeconds | quote }}
SHUTDOWN_GRACE_SECONDS: {{ .Values.shutdown.graceSeconds | quote }}
MAX_REQUEST_BYTES: {{ .Values.limits.maxRequestBytes | int64 | quote }}
MAX_BATCH_ROWS: {{ .Values.limits.maxBatchRows | int64 | quote }}
REQUEST_HEADER_TIMEOUT_SECONDS: {{ .Values.limits.requestHeaderTimeoutSeconds | quote }}
REQUEST_BODY_TIMEOUT_SECONDS: {{ .Values.limits.requestBodyTimeoutSeconds | quote }}
KEEPALIVE_TIMEOUT_SECONDS: {{ .Values.limits.keepaliveTimeoutSeconds | quote }}
MAX_CONNECTIONS: {{ .Values.limits.maxConnections | int64 | quote }}
{{- end }}
