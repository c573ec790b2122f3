{{/*
Values checks that JSON Schema (values.schema.json) cannot express: combinations of keys. Each
message names the keys to fix. Rendered by templates/validate.yaml, so `helm install` fails early.
*/}}
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
{{- if eq .Values.delivery.strategy "canary" }}
{{- $a := .Values.delivery.canary.analysis }}
{{- if not .Values.serviceMonitor.enabled }}
{{- fail "delivery.strategy=canary compares the canary's pods with the stable ones in Prometheus: set serviceMonitor.enabled=true (its relabeling gives every series its pod's revision)" }}
{{- end }}
{{- if lt (include "ml-service.durationSeconds" $a.window | float64) (mulf 2 (include "ml-service.durationSeconds" .Values.serviceMonitor.interval | float64)) }}
{{- fail (printf "delivery.canary.analysis.window (%s) must span at least two scrapes (serviceMonitor.interval %s): a rate needs two samples" $a.window .Values.serviceMonitor.interval) }}
{{- end }}
{{- $last := 0 }}
{{- range .Values.delivery.canary.weights }}
{{- if le (int .) $last }}
{{- fail (printf "delivery.canary.weights must rise step by step (%v)" $.Values.delivery.canary.weights) }}
{{- end }}
{{- $last = int . }}
{{- end }}
{{- end }}
{{- if and .Values.payloadLog.uri (not .Values.feedback.existingSecret) }}
{{- fail "payloadLog.uri needs feedback.existingSecret: the payload log records prediction IDs (to join the rows with their labels), and they are signed with that Secret's key" }}
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
