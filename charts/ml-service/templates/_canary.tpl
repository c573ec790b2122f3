{{/*
Canary delivery (delivery.strategy: canary, docs/canary.md): the Rollout's strategy and the
AnalysisTemplate its steps run. Every check compares the canary's pods with the stable pods over the
same window, told apart by the `revision` label the ServiceMonitor copies from the pods'
rollouts-pod-template-hash; each returns one number, or nothing while either side has fewer samples
than the minimum (then the measurement is inconclusive: neither passes nor fails the step).
Argo Rollouts fills {{`{{args.<name>}}`}} in the queries, so those braces are written for Helm to leave alone.
*/}}

{{/* spec.strategy of the Rollout: each weight, then the analysis that must pass before the next. */}}
{{- define "ml-service.canary.strategy" -}}
{{- $c := .Values.delivery.canary -}}
progressDeadlineSeconds: {{ $c.progressDeadlineSeconds }}
# A canary that never becomes ready is aborted like one that fails its analysis.
progressDeadlineAbort: true
strategy:
  canary:
    maxSurge: {{ .Values.updateStrategy.maxSurge }}
    maxUnavailable: {{ .Values.updateStrategy.maxUnavailable }}
    steps:
      {{- range $c.weights }}
      - setWeight: {{ . }}
      - analysis:
          templates:
            - templateName: {{ include "ml-service.suffixed" (dict "ctx" $ "suffix" "canary") }}
          args:
            - name: canary-hash
              valueFrom:
                podTemplateHashValue: Latest
            - name: stable-hash
              valueFrom:
                podTemplateHashValue: Stable
      {{- end }}
{{- end }}

{{/* The checks: name -> (list PromQL-value threshold samples), samples "rows" or "requests". */}}
{{- define "ml-service.canary.checks" -}}
{{- $a := .Values.delivery.canary.analysis }}
{{- $t := $a.thresholds }}
{{- $sel := include "ml-service.rules.selector" . }}
{{- $c := printf "%s, revision=\"{{args.canary-hash}}\"" $sel }}
{{- $s := printf "%s, revision=\"{{args.stable-hash}}\"" $sel }}
{{- $w := $a.window }}
{{- $h := printf "handler=~%q" .Values.prometheusRule.availability.handlers }}
{{- /* share of each predicted class, per side */}}
{{- $share := "sum by (class) (increase(mlservice_predictions_total{%s}[%s])) / scalar(sum(increase(mlservice_predictions_total{%s}[%s])))" }}
{{- $cs := printf $share $c $w $c $w }}
{{- $ss := printf $share $s $w $s $w }}
{{- /* share of each class's rows in each probability bin, floored like the drift PSI (no log of 0) */}}
{{- $bins := "clamp_min(sum by (class, bin) (increase(mlservice_prediction_score_bin_total{%s}[%s])) / on (class) group_left sum by (class) (increase(mlservice_prediction_score_bin_total{%s}[%s])), 0.0001)" }}
{{- $cb := printf $bins $c $w $c $w }}
{{- $sb := printf $bins $s $w $s $w }}
{{- /* share of inference requests answered with a status class, per side (0 when none was) */}}
{{- $status := "(sum(increase(http_requests_total{%s, %s, status=%q}[%s])) or vector(0)) / sum(increase(http_requests_total{%s, %s}[%s]))" }}
{{- /* errors, as the SLO counts them: 5xx answers plus the requests admission control refused with
       503 before the app saw them (not in http_requests_total), per side */}}
{{- $refused := "(sum(increase(mlservice_requests_shed_total{%s, reason=\"concurrency_limit\"}[%s])) or vector(0))" }}
{{- $errors := printf "((sum(increase(http_requests_total{%%s, %%s, status=\"5xx\"}[%%s])) or vector(0)) + %s) / (sum(increase(http_requests_total{%%s, %%s}[%%s])) + %s)" $refused $refused }}
{{- $p95 := "histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket{%s, %s}[%s])))" }}
class-share: {{ list (printf "max(abs((%s - %s) or %s or %s))" $cs $ss $cs $ss) $t.classShareDifference "rows" | toJson }}
score-psi: {{ list (printf "max(sum by (class) ((%s - %s) * ln(%s / %s)))" $cb $sb $cb $sb) $t.scorePsi "rows" | toJson }}
rejected-share: {{ list (printf "%s - %s" (printf $status $c $h "4xx" $w $c $h $w) (printf $status $s $h "4xx" $w $s $h $w)) $t.rejectedRateIncrease "requests" | toJson }}
error-share: {{ list (printf "%s - %s" (printf $errors $c $h $w $c $w $c $h $w $c $w) (printf $errors $s $h $w $s $w $s $h $w $s $w)) $t.errorRateIncrease "requests" | toJson }}
latency-p95: {{ list (printf "%s / clamp_min(%s, %v)" (printf $p95 $c $h $w) (printf $p95 $s $h $w) $t.latencyFloorSeconds) $t.latencyP95Ratio "requests" | toJson }}
{{- end }}

{{/* (list $ expr samples): `expr` only while each side has at least the minimum samples. */}}
{{- define "ml-service.canary.gated" -}}
{{- $ := index . 0 }}
{{- $a := $.Values.delivery.canary.analysis }}
{{- $side := printf "%s, revision=\"{{args.SIDE-hash}}\"" (include "ml-service.rules.selector" $) }}
{{- $count := printf "sum(increase(mlservice_predictions_total{%s}[%s])) >= %v" $side $a.window (int64 $a.minRows) }}
{{- if eq (index . 2) "requests" }}
{{- $count = printf "sum(increase(http_requests_total{%s, handler=~%q}[%s])) >= %v" $side $.Values.prometheusRule.availability.handlers $a.window (int64 $a.minRequests) }}
{{- end }}
{{- printf "(%s)\nand on () (%s)\nand on () (%s)" (index . 1) (replace "SIDE" "canary" $count) (replace "SIDE" "stable" $count) }}
{{- end }}
