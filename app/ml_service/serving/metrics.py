"""ml-service's Prometheus metrics (contract: docs/metrics.md) and HTTP instrumentation."""

from __future__ import annotations

import os
import time
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Callable, Sequence

import numpy as np
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Summary,
    disable_created_metrics,
    generate_latest,
    multiprocess,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from ml_service.payload_format import KINDS

# `*_created` timestamps double the series of every counter and histogram and nothing here reads
# them (Prometheus stores them as separate gauges from the text format).
disable_created_metrics()

# Requests here take ~1-5 ms: the default instrumentator buckets (0.1 s and up) would hide them.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075,
    0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
LATENCY_HIGHR_BUCKETS = (
    0.0005, 0.001, 0.0015, 0.002, 0.003, 0.004, 0.005, 0.0075, 0.01, 0.0125, 0.015,
    0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0,
)  # fmt: skip
INFERENCE_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.00075, 0.001, 0.0015, 0.002, 0.003, 0.005, 0.0075,
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
)  # fmt: skip
ROW_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)
# Equal-width bins of a class probability: bin i holds [i/10, (i+1)/10), the last one includes 1.
SCORE_BINS = 10
# Up to this many rows a plain loop bins the probabilities faster than numpy's per-call overhead
# (measured: ~6 us against ~20 us for one row, even at about 8-16 rows).
LOOP_ROWS = 8
# Probability of the predicted class as a prediction ID carries it (1/1000 steps, rounded up).
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99, 1.0)
# Ground truth arrives minutes (a chargeback) to months (a biopsy) after the prediction.
LABEL_DELAY_BUCKETS = (
    60, 300, 900, 3600, 6 * 3600, 86400, 3 * 86400, 7 * 86400, 14 * 86400, 30 * 86400,
    90 * 86400,
)  # fmt: skip


def new_registry() -> CollectorRegistry:
    """A private registry with the default process/platform/GC collectors (for tests and embeds)."""
    registry = CollectorRegistry(auto_describe=True)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


def default_registry() -> CollectorRegistry:
    # The global registry already carries process/platform/GC collectors.
    assert PROCESS_COLLECTOR and PLATFORM_COLLECTOR and GC_COLLECTOR
    return REGISTRY


class ServiceMetrics:
    """ml-service metrics bound to one registry (each app has its own), not module globals."""

    def __init__(self, registry: CollectorRegistry) -> None:
        # multiprocess_mode only matters under PROMETHEUS_MULTIPROC_DIR (see docs/metrics.md).
        self.model_loaded = Gauge(
            "mlservice_model_loaded",
            "1 when a model is loaded and passed its smoke prediction, else 0",
            registry=registry,
            multiprocess_mode="livemin",
        )
        self.model_info = Gauge(
            "mlservice_model_info",
            "Always 1; labels identify the model being served",
            ["model_name", "model_version", "run_id"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.model_load_duration = Gauge(
            "mlservice_model_load_duration_seconds",
            "Wall time of the last successful model load (download, deserialize, smoke test)",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.model_load_failures = Counter(
            "mlservice_model_load_failures_total",
            "Failed model load attempts (each one is retried with backoff)",
            registry=registry,
        )
        self.dependency_mismatch = Gauge(
            "mlservice_dependency_mismatch",
            "1 when the serving version of a package differs (compatibly) from the training one",
            ["package", "trained", "serving"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.predictions = Counter(
            "mlservice_predictions_total",
            "Rows predicted, by predicted class and model version",
            ["model_version", "class"],
            registry=registry,
        )
        self.prediction_scores = Counter(
            "mlservice_prediction_score_bin",
            "Rows by class and bin of the probability the model gave that class "
            f"(bin i: [i/{SCORE_BINS}, (i+1)/{SCORE_BINS}), the last one includes 1)",
            ["class", "bin"],
            registry=registry,
        )
        # The loaded model's series, created at load (mark_loaded): one lookup per request.
        self._predicted: dict[str, Callable[[float], None]] = {}
        self._scores: list[list[Callable[[float], None]]] = []
        self.request_rows = Histogram(
            "mlservice_request_rows",
            "Rows per prediction request",
            buckets=ROW_BUCKETS,
            registry=registry,
        )
        self._observe_rows = recorder(self.request_rows)
        self.inference_duration = Histogram(
            "mlservice_inference_duration_seconds",
            "Duration of one predict_proba call on the inference thread (may cover a micro-batch)",
            buckets=INFERENCE_BUCKETS,
            registry=registry,
        )
        self.connections_closed = Counter(
            "mlservice_connections_closed_total",
            "Connections the server closed to protect itself: header_timeout, header_too_large "
            "(431), body_timeout (408), write_timeout, pipeline_full, invalid_request (400), "
            "idle_evicted (at MAX_CONNECTIONS), over_capacity (503), overloaded (a refused "
            "request whose body was not read: 503)",
            ["reason"],
            registry=registry,
        )
        self.shed = Counter(
            "mlservice_requests_shed",
            "Requests refused or dropped under load, by reason: concurrency_limit (a 503 with "
            "Retry-After before the body was read), client_gone (admitted, but its client left "
            "before its prediction ran: never run)",
            ["reason"],
            registry=registry,
        )
        for reason in self.SHED_REASONS:
            self.shed.labels(reason)
        self.model_loaded.set(0)

    SHED_REASONS = ("concurrency_limit", "client_gone")

    def watch_admission(self, limiter, registry: CollectorRegistry) -> None:  # type: ignore[no-untyped-def]
        """Gauges read from the admission limiter at scrape time (admission.py)."""
        for name, doc, read in (
            ("mlservice_admission_limit", "Current adaptive concurrency limit of POST requests",
             lambda: limiter.current),
            ("mlservice_admission_in_flight",
             "Cost of the POST requests admitted and not yet answered (1 per request plus 1 "
             "per 256 KiB of body)",
             lambda: limiter.in_flight),
            ("mlservice_admission_queue_delay_seconds",
             "The last window's mean latency minus the baseline (latency without queueing)",
             lambda: limiter.queue_delay),
        ):  # fmt: skip
            Gauge(name, doc, registry=registry, multiprocess_mode="livesum").set_function(read)

    def mark_loaded(
        self, name: str, version: str, run_id: str, load_seconds: float, classes: Sequence[str]
    ) -> None:
        """The model's labels, and every class's prediction series at 0 from its first moment:
        a class the model never predicts still has a series (a canary compared with the stable
        version by class needs both sides), and `increase()` does not lose a first increment."""
        self._predicted = {c: recorder(self.predictions.labels(version, c)) for c in classes}
        self._scores = [
            [recorder(self.prediction_scores.labels(c, str(b))) for b in range(SCORE_BINS)]
            for c in classes
        ]
        self.model_info.clear()
        self.model_info.labels(model_name=name, model_version=version, run_id=run_id).set(1)
        self.model_load_duration.set(load_seconds)
        self.model_loaded.set(1)

    def record_mismatches(self, mismatches: list[tuple[str, str, str]]) -> None:
        self.dependency_mismatch.clear()
        for package, trained, serving in mismatches:
            labels = {"package": package, "trained": trained, "serving": serving}
            self.dependency_mismatch.labels(**labels).set(1)

    def record_predictions(self, labels: list[str], proba: np.ndarray) -> None:
        """One request's rows: predicted class, and the bin of every class's probability
        (`proba`: rows x classes, columns in the order mark_loaded was given)."""
        self._observe_rows(len(labels))
        for label, n in Tally(labels).items():
            self._predicted[label](n)
        if len(labels) <= LOOP_ROWS:
            for row in proba.tolist():
                for children, p in zip(self._scores, row, strict=True):
                    children[min(int(p * SCORE_BINS), SCORE_BINS - 1)](1)
            return
        bins = np.minimum((proba * SCORE_BINS).astype(np.intp), SCORE_BINS - 1)
        for children, column in zip(self._scores, bins.T, strict=True):
            for b, n in enumerate(np.bincount(column, minlength=SCORE_BINS).tolist()):
                if n:
                    children[b](n)


class FeedbackMetrics:
    """Live model quality from `/feedback`: registered only when prediction IDs are on.

    Label values are bounded: `model_version` and `predicted` come from validly signed
    prediction IDs (what this deployment served), `actual` from the model's classes, `reason`
    from `prediction_ids.Refusal`."""

    def __init__(self, registry: CollectorRegistry, refusals: list[str]) -> None:
        self.confusion = Counter(
            "mlservice_feedback",
            "Labels received, by model version, predicted class and actual class (the live "
            "confusion matrix); each prediction ID counts once per replica and dedupe window",
            ["model_version", "predicted", "actual"],
            registry=registry,
        )
        self.score = Histogram(
            "mlservice_feedback_score",
            "Probability the model gave its predicted class, for labelled predictions, by "
            "model version, predicted and actual class (calibration, ROC)",
            ["model_version", "predicted", "actual"],
            buckets=SCORE_BUCKETS,
            registry=registry,
        )
        self.delay = Histogram(
            "mlservice_feedback_label_delay_seconds",
            "Time from a prediction to its label arriving",
            ["model_version"],
            buckets=LABEL_DELAY_BUCKETS,
            registry=registry,
        )
        self.refused = Counter(
            "mlservice_feedback_refused",
            "Labels refused with their request (422): malformed, invalid_signature (forged, or "
            "another deployment's or model's), expired, not_yet_valid, unknown_label",
            ["reason"],
            registry=registry,
        )
        self.duplicates = Counter(
            "mlservice_feedback_duplicates",
            "Labels for a prediction ID this replica already counted within the dedupe window",
            registry=registry,
        )
        for reason in refusals:
            self.refused.labels(reason)
        self._children: dict[tuple[str, str, str], tuple] = {}

    def prepare(self, version: str, classes: tuple[str, ...]) -> None:
        """Every cell of a model's confusion matrix, at 0 before its first label."""
        for predicted in classes:
            for actual in classes:
                self._cell(version, predicted, actual)

    def _cell(self, version: str, predicted: str, actual: str) -> tuple:
        key = (version, predicted, actual)
        cell = self._children.get(key)
        if cell is None:
            cell = self._children[key] = (
                self.confusion.labels(*key),
                self.score.labels(*key),
                self.delay.labels(version),
            )
        return cell

    def record(self, version: str, predicted: str, actual: str, score: float, delay: float):
        confusion, score_hist, delay_hist = self._cell(version, predicted, actual)
        confusion.inc()
        score_hist.observe(score)
        delay_hist.observe(delay)


class PayloadLogMetrics:
    """The payload log's accounting: registered only when it is on."""

    DROP_REASONS = ("queue_full", "write_failed")

    def __init__(self, registry: CollectorRegistry) -> None:
        self.written = Counter(
            "mlservice_payload_log_rows",
            "Rows written to the payload log store, by kind (predictions, labels)",
            ["kind"],
            registry=registry,
        )
        self.dropped = Counter(
            "mlservice_payload_log_dropped_rows",
            "Rows the payload log gave up, by kind and reason: queue_full (the writer is behind; "
            "the request was answered as usual), write_failed (the store refused or was down)",
            ["kind", "reason"],
            registry=registry,
        )
        self.objects = Counter(
            "mlservice_payload_log_objects",
            "Objects (compressed JSON Lines files) written to the payload log store",
            registry=registry,
        )
        self.queued = Gauge(
            "mlservice_payload_log_queue_rows",
            "Rows waiting for the payload log writer",
            registry=registry,
            multiprocess_mode="livesum",
        )
        for kind in KINDS:
            self.written.labels(kind)
            for reason in self.DROP_REASONS:
                self.dropped.labels(kind, reason)


# Standard methods keep their name; anything else a client invents counts as one value.
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"})
OTHER_METHOD = "OTHER"
UNKNOWN_HANDLER = "none"


class HttpMetrics:
    """The HTTP series of the metrics contract (docs/metrics.md), with the names and labels of
    prometheus-fastapi-instrumentator's defaults, as a lean ASGI middleware.

    Every label takes values from a bounded set: `handler` is a route path of the app or `none`,
    `method` a standard method or `OTHER`, `status` the class (`2xx`...). The routes here have no
    path parameters, so the handler is one dict lookup instead of a second routing pass.
    """

    def __init__(self, app, *, registry: CollectorRegistry, handlers: frozenset[str],
                 excluded: frozenset[str] = frozenset({"/metrics"})) -> None:  # fmt: skip
        self.app = app
        self.handlers = handlers - excluded
        self.excluded = excluded
        self.requests = Counter(
            "http_requests_total", "Total number of requests by method, status and handler.",
            ("method", "status", "handler"), registry=registry,
        )  # fmt: skip
        self.duration = Histogram(
            "http_request_duration_seconds", "Latency with only few buckets by handler.",
            ("method", "handler"), buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.duration_highr = Histogram(
            "http_request_duration_highr_seconds", "Latency with many buckets but no labels.",
            buckets=LATENCY_HIGHR_BUCKETS, registry=registry,
        )  # fmt: skip
        self.request_size = Summary(
            "http_request_size_bytes", "Content length of incoming requests by handler.",
            ("handler",), registry=registry,
        )  # fmt: skip
        self.response_size = Summary(
            "http_response_size_bytes", "Content length of outgoing responses by handler.",
            ("handler",), registry=registry,
        )  # fmt: skip
        self.inprogress = Gauge(
            "http_requests_inprogress", "Number of HTTP requests in progress.",
            ("method", "handler"), multiprocess_mode="livesum", registry=registry,
        )  # fmt: skip
        self._cache: dict[tuple[str, str], tuple] = {}
        self._observe_highr = recorder(self.duration_highr)

    def _children(self, method: str, handler: str) -> tuple:
        """The labelled series of one (method, handler), created once: `labels()` validates and
        locks on every call, which costs more than the observations themselves."""
        key = (method, handler)
        children = self._cache.get(key)
        if children is None:
            children = self._cache[key] = (
                recorder(self.inprogress.labels(method, handler)),
                recorder(self.duration.labels(method, handler)),
                recorder(self.request_size.labels(handler)),
                recorder(self.response_size.labels(handler)),
                {c: recorder(self.requests.labels(method, f"{c}xx", handler)) for c in "12345"},
            )
        return children

    async def __call__(self, scope, receive, send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path in self.excluded:
            return await self.app(scope, receive, send)
        method = scope["method"] if scope["method"] in HTTP_METHODS else OTHER_METHOD
        handler = path if path in self.handlers else UNKNOWN_HANDLER
        inprogress, duration, request_size, response_size, requests = self._children(
            method, handler
        )
        started = time.perf_counter()
        inprogress(1)
        status, size = 500, 0

        async def send_and_observe(message) -> None:
            nonlocal status, size
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body":
                size += len(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, receive, send_and_observe)
        finally:
            elapsed = time.perf_counter() - started
            inprogress(-1)
            requests[str(status)[0]](1)
            duration(elapsed)
            self._observe_highr(elapsed)
            request_size(_content_length(scope))
            response_size(size)


def recorder(metric: Counter | Gauge | Histogram | Summary) -> Callable[[float], None]:
    """What records one value into a labelled child (or a label-free metric) at the least cost,
    with the effect of its `inc` or `observe` (a gauge's `dec(n)` is `inc(-n)`): those re-check
    on every call what holds from the child's creation on (it is observable, an amount's sign),
    and a histogram looks for its bucket bound by bound in Python; on a one-row request that
    cost more than the updates themselves. It writes prometheus_client's own value objects:
    tests/unit/test_metrics.py checks the exposition against the public methods' side by side."""
    if isinstance(metric, Histogram):
        add_sum, bounds = metric._sum.inc, metric._upper_bounds
        add_bucket = [bucket.inc for bucket in metric._buckets]

        def observe_histogram(value: float) -> None:
            add_sum(value)
            add_bucket[bisect_left(bounds, value)](1)

        return observe_histogram
    if isinstance(metric, Summary):
        add_count, add_summed = metric._count.inc, metric._sum.inc

        def observe_summary(value: float) -> None:
            add_count(1)
            add_summed(value)

        return observe_summary
    return metric._value.inc


def _content_length(scope) -> int:
    for name, value in scope["headers"]:
        if name == b"content-length":
            return int(value) if value.isdigit() else 0
    return 0


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """Exposition text; under PROMETHEUS_MULTIPROC_DIR it aggregates every worker's files."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged), CONTENT_TYPE_LATEST
    return generate_latest(registry), CONTENT_TYPE_LATEST
