{{/*
Recording and alerting rule groups of the PrometheusRule (a YAML list of groups), included by
templates/prometheusrule.yaml. Owned by the monitoring tier: docs/monitoring.md explains every
alert and its runbook; tests/monitoring/ runs `promtool check rules` / `promtool test rules` on
the rendered output and evaluates it in a real Prometheus scraping the app.
Every series is scoped to this release (namespace + Service name, which is the `job` label a
ServiceMonitor gives its targets), so two releases never record the same series.
Prometheus template braces are written {{`{{ ... }}`}} so that Helm leaves them alone.
*/}}
{{- define "ml-service.rules.selector" -}}
job="{{ include "ml-service.fullname" . }}", namespace="{{ .Release.Namespace }}"
{{- end }}

{{- define "ml-service.rules.alertLabels" -}}
{{- with .Values.prometheusRule.alertLabels }}
{{- toYaml . }}
{{- end }}
{{- end }}

{{- define "ml-service.rules" -}}
{{- $r := .Values.prometheusRule -}}
{{- $job := include "ml-service.fullname" . -}}
{{- $sel := include "ml-service.rules.selector" . -}}
{{- /* Deployment pods only (<deployment>-<pod-template-hash>-<suffix>): Kubernetes draws both
       suffixes from an alphabet without vowels, so `<release>-test...` hook pods never match. */ -}}
{{- $podRe := printf "%s-[bcdfghjklmnpqrstvwxz2456789]{1,10}-[bcdfghjklmnpqrstvwxz2456789]{5}" $job -}}
{{- $pods := printf "namespace=%q, pod=~%q, container!=\"\", container!=\"POD\"" .Release.Namespace $podRe -}}
{{- $handlers := printf "handler=~%q" $r.availability.handlers -}}
{{- /* (100 - objective) / 100 is exact in floating point for objectives like 99.5; 1 - x/100 is not */ -}}
{{- $budget := printf "((100 - %v) / 100)" $r.availability.objective -}}
{{- $d := $r.drift -}}
{{- $runbook := $r.runbookBaseUrl -}}
{{- $extra := include "ml-service.rules.alertLabels" . -}}
{{- $windows := list "5m" "1h" -}}
{{- range $i, $b := $r.availability.burnRates -}}
{{- range list "severity" "longWindow" "shortWindow" "factor" "for" -}}
{{- if not (hasKey $b .) -}}
{{- fail (printf "prometheusRule.availability.burnRates[%d] needs %s" $i .) -}}
{{- end -}}
{{- end -}}
{{- $windows = append (append $windows $b.longWindow) $b.shortWindow -}}
{{- end -}}
- name: ml-service.recording
  rules:
{{- range ($windows | uniq) }}
    - record: namespace_job:mlservice_slo_errors_per_request:ratio_rate{{ . }}
      # `or 0 * ...`: a 5xx series exists only after the first 5xx; without it the ratio would be
      # absent (not 0) while everything is fine.
      expr: |-
        (
          sum by (namespace, job) (rate(http_requests_total{ {{- $sel }}, {{ $handlers }}, status="5xx"}[{{ . }}]))
          or
          0 * sum by (namespace, job) (rate(http_requests_total{ {{- $sel }}, {{ $handlers }}}[{{ . }}]))
        )
        /
        sum by (namespace, job) (rate(http_requests_total{ {{- $sel }}, {{ $handlers }}}[{{ . }}]))
{{- end }}
    - record: namespace_job:mlservice_slo_error_budget:ratio
      expr: vector({{ $budget }})
      labels:
        namespace: {{ .Release.Namespace | quote }}
        job: {{ $job | quote }}
    - record: namespace_job_le:mlservice_request_duration_seconds_bucket:rate5m
      expr: sum by (namespace, job, le) (rate(http_request_duration_seconds_bucket{ {{- $sel }}, {{ $handlers }}}[5m]))
    - record: namespace_job:mlservice_request_duration_seconds:p95_rate5m
      expr: histogram_quantile(0.95, namespace_job_le:mlservice_request_duration_seconds_bucket:rate5m{ {{- $sel }}})
    - record: namespace_job:mlservice_predicted_rows:increase_drift_window
      expr: sum by (namespace, job) (increase(mlservice_predictions_total{ {{- $sel }}}[{{ $d.window }}]))
    - record: namespace_job_class:mlservice_prediction_share:ratio
      expr: |-
        sum by (namespace, job, class) (rate(mlservice_predictions_total{ {{- $sel }}}[{{ $d.window }}]))
        / on (namespace, job) group_left ()
        sum by (namespace, job) (rate(mlservice_predictions_total{ {{- $sel }}}[{{ $d.window }}]))
    - record: namespace_job_class:mlservice_training_class_prior:avg
      expr: avg by (namespace, job, class) (mlservice_training_class_prior{ {{- $sel }}})
    - record: namespace_job_feature:mlservice_feature_psi:max
      expr: max by (namespace, job, feature) (mlservice_feature_psi{ {{- $sel }}})
    - record: namespace_job_feature:mlservice_feature_out_of_range:ratio
      expr: |-
        sum by (namespace, job, feature) (rate(mlservice_feature_out_of_range_total{ {{- $sel }}}[{{ $d.window }}]))
        / on (namespace, job) group_left ()
        sum by (namespace, job) (rate(mlservice_predictions_total{ {{- $sel }}}[{{ $d.window }}]))
- name: ml-service.alerts
  rules:
{{- range $r.availability.burnRates }}
    - alert: MLServiceErrorBudgetBurn
      expr: |-
        namespace_job:mlservice_slo_errors_per_request:ratio_rate{{ .longWindow }}{ {{- $sel }}} > ({{ .factor }} * {{ $budget }})
        and
        namespace_job:mlservice_slo_errors_per_request:ratio_rate{{ .shortWindow }}{ {{- $sel }}} > ({{ .factor }} * {{ $budget }})
      for: {{ .for }}
      labels:
        severity: {{ .severity }}
{{- with $extra }}
        {{- . | nindent 8 }}
{{- end }}
        long_window: {{ .longWindow | quote }}
        short_window: {{ .shortWindow | quote }}
      annotations:
        summary: {{ printf "ml-service is burning its %v%% availability error budget %vx too fast (%s / %s windows)" $r.availability.objective .factor .longWindow .shortWindow | quote }}
        description: >-
          {{`{{ $labels.namespace }}/{{ $labels.job }}: {{ $value | humanizePercentage }} of inference requests answered 5xx over the last `}}{{ .longWindow }}.
        runbook: >-
          Open the ml-service dashboard (Traffic, errors and latency). 5xx with 'Pods with a model
          loaded' at 0 = model load problem (see MLServiceModelNotLoaded). Otherwise read the pod
          logs for tracebacks (`kubectl logs -l app.kubernetes.io/instance=<release>`), check
          whether a rollout just happened (roll back with Argo CD / helm rollback) and whether
          in-flight requests and latency rose at the same time (overload: scale out).
{{- if $runbook }}
        runbook_url: {{ printf "%s#mlserviceerrorbudgetburn" $runbook | quote }}
{{- end }}
{{- end }}
    - alert: MLServiceHighLatencyP95
      expr: namespace_job:mlservice_request_duration_seconds:p95_rate5m{ {{- $sel }}} > {{ $r.latency.p95Seconds }}
      for: {{ $r.latency.for }}
      labels:
        severity: warning
{{- with $extra }}
        {{- . | nindent 8 }}
{{- end }}
      annotations:
        summary: >-
          ml-service p95 inference latency is above {{ $r.latency.p95Seconds }}s
        description: >-
          {{`{{ $labels.namespace }}/{{ $labels.job }}: p95 of /predict and /invocations over 5m is {{ $value | humanizeDuration }}.`}}
        runbook: >-
          Compare request latency with 'Model inference time' on the dashboard: if inference is
          fast, requests queue (in-flight rising, CPU at its limit): add replicas or raise the CPU
          limit. If inference itself is slow, look at rows per request and at a new model
          version. NUMERIC_THREADS above the pod's CPUs makes it worse.
{{- if $runbook }}
        runbook_url: {{ printf "%s#mlservicehighlatencyp95" $runbook | quote }}
{{- end }}
    - alert: MLServiceNoReadyReplicas
      expr: |-
        kube_deployment_status_replicas_available{namespace={{ .Release.Namespace | quote }}, deployment={{ $job | quote }}} < 1
        and on (namespace, deployment)
        kube_deployment_spec_replicas{namespace={{ .Release.Namespace | quote }}, deployment={{ $job | quote }}} > 0
      for: {{ $r.noReadyReplicasFor }}
      labels:
        severity: critical
{{- with $extra }}
        {{- . | nindent 8 }}
{{- end }}
      annotations:
        summary: >-
          ml-service has no ready replica
        description: >-
          {{`Deployment {{ $labels.namespace }}/{{ $labels.deployment }} wants replicas but none is available: the service is down.`}}
        runbook: >-
          `kubectl describe deploy` and `kubectl get pods`: pods Pending (resources, quota),
          CrashLoopBackOff (see MLServicePodCrashLooping) or Running but not Ready (readiness is
          /ready = model loaded: see MLServiceModelNotLoaded).
{{- if $runbook }}
        runbook_url: {{ printf "%s#mlservicenoreadyreplicas" $runbook | quote }}
{{- end }}
    - alert: MLServiceModelNotLoaded
      expr: mlservice_model_loaded{ {{- $sel }}} == 0
      for: {{ $r.modelNotLoadedFor }}
      labels:
        severity: critical
{{- with $extra }}
        {{- . | nindent 8 }}
{{- end }}
      annotations:
        summary: >-
          An ml-service pod has no model loaded
        description: >-
          {{`Pod {{ $labels.namespace }}/{{ $labels.pod }} has been serving without a model (readiness 503) for a while.`}}
        runbook: >-
          The pod retries the load with backoff; its log says why it fails. Usual causes: the
          MLflow tracking server is unreachable (NetworkPolicy egress, DNS), credentials missing
          from the Secret named in mlflow.existingSecret, or the alias/version in model.* does not
          exist in the registry. 'Model load failures' on the dashboard counts the attempts.
{{- if $runbook }}
        runbook_url: {{ printf "%s#mlservicemodelnotloaded" $runbook | quote }}
{{- end }}
    - alert: MLServiceTargetDown
      expr: up{ {{- $sel }}} == 0
      for: {{ $r.targetDownFor }}
      labels:
        severity: warning
{{- with $extra }}
        {{- . | nindent 8 }}
{{- end }}
      annotations:
        summary: >-
          Prometheus cannot scrape an ml-service pod
        description: >-
          {{`{{ $labels.instance }} ({{ $labels.pod }}) of {{ $labels.namespace }}/{{ $labels.job }} does not answer /metrics.`}}
        runbook: >-
          Look at the target's error on the Prometheus Targets page. A pod that is alive but not
          scrapeable: NetworkPolicy not admitting the monitoring namespace, or the event loop
          blocked (latency alerts fire too). A dead pod: see restarts.
{{- if $runbook }}
        runbook_url: {{ printf "%s#mlservicetargetdown" $runbook | quote }}
{{- end }}
    - alert: MLServiceUnavailable
      expr: sum by (namespace, job) (up{ {{- $sel }}}) == 0 or absent(up{ {{- $sel }}})
      for: {{ $r.availability.for }}
      labels:
        severity: {{ $r.availability.severity }}
{{- with $extra }}
        {{- . | nindent 8 }}
{{- end }}
      annotations:
        summary: >-
          No ml-service target of {{ .Release.Namespace }}/{{ $job }} is up
        description: >-
          Prometheus has not scraped any pod of {{ $job }} for {{ $r.availability.for }}: the
          service is down or no longer scraped, and every other ml-service alert is blind.
        runbook: >-
          `kubectl -n {{ .Release.Namespace }} get pods -l app.kubernetes.io/instance={{ .Release.Name }}`.
          No pods or none running: see MLServiceNoReadyReplicas. Pods running but no target: the
          ServiceMonitor is not selected; its labels must match the Prometheus
          serviceMonitorSelector (kube-prometheus-stack wants release=<its release name>,
          serviceMonitor.labels in values) and its namespace must be in
          serviceMonitorNamespaceSelector.
{{- if $runbook }}
        runbook_url: {{ printf "%s#mlserviceunavailable" $runbook | quote }}
{{- end }}
    - alert: MLServiceMemoryGrowing
      expr: deriv(container_memory_working_set_bytes{ {{- $pods }}}[{{ $r.memoryGrowth.window }}]) * 3600 > {{ int64 $r.memoryGrowth.bytesPerHour }}
      for: {{ $r.memoryGrowth.for }}
      labels:
        severity: warning
{{- with $extra }}
        {{- . | nindent 8 }}
{{- end }}
      annotations:
        summary: >-
          ml-service memory working set keeps growing
        description: >-
          {{`{{ $labels.namespace }}/{{ $labels.pod }} working set grows by {{ $value | humanize1024 }}B per hour`}} (threshold {{ int64 $r.memoryGrowth.bytesPerHour }} B/h over {{ $r.memoryGrowth.window }}).
        runbook: >-
          A steady climb under steady traffic is a leak (the seed's was a list that kept every
          request's features). Compare with 'Process resident memory' (same curve = the Python
          process). Restart the pod to buy time, then bisect by model/app version; the drift
          statistics are fixed-size by design, so growth there is a bug.
{{- if $runbook }}
        runbook_url: {{ printf "%s#mlservicememorygrowing" $runbook | quote }}
{{- end }}
    - alert: MLServicePodRestarting
      expr: increase(kube_pod_container_status_restarts_total{ {{- $pods }}}[{{ $r.restarts.window }}]) > {{ $r.restarts.max }}
      labels:
        severity: warning
{{- with $extra }}
        {{- . | nindent 8 }}
{{- end }}
      annotations:
        summary: >-
          ml-service containers restart
        description: >-
          {{`{{ $labels.namespace }}/{{ $labels.pod }} restarted {{ $value | humanize }} times`}} in {{ $r.restarts.window }}.
        runbook: >-
          `kubectl describe pod` shows the last state: OOMKilled = raise the memory limit or look
          for a leak (MLServiceMemoryGrowing); liveness failures during start = the startup probe
          is shorter than the model load (dashboard 'Model load time').
{{- if $runbook }}
        runbook_url: {{ printf "%s#mlservicepodrestarting" $runbook | quote }}
{{- end }}
    - alert: MLServicePodCrashLooping
      expr: max_over_time(kube_pod_container_status_waiting_reason{ {{- $pods }}, reason="CrashLoopBackOff"}[5m]) >= 1
      for: {{ $r.restarts.crashLoopFor }}
      labels:
        severity: critical
{{- with $extra }}
        {{- . | nindent 8 }}
{{- end }}
      annotations:
        summary: >-
          An ml-service container is in CrashLoopBackOff
        description: >-
          {{`{{ $labels.namespace }}/{{ $labels.pod }} ({{ $labels.container }}) is crash looping.`}}
        runbook: >-
          `kubectl logs --previous` for the crash. Settings validation errors name the bad
          environment variable; a read-only root filesystem error means something writes outside
          /tmp.
{{- if $runbook }}
        runbook_url: {{ printf "%s#mlservicepodcrashlooping" $runbook | quote }}
{{- end }}
    - alert: MLServiceClassDistributionShift
      expr: |-
        abs(
          namespace_job_class:mlservice_prediction_share:ratio{ {{- $sel }}}
          - on (namespace, job, class)
          namespace_job_class:mlservice_training_class_prior:avg{ {{- $sel }}}
        ) > {{ $d.classShareDeviation }}
        and on (namespace, job)
        namespace_job:mlservice_predicted_rows:increase_drift_window{ {{- $sel }}} >= {{ $d.minRows }}
      for: {{ $d.for }}
      labels:
        severity: warning
{{- with $extra }}
        {{- . | nindent 8 }}
{{- end }}
      annotations:
        summary: >-
          Predicted class shares are far from the training priors
        description: >-
          {{`{{ $labels.namespace }}/{{ $labels.job }}: class {{ $labels.class }} share differs from its training prior by {{ $value | humanizePercentage }}`}} over {{ $d.window }}.
        runbook: >-
          Either the input population changed (check the feature drift panels and the upstream
          data source) or the model is wrong for it (a new model version just rolled out? compare
          'Serving model'). Confirm with labelled outcomes before retraining; roll back the model
          alias if a release caused it.
{{- if $runbook }}
        runbook_url: {{ printf "%s#mlserviceclassdistributionshift" $runbook | quote }}
{{- end }}
    - alert: MLServiceFeatureDrift
      expr: |-
        namespace_job_feature:mlservice_feature_psi:max{ {{- $sel }}} > {{ $d.featurePsi }}
        and on (namespace, job)
        namespace_job:mlservice_predicted_rows:increase_drift_window{ {{- $sel }}} >= {{ $d.minRows }}
      for: {{ $d.for }}
      labels:
        severity: warning
{{- with $extra }}
        {{- . | nindent 8 }}
{{- end }}
      annotations:
        summary: >-
          An input feature drifted away from its training distribution
        description: >-
          {{`{{ $labels.namespace }}/{{ $labels.job }}: PSI of {{ $labels.feature }} is {{ $value | printf "%.2f" }}`}} (threshold {{ $d.featurePsi }}).
        runbook: >-
          PSI compares the live share of rows per training quantile bin with the training share.
          Check the upstream producer of that feature (unit change, new source, broken
          pipeline); out-of-range counts on the same feature point to unit/scale changes. If the
          population truly changed, retrain on recent data and promote the new version.
{{- if $runbook }}
        runbook_url: {{ printf "%s#mlservicefeaturedrift" $runbook | quote }}
{{- end }}
    - alert: MLServiceInputsOutOfRange
      expr: |-
        namespace_job_feature:mlservice_feature_out_of_range:ratio{ {{- $sel }}} > {{ $d.outOfRangeRatio }}
        and on (namespace, job)
        namespace_job:mlservice_predicted_rows:increase_drift_window{ {{- $sel }}} >= {{ $d.minRows }}
      for: {{ $d.for }}
      labels:
        severity: warning
{{- with $extra }}
        {{- . | nindent 8 }}
{{- end }}
      annotations:
        summary: >-
          Many inputs lie outside the training range
        description: >-
          {{`{{ $labels.namespace }}/{{ $labels.job }}: {{ $value | humanizePercentage }} of rows have {{ $labels.feature }} outside its training min/max`}} over {{ $d.window }}.
        runbook: >-
          The model extrapolates on these rows. A sudden jump usually means a unit or encoding
          change upstream; a slow rise means the population moves (see MLServiceFeatureDrift).
{{- if $runbook }}
        runbook_url: {{ printf "%s#mlserviceinputsoutofrange" $runbook | quote }}
{{- end }}
{{- end -}}
