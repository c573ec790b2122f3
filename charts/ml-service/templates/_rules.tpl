{{/*
Recording and alerting rule groups of the PrometheusRule (a YAML list of groups), included by
templates/prometheusrule.yaml. docs/monitoring.md holds every alert's runbook (the one place
runbooks live: alerts point to it); tests/monitoring/ runs `promtool check rules` / `promtool test rules` on
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

{{- define "ml-service.rules.labels" -}}
{{- /* (list severity extraLabels): the labels every alert carries */ -}}
severity: {{ index . 0 }}
{{- with index . 1 }}
{{ . }}
{{- end }}
{{- end }}

{{- define "ml-service.rules.runbook" -}}
{{- /* (list anchor baseUrl): runbooks live in docs/monitoring.md only; alerts point there */ -}}
runbook: {{ printf "docs/monitoring.md#%s" (index . 0) | quote }}
{{- with index . 1 }}
runbook_url: {{ printf "%s#%s" . (index $ 0) | quote }}
{{- end }}
{{- end }}

{{- /* Requests refused by admission control (503 before the app saw them) in window [2] per
       namespace and job, 0 where none are counted yet: (list selector handlers window). */ -}}
{{- define "ml-service.rules.refused" -}}
{{- $sel := index . 0 -}}
{{- $handlers := index . 1 -}}
{{- $w := index . 2 -}}
(
  sum by (namespace, job) (rate(mlservice_requests_shed_total{ {{- $sel }}, reason="concurrency_limit"}[{{ $w }}]))
  or
  0 * sum by (namespace, job) (rate(http_requests_total{ {{- $sel }}, {{ $handlers }}}[{{ $w }}]))
)
{{- end -}}

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
      # Errors are the 5xx answers plus the requests admission control refused with 503 before
      # the app saw them (not in http_requests_total): a shedding pod fails its users too.
      # `or 0 * ...`: a 5xx series exists only after the first 5xx; without it the ratio would be
      # absent (not 0) while everything is fine.
      expr: |-
        (
          (
            sum by (namespace, job) (rate(http_requests_total{ {{- $sel }}, {{ $handlers }}, status="5xx"}[{{ . }}]))
            or
            0 * sum by (namespace, job) (rate(http_requests_total{ {{- $sel }}, {{ $handlers }}}[{{ . }}]))
          )
          +
          {{ include "ml-service.rules.refused" (list $sel $handlers .) | nindent 10 | trim }}
        )
        /
        (
          sum by (namespace, job) (rate(http_requests_total{ {{- $sel }}, {{ $handlers }}}[{{ . }}]))
          +
          {{ include "ml-service.rules.refused" (list $sel $handlers .) | nindent 10 | trim }}
        )
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
        {{- include "ml-service.rules.labels" (list .severity $extra) | nindent 8 }}
        long_window: {{ .longWindow | quote }}
        short_window: {{ .shortWindow | quote }}
      annotations:
        summary: {{ printf "ml-service is burning its %v%% availability error budget %vx too fast (%s / %s windows)" $r.availability.objective .factor .longWindow .shortWindow | quote }}
        description: >-
          {{`{{ $labels.namespace }}/{{ $labels.job }}: {{ $value | humanizePercentage }} of inference requests answered 5xx over the last `}}{{ .longWindow }}.
        {{- include "ml-service.rules.runbook" (list "mlserviceerrorbudgetburn" $runbook) | nindent 8 }}
{{- end }}
    - alert: MLServiceHighLatencyP95
      expr: namespace_job:mlservice_request_duration_seconds:p95_rate5m{ {{- $sel }}} > {{ $r.latency.p95Seconds }}
      for: {{ $r.latency.for }}
      labels:
        {{- include "ml-service.rules.labels" (list "warning" $extra) | nindent 8 }}
      annotations:
        summary: >-
          ml-service p95 inference latency is above {{ $r.latency.p95Seconds }}s
        description: >-
          {{`{{ $labels.namespace }}/{{ $labels.job }}: p95 of /predict and /invocations over 5m is {{ $value | humanizeDuration }}.`}}
        {{- include "ml-service.rules.runbook" (list "mlservicehighlatencyp95" $runbook) | nindent 8 }}
    - alert: MLServiceNoReadyReplicas
      {{- if eq .Values.delivery.strategy "canary" }}
      # kube-state-metrics knows no Rollout: its pods exist (it wants replicas) but none is ready.
      expr: |-
        sum by (namespace) (kube_pod_status_ready{namespace={{ .Release.Namespace | quote }}, pod=~{{ $podRe | quote }}, condition="true"}) < 1
      {{- else }}
      expr: |-
        kube_deployment_status_replicas_available{namespace={{ .Release.Namespace | quote }}, deployment={{ $job | quote }}} < 1
        and on (namespace, deployment)
        kube_deployment_spec_replicas{namespace={{ .Release.Namespace | quote }}, deployment={{ $job | quote }}} > 0
      {{- end }}
      for: {{ $r.noReadyReplicasFor }}
      labels:
        {{- include "ml-service.rules.labels" (list "critical" $extra) | nindent 8 }}
      annotations:
        summary: >-
          ml-service has no ready replica
        description: >-
          {{`{{ $labels.namespace }}/`}}{{ $job }}{{` wants replicas but none is available: the service is down.`}}
        {{- include "ml-service.rules.runbook" (list "mlservicenoreadyreplicas" $runbook) | nindent 8 }}
    - alert: MLServiceModelNotLoaded
      expr: mlservice_model_loaded{ {{- $sel }}} == 0
      for: {{ $r.modelNotLoadedFor }}
      labels:
        {{- include "ml-service.rules.labels" (list "critical" $extra) | nindent 8 }}
      annotations:
        summary: >-
          An ml-service pod has no model loaded
        description: >-
          {{`Pod {{ $labels.namespace }}/{{ $labels.pod }} has been serving without a model (readiness 503) for a while.`}}
        {{- include "ml-service.rules.runbook" (list "mlservicemodelnotloaded" $runbook) | nindent 8 }}
    - alert: MLServiceTargetDown
      expr: up{ {{- $sel }}} == 0
      for: {{ $r.targetDownFor }}
      labels:
        {{- include "ml-service.rules.labels" (list "warning" $extra) | nindent 8 }}
      annotations:
        summary: >-
          Prometheus cannot scrape an ml-service pod
        description: >-
          {{`{{ $labels.instance }} ({{ $labels.pod }}) of {{ $labels.namespace }}/{{ $labels.job }} does not answer /metrics.`}}
        {{- include "ml-service.rules.runbook" (list "mlservicetargetdown" $runbook) | nindent 8 }}
    - alert: MLServiceUnavailable
      expr: sum by (namespace, job) (up{ {{- $sel }}}) == 0 or absent(up{ {{- $sel }}})
      for: {{ $r.availability.for }}
      labels:
        {{- include "ml-service.rules.labels" (list $r.availability.severity $extra) | nindent 8 }}
      annotations:
        summary: >-
          No ml-service target of {{ .Release.Namespace }}/{{ $job }} is up
        description: >-
          Prometheus has not scraped any pod of {{ $job }} for {{ $r.availability.for }}: the
          service is down or no longer scraped, and every other ml-service alert is blind.
        {{- include "ml-service.rules.runbook" (list "mlserviceunavailable" $runbook) | nindent 8 }}
    - alert: MLServiceMemoryGrowing
      expr: deriv(container_memory_working_set_bytes{ {{- $pods }}}[{{ $r.memoryGrowth.window }}]) * 3600 > {{ int64 $r.memoryGrowth.bytesPerHour }}
      for: {{ $r.memoryGrowth.for }}
      labels:
        {{- include "ml-service.rules.labels" (list "warning" $extra) | nindent 8 }}
      annotations:
        summary: >-
          ml-service memory working set keeps growing
        description: >-
          {{`{{ $labels.namespace }}/{{ $labels.pod }} working set grows by {{ $value | humanize1024 }}B per hour`}} (threshold {{ int64 $r.memoryGrowth.bytesPerHour }} B/h over {{ $r.memoryGrowth.window }}).
        {{- include "ml-service.rules.runbook" (list "mlservicememorygrowing" $runbook) | nindent 8 }}
    - alert: MLServiceShedding
      expr: |-
        sum by (namespace, job) (rate(mlservice_requests_shed_total{ {{- $sel }}, reason="concurrency_limit"}[{{ $r.shedding.window }}]))
        /
        (
          sum by (namespace, job) (rate(mlservice_requests_shed_total{ {{- $sel }}, reason="concurrency_limit"}[{{ $r.shedding.window }}]))
          +
          sum by (namespace, job) (rate(http_requests_total{ {{- $sel }}, {{ $handlers }}}[{{ $r.shedding.window }}]))
        )
        > {{ $r.shedding.ratio }}
      for: {{ $r.shedding.for }}
      labels:
        {{- include "ml-service.rules.labels" (list "warning" $extra) | nindent 8 }}
      annotations:
        summary: >-
          ml-service refuses inference requests under sustained overload
        description: >-
          {{`{{ $labels.namespace }}/{{ $labels.job }}: {{ $value | humanizePercentage }} of inference requests refused with 503 by admission control`}} over {{ $r.shedding.window }} (threshold {{ $r.shedding.ratio }}).
        {{- include "ml-service.rules.runbook" (list "mlserviceshedding" $runbook) | nindent 8 }}
    - alert: MLServicePodRestarting
      expr: increase(kube_pod_container_status_restarts_total{ {{- $pods }}}[{{ $r.restarts.window }}]) > {{ $r.restarts.max }}
      labels:
        {{- include "ml-service.rules.labels" (list "warning" $extra) | nindent 8 }}
      annotations:
        summary: >-
          ml-service containers restart
        description: >-
          {{`{{ $labels.namespace }}/{{ $labels.pod }} restarted {{ $value | humanize }} times`}} in {{ $r.restarts.window }}.
        {{- include "ml-service.rules.runbook" (list "mlservicepodrestarting" $runbook) | nindent 8 }}
    - alert: MLServicePodCrashLooping
      expr: max_over_time(kube_pod_container_status_waiting_reason{ {{- $pods }}, reason="CrashLoopBackOff"}[5m]) >= 1
      for: {{ $r.restarts.crashLoopFor }}
      labels:
        {{- include "ml-service.rules.labels" (list "critical" $extra) | nindent 8 }}
      annotations:
        summary: >-
          An ml-service container is in CrashLoopBackOff
        description: >-
          {{`{{ $labels.namespace }}/{{ $labels.pod }} ({{ $labels.container }}) is crash looping.`}}
        {{- include "ml-service.rules.runbook" (list "mlservicepodcrashlooping" $runbook) | nindent 8 }}
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
        {{- include "ml-service.rules.labels" (list "warning" $extra) | nindent 8 }}
      annotations:
        summary: >-
          Predicted class shares are far from the training priors
        description: >-
          {{`{{ $labels.namespace }}/{{ $labels.job }}: class {{ $labels.class }} share differs from its training prior by {{ $value | humanizePercentage }}`}} over {{ $d.window }}.
        {{- include "ml-service.rules.runbook" (list "mlserviceclassdistributionshift" $runbook) | nindent 8 }}
    - alert: MLServiceFeatureDrift
      expr: |-
        namespace_job_feature:mlservice_feature_psi:max{ {{- $sel }}} > {{ $d.featurePsi }}
        and on (namespace, job)
        namespace_job:mlservice_predicted_rows:increase_drift_window{ {{- $sel }}} >= {{ $d.minRows }}
      for: {{ $d.for }}
      labels:
        {{- include "ml-service.rules.labels" (list "warning" $extra) | nindent 8 }}
      annotations:
        summary: >-
          An input feature drifted away from its training distribution
        description: >-
          {{`{{ $labels.namespace }}/{{ $labels.job }}: PSI of {{ $labels.feature }} is {{ $value | printf "%.2f" }}`}} (threshold {{ $d.featurePsi }}).
        {{- include "ml-service.rules.runbook" (list "mlservicefeaturedrift" $runbook) | nindent 8 }}
    - alert: MLServiceInputsOutOfRange
      expr: |-
        namespace_job_feature:mlservice_feature_out_of_range:ratio{ {{- $sel }}} > {{ $d.outOfRangeRatio }}
        and on (namespace, job)
        namespace_job:mlservice_predicted_rows:increase_drift_window{ {{- $sel }}} >= {{ $d.minRows }}
      for: {{ $d.for }}
      labels:
        {{- include "ml-service.rules.labels" (list "warning" $extra) | nindent 8 }}
      annotations:
        summary: >-
          Many inputs lie outside the training range
        description: >-
          {{`{{ $labels.namespace }}/{{ $labels.job }}: {{ $value | humanizePercentage }} of rows have {{ $labels.feature }} outside its training min/max`}} over {{ $d.window }}.
        {{- include "ml-service.rules.runbook" (list "mlserviceinputsoutofrange" $runbook) | nindent 8 }}
{{- /* Live model quality from /feedback labels. Exact counts: each pod's counters summed as
       they are (last_over_time keeps a pod that is gone for `window`), where increase() would
       extrapolate. Diagonal of the confusion matrix: the cells whose `actual` equals their
       `predicted` (label_replace copies one onto the other). */}}
{{- $q := $r.liveQuality }}
{{- $cm := printf "namespace_job_model_version_predicted_actual:mlservice_feedback:sum{%s}" $sel }}
{{- $by := "namespace, job, model_version" }}
- name: ml-service.live-quality
  rules:
    - record: namespace_job_model_version_predicted_actual:mlservice_feedback:sum
      expr: sum by ({{ $by }}, predicted, actual) (last_over_time(mlservice_feedback_total{ {{- $sel }}}[{{ $q.window }}]))
    - record: namespace_job_model_version:mlservice_feedback:sum
      expr: sum by ({{ $by }}) ({{ $cm }})
    - record: namespace_job_model_version_class:mlservice_feedback_actual:sum
      expr: |-
        sum by ({{ $by }}, class) (label_replace({{ $cm }}, "class", "$1", "actual", "(.*)"))
        or
        0 * sum by ({{ $by }}, class) (label_replace({{ $cm }}, "class", "$1", "predicted", "(.*)"))
    - record: namespace_job_model_version_class:mlservice_feedback_predicted:sum
      expr: |-
        sum by ({{ $by }}, class) (label_replace({{ $cm }}, "class", "$1", "predicted", "(.*)"))
        or
        0 * sum by ({{ $by }}, class) (label_replace({{ $cm }}, "class", "$1", "actual", "(.*)"))
    - record: namespace_job_model_version_class:mlservice_feedback_correct:sum
      expr: |-
        sum by ({{ $by }}, class) (
          label_replace(
            {{ $cm }}
            and on ({{ $by }}, predicted, actual)
            label_replace(max by ({{ $by }}, predicted) ({{ $cm }}), "actual", "$1", "predicted", "(.*)"),
            "class", "$1", "actual", "(.*)"
          )
        )
        or
        0 * namespace_job_model_version_class:mlservice_feedback_actual:sum{ {{- $sel }}}
    - record: namespace_job_model_version_class:mlservice_live_recall:ratio
      expr: |-
        namespace_job_model_version_class:mlservice_feedback_correct:sum{ {{- $sel }}}
        /
        (namespace_job_model_version_class:mlservice_feedback_actual:sum{ {{- $sel }}} > 0)
    - record: namespace_job_model_version_class:mlservice_live_precision:ratio
      expr: |-
        namespace_job_model_version_class:mlservice_feedback_correct:sum{ {{- $sel }}}
        /
        (namespace_job_model_version_class:mlservice_feedback_predicted:sum{ {{- $sel }}} > 0)
    - record: namespace_job_model_version_class:mlservice_live_f1:ratio
      expr: |-
        2 * namespace_job_model_version_class:mlservice_feedback_correct:sum{ {{- $sel }}}
        /
        (
          (
            namespace_job_model_version_class:mlservice_feedback_actual:sum{ {{- $sel }}}
            + namespace_job_model_version_class:mlservice_feedback_predicted:sum{ {{- $sel }}}
          ) > 0
        )
    - record: namespace_job_model_version:mlservice_live_accuracy:ratio
      expr: |-
        sum by ({{ $by }}) (namespace_job_model_version_class:mlservice_feedback_correct:sum{ {{- $sel }}})
        /
        (namespace_job_model_version:mlservice_feedback:sum{ {{- $sel }}} > 0)
    - alert: MLServiceLiveRecallLow
      expr: |-
        namespace_job_model_version_class:mlservice_live_recall:ratio{ {{- $sel }}, class={{ $q.positiveClass | quote }}} < {{ $q.recallMin }}
        and on ({{ $by }}, class)
        namespace_job_model_version_class:mlservice_feedback_actual:sum{ {{- $sel }}, class={{ $q.positiveClass | quote }}} >= {{ $q.minLabels }}
        and on ({{ $by }})
        count by ({{ $by }}) (mlservice_model_info{ {{- $sel }}})
      for: {{ $q.for }}
      labels:
        {{- include "ml-service.rules.labels" (list $q.severity $extra) | nindent 8 }}
      annotations:
        summary: >-
          Live recall of {{ $q.positiveClass }} is below the quality gate's floor {{ $q.recallMin }}
        description: >-
          {{`{{ $labels.namespace }}/{{ $labels.job }}: model version {{ $labels.model_version }} still serves and finds {{ $value | humanizePercentage }} of the `}}{{ $q.positiveClass }} cases its labels (`/feedback`) name: a model this bad would not pass the release gate.
        {{- include "ml-service.rules.runbook" (list "mlserviceliverecalllow" $runbook) | nindent 8 }}
{{- end -}}
