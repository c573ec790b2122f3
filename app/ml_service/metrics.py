"""ml-service's Prometheus metrics (contract: docs/metrics.md) and HTTP instrumentation."""

from __future__ import annotations

import os

from fastapi import FastAPI
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
    generate_latest,
    multiprocess,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from prometheus_fastapi_instrumentator import Instrumentator
from prometheus_fastapi_instrumentator.middleware import PrometheusInstrumentatorMiddleware
from starlette.middleware import Middleware

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
    """ml-service metrics bound to one registry (app.state.metrics), not module globals."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry
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
        self.request_rows = Histogram(
            "mlservice_request_rows",
            "Rows per prediction request",
            buckets=ROW_BUCKETS,
            registry=registry,
        )
        self.inference_duration = Histogram(
            "mlservice_inference_duration_seconds",
            "Duration of one predict_proba call on the inference thread (may cover a micro-batch)",
            buckets=INFERENCE_BUCKETS,
            registry=registry,
        )
        self.model_loaded.set(0)

    def mark_loaded(self, name: str, version: str, run_id: str, load_seconds: float) -> None:
        self.model_info.clear()
        self.model_info.labels(model_name=name, model_version=version, run_id=run_id).set(1)
        self.model_load_duration.set(load_seconds)
        self.model_loaded.set(1)

    def record_mismatches(self, mismatches: list[tuple[str, str, str]]) -> None:
        self.dependency_mismatch.clear()
        for package, trained, serving in mismatches:
            labels = {"package": package, "trained": trained, "serving": serving}
            self.dependency_mismatch.labels(**labels).set(1)

    def record_predictions(self, version: str, labels: list[str], rows: int) -> None:
        self.request_rows.observe(rows)
        counts: dict[str, int] = {}
        for label in labels:
            counts[label] = counts.get(label, 0) + 1
        for label, n in counts.items():
            self.predictions.labels(model_version=version, **{"class": label}).inc(n)


class _InstrumentatorMiddleware(PrometheusInstrumentatorMiddleware):
    """The instrumentator registers its in-progress gauge in the global registry whatever
    `registry` says; create it in the app's registry instead (same name, labels and mode)."""

    def __init__(self, app, **kwargs) -> None:
        inprogress = kwargs.pop("should_instrument_requests_inprogress", False)
        super().__init__(app, should_instrument_requests_inprogress=False, **kwargs)
        if inprogress:
            self.should_instrument_requests_inprogress = True
            self.inprogress = Gauge(
                self.inprogress_name,
                "Number of HTTP requests in progress.",
                ("method", "handler") if self.inprogress_labels else (),
                multiprocess_mode="livesum",
                registry=self.registry,
            )


def instrument(app: FastAPI, registry: CollectorRegistry) -> Instrumentator:
    """HTTP metrics with the instrumentator's default names (`http_requests_total`...)."""
    instrumentator = Instrumentator(
        should_group_status_codes=True,
        # unknown paths count under handler="none" instead of one series per scanned URL
        should_group_untemplated=True,
        should_instrument_requests_inprogress=True,
        inprogress_labels=True,
        excluded_handlers=["/metrics"],
        registry=registry,
    )
    instrumentator.instrument(
        app,
        latency_lowr_buckets=LATENCY_BUCKETS,
        latency_highr_buckets=LATENCY_HIGHR_BUCKETS,
    )
    app.user_middleware = [
        Middleware(_InstrumentatorMiddleware, *m.args, **m.kwargs)
        if m.cls is PrometheusInstrumentatorMiddleware
        else m
        for m in app.user_middleware
    ]
    return instrumentator


def render(registry: CollectorRegistry) -> tuple[bytes, str]:
    """Exposition text; under PROMETHEUS_MULTIPROC_DIR it aggregates every worker's files."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged)
        return generate_latest(merged), CONTENT_TYPE_LATEST
    return generate_latest(registry), CONTENT_TYPE_LATEST
