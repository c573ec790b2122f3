{{/* Release name: the tracking server's Service name (`mlflow` in every environment's trackingUri). */}}
{{- define "mlflow-platform.fullname" -}}
{{- .Release.Name | trunc 52 | trimSuffix "-" }}
{{- end }}

{{- define "mlflow-platform.postgresqlName" -}}
{{- printf "%s-postgresql" (include "mlflow-platform.fullname" .) }}
{{- end }}

{{- define "mlflow-platform.minioName" -}}
{{- printf "%s-minio" (include "mlflow-platform.fullname" .) }}
{{- end }}

{{- define "mlflow-platform.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* Selector labels of one component: (dict "ctx" $ "component" "server") */}}
{{- define "mlflow-platform.selectorLabels" -}}
app.kubernetes.io/name: mlflow-platform
app.kubernetes.io/instance: {{ .ctx.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "mlflow-platform.labels" -}}
helm.sh/chart: {{ include "mlflow-platform.chart" .ctx }}
{{ include "mlflow-platform.selectorLabels" . }}
app.kubernetes.io/version: {{ .ctx.Chart.AppVersion | quote }}
app.kubernetes.io/part-of: ml-service
app.kubernetes.io/managed-by: {{ .ctx.Release.Service }}
{{- end }}

{{/* repository:tag[@digest] of an image block: (dict "image" .Values.x.image "default" "tag") */}}
{{- define "mlflow-platform.image" -}}
{{- $ref := printf "%s:%s" .image.repository (.image.tag | default .default | toString) }}
{{- if .image.digest }}{{ $ref = printf "%s@%s" $ref .image.digest }}{{ end }}
{{- $ref }}
{{- end }}

{{- define "mlflow-platform.dbHost" -}}
{{- if .Values.postgresql.enabled }}{{ include "mlflow-platform.postgresqlName" . }}{{ else }}{{ .Values.postgresql.host }}{{ end }}
{{- end }}

{{/* No password in the URI: libpq reads PGPASSWORD from the Secret. */}}
{{- define "mlflow-platform.backendStoreUri" -}}
{{- printf "postgresql://%s@%s:%d/%s" .Values.postgresql.username (include "mlflow-platform.dbHost" .) (int .Values.postgresql.port) .Values.postgresql.database }}
{{- end }}

{{- define "mlflow-platform.s3Endpoint" -}}
{{- if .Values.s3.minio }}{{ printf "http://%s:9000" (include "mlflow-platform.minioName" .) }}{{ else }}{{ .Values.s3.endpoint }}{{ end }}
{{- end }}

{{- define "mlflow-platform.artifactRoot" -}}
{{- printf "s3://%s/%s" .Values.s3.bucket .Values.mlflow.artifactsPrefix | trimSuffix "/" }}
{{- end }}

{{/* The Host headers MLflow accepts (fnmatch patterns): the Service's DNS names, loopback
(`kubectl port-forward`) and the exposed public names, with any port. */}}
{{- define "mlflow-platform.allowedHosts" -}}
{{- $svc := include "mlflow-platform.fullname" . }}
{{- $hosts := list }}
{{- range concat (list "localhost" "127.0.0.1" $svc (printf "%s.%s" $svc .Release.Namespace) (printf "%s.%s.svc" $svc .Release.Namespace) (printf "%s.%s.svc.cluster.local" $svc .Release.Namespace)) .Values.expose.hosts }}
{{- $hosts = append $hosts . }}
{{- $hosts = append $hosts (printf "%s:*" .) }}
{{- end }}
{{- concat $hosts .Values.mlflow.allowedHosts | join "," }}
{{- end }}

{{/* Environment every MLflow container gets: database and S3 access, secrets by reference only. */}}
{{- define "mlflow-platform.storeEnv" -}}
- name: MLFLOW_BACKEND_STORE_URI
  value: {{ include "mlflow-platform.backendStoreUri" . | quote }}
- name: PGPASSWORD
  valueFrom:
    secretKeyRef:
      name: {{ .Values.postgresql.existingSecret }}
      key: PGPASSWORD
- name: AWS_ACCESS_KEY_ID
  valueFrom:
    secretKeyRef:
      name: {{ .Values.s3.existingSecret }}
      key: AWS_ACCESS_KEY_ID
- name: AWS_SECRET_ACCESS_KEY
  valueFrom:
    secretKeyRef:
      name: {{ .Values.s3.existingSecret }}
      key: AWS_SECRET_ACCESS_KEY
- name: AWS_DEFAULT_REGION
  value: {{ .Values.s3.region | quote }}
{{- with include "mlflow-platform.s3Endpoint" . }}
- name: MLFLOW_S3_ENDPOINT_URL
  value: {{ . | quote }}
{{- end }}
- name: MLFLOW_DISABLE_TELEMETRY
  value: "true"
- name: DO_NOT_TRACK
  value: "true"
- name: HOME
  value: /tmp
{{- end }}

{{/* Cross-field rules the JSON schema cannot express; each message names the keys to fix. */}}
{{- define "mlflow-platform.validate" -}}
{{- if and (not .Values.postgresql.enabled) (not .Values.postgresql.host) }}
{{- fail "postgresql.host is required when postgresql.enabled is false (the external database)" }}
{{- end }}
{{- if and .Values.postgresql.enabled .Values.postgresql.host }}
{{- fail "postgresql.host is only for an external database: unset it or set postgresql.enabled=false" }}
{{- end }}
{{- if and .Values.s3.minio .Values.s3.endpoint }}
{{- fail "s3.endpoint is only for an external S3 store: unset it or set s3.minio=false" }}
{{- end }}
{{- $expose := .Values.expose }}
{{- if and (or $expose.ingress.enabled $expose.httpRoute.enabled) (not $expose.hosts) }}
{{- fail "expose.hosts is required with expose.ingress.enabled or expose.httpRoute.enabled (the public names they route)" }}
{{- end }}
{{- if and $expose.httpRoute.enabled (not $expose.httpRoute.parentRefs) }}
{{- fail "expose.httpRoute.parentRefs is required with expose.httpRoute.enabled (the Gateway to attach to)" }}
{{- end }}
{{- if and $expose.httpRoute.enabled (not $expose.httpRoute.gatewayNamespace) }}
{{- fail "expose.httpRoute.gatewayNamespace is required with expose.httpRoute.enabled (where the gateway's traffic comes from, for the NetworkPolicy)" }}
{{- end }}
{{- if and (ne $expose.service.type "ClusterIP") (not $expose.service.sourceRanges) }}
{{- fail (printf "expose.service.sourceRanges is required with expose.service.type=%s (the client CIDRs admitted from outside the cluster; 0.0.0.0/0 for anyone)" $expose.service.type) }}
{{- end }}
{{- if and $expose.service.nodePort (eq $expose.service.type "ClusterIP") }}
{{- fail "expose.service.nodePort needs expose.service.type NodePort or LoadBalancer" }}
{{- end }}
{{- end }}
