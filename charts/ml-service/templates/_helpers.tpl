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

{{/* The server's settings (non-secret only), as NAME: "value" lines; "ml-service.env" turns them
into the pods' environment. */}}
{{- define "ml-service.configData" -}}
HOST: "0.0.0.0"
PORT: "8000"
PROBE_PORT: "8081"
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
MAX_HEADER_BYTES: {{ .Values.limits.maxHeaderBytes | int64 | quote }}
REQUEST_BODY_TIMEOUT_SECONDS: {{ .Values.limits.requestBodyTimeoutSeconds | quote }}
KEEPALIVE_TIMEOUT_SECONDS: {{ .Values.limits.keepaliveTimeoutSeconds | quote }}
RESPONSE_WRITE_TIMEOUT_SECONDS: {{ .Values.limits.responseWriteTimeoutSeconds | quote }}
MAX_CONNECTIONS: {{ .Values.limits.maxConnections | int64 | quote }}
{{- with .Values.feedback }}
{{- if .existingSecret }}
PREDICTION_ID_TTL_SECONDS: {{ .tokenTtlSeconds | int64 | quote }}
FEEDBACK_MAX_ITEMS: {{ .maxItems | int64 | quote }}
FEEDBACK_DEDUPE_SECONDS: {{ .dedupeSeconds | quote }}
FEEDBACK_DEDUPE_MAX_IDS: {{ .dedupeMaxIds | int64 | quote }}
{{- end }}
{{- end }}
{{- with .Values.payloadLog }}
{{- if .uri }}
PAYLOAD_LOG_URI: {{ .uri | quote }}
PAYLOAD_LOG_SAMPLE: {{ .sample | quote }}
PAYLOAD_LOG_BATCH_ROWS: {{ .batchRows | int64 | quote }}
PAYLOAD_LOG_FLUSH_SECONDS: {{ .flushSeconds | quote }}
PAYLOAD_LOG_QUEUE_ROWS: {{ .queueRows | int64 | quote }}
{{- end }}
{{- end }}
{{- end }}

{{/* The signing key of prediction IDs, from the Secret named by feedback.existingSecret. */}}
{{- define "ml-service.feedbackEnv" -}}
{{- with .Values.feedback }}
{{- if .existingSecret }}
- name: PREDICTION_SIGNING_SECRET
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .secretKey }}
- name: PREDICTION_SIGNING_SECRET_PREVIOUS
  valueFrom:
    secretKeyRef:
      name: {{ .existingSecret }}
      key: {{ .previousSecretKey }}
      optional: true
{{- end }}
{{- end }}
{{- end }}

{{/*
The server's environment: the chart's settings as EnvVar objects (minus the names `env` sets), then
`env`. Written into the pod template itself, never read from a shared ConfigMap: a pod started for an
older ReplicaSet (the stable pods a canary abort scales back up, a rollback, a restart mid-rollout)
must run the settings it was released with, not the newest ones.
*/}}
{{- define "ml-service.env" -}}
{{- $own := dict }}
{{- range .Values.env }}{{ $_ := set $own .name true }}{{ end }}
{{- $env := list }}
{{- range $key, $value := include "ml-service.configData" . | fromYaml }}
{{- if not (hasKey $own $key) }}
{{- $env = append $env (dict "name" $key "value" (toString $value)) }}
{{- end }}
{{- end }}
{{- toYaml (concat $env .Values.env) }}
{{- end }}
