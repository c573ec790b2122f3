"""The model's life in the serving process: load in the background, serve, shut down.

`Service` is what every request needs (settings, metrics, the loaded model, the inference
engine); the app keeps one on `app.state.service` and endpoints reach it through `deps.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
from prometheus_client import CollectorRegistry

from ml_service.model_format import REFERENCE_KEY

from .admission import AdaptiveLimit
from .drift import DriftMonitor
from .errors import ApiError, InputError, too_many_rows
from .feedback import Feedback
from .inference import DriftSink, InferenceEngine, settle
from .metrics import ServiceMetrics, render
from .model import (
    LoadedModel,
    LoadError,
    Reason,
    describe,
    fetch_and_deserialize,
    smoke_test,
    stamp,
)
from .payload_log import PayloadLog
from .prediction_ids import request_id
from .schemas import ModelSchemas, example_row
from .settings import Settings

log = logging.getLogger("ml_service")
T = TypeVar("T")

# The probe listener's /health answers 503 when the main event loop has not turned for this long
# (nothing on it may take more than milliseconds): the kubelet then restarts the pod.
LOOP_STALL_SECONDS = 10.0


# MLflow's scoring machinery is loaded at most this many times, a second, then 2, 4, 8 s apart,
# before the process declares itself broken: an import that failed half-way (out of file
# descriptors, say) can leave state behind that fails every later import.
WARM_UP_ATTEMPTS = 5


class Service:
    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        self.settings = settings
        self.registry = registry
        self.metrics = ServiceMetrics(registry)
        self.engine = InferenceEngine(
            numeric_threads=settings.numeric_threads,
            microbatch_wait_ms=settings.microbatch_wait_ms,
            microbatch_max_rows=settings.microbatch_max_rows,
            observe_duration=self.metrics.inference_duration.observe,
            on_batch=self._observe_drift,
            on_abandoned=self._abandoned,
        )
        # The concurrency limit of POST requests, enforced by the server (server.py).
        self.admission: AdaptiveLimit | None = None
        if settings.admission_max_concurrency > 0:
            self.admission = AdaptiveLimit(
                initial=settings.admission_min_concurrency,
                min_limit=settings.admission_min_concurrency,
                max_limit=settings.admission_max_concurrency,
                tolerance=settings.admission_tolerance,
                window=settings.admission_window,
                largest_body=settings.max_request_bytes,
            )
            self.metrics.watch_admission(self.admission, registry)
        self.model: LoadedModel | None = None
        self.schemas: ModelSchemas | None = None
        self.classes: np.ndarray | None = None
        self.drift: DriftSink | None = None
        self.reason = Reason.STARTING
        self.load_attempts = 0
        # SIGTERM received: readiness is 503 and every response closes its connection.
        self.shutting_down = False
        # Set when a part of the process failed for good: liveness and readiness answer 503.
        self.broken: str | None = None
        self.scratch = Path(tempfile.mkdtemp(prefix="ml-service-"))
        self.on_model_loaded: list[Callable[[LoadedModel], None]] = []
        # Work that grows with a body (decoding a large body, building a large answer, MLflow's
        # parsing, rendering /metrics) runs here, one job at a time, never on the event loop.
        self.bodies = ThreadPoolExecutor(max_workers=1, thread_name_prefix="bodies")
        self._rendering: asyncio.Future | None = None
        self._loop_beat = time.monotonic()
        # Ground truth (feedback.py, payload_log.py): None unless PREDICTION_SIGNING_SECRET
        # (and PAYLOAD_LOG_URI) are set, and then nothing of it is registered or answered.
        self.feedback: Feedback | None = None
        self.payload_log: PayloadLog | None = None
        if settings.prediction_signing_secret is not None:
            self.feedback = Feedback(settings, registry)
        if settings.payload_log_uri:
            self.payload_log = PayloadLog(settings, registry)

    # ---------------------------------------------------------------- state

    @property
    def ready(self) -> bool:
        return self.model is not None and not self.shutting_down and not self.broken

    def unavailable(self) -> ApiError:
        """The 503 for requests that need a model while there is none (or shutdown began)."""
        message = "shutting down" if self.shutting_down else "model not loaded yet"
        headers = {"Retry-After": str(self.settings.retry_after_seconds)}
        return ApiError(503, message, headers)

    def require_model(self) -> LoadedModel:
        if self.model is None:
            raise self.unavailable()
        return self.model

    def readiness(self) -> tuple[int, dict[str, Any], dict[str, str]]:
        """(status, body, headers) of `/ready`, on either listener."""
        model = self.model
        if model is not None and self.ready:
            serving = {"name": model.name, "version": model.version}
            return 200, {"status": "ready", "model": serving}, {}
        retry = {"Retry-After": str(self.settings.retry_after_seconds)}
        if self.broken:
            return 503, {"status": "failed", "message": self.broken}, retry
        body: dict[str, Any] = {"status": "shutting_down" if self.shutting_down else "loading"}
        if not self.shutting_down:
            # a fixed sentence per reason: never an error text, a URL or a host name
            body |= {"reason": self.reason.value, "message": self.reason.message}
        body["attempts"] = self.load_attempts
        return 503, body, retry

    def _abandoned(self, n: int) -> None:
        self.metrics.shed.labels("client_gone").inc(n)

    def heartbeat(self) -> None:
        """Called by the main event loop twice a second (the connection sweep)."""
        self._loop_beat = time.monotonic()

    def liveness(self) -> tuple[int, dict[str, str]]:
        """(status, body) of `/health`: the process serves, its event loop turns and its
        inference thread runs. Never touches the model or MLflow."""
        if self.broken:
            return 503, {"status": "failed", "reason": self.broken}
        if not self.engine.alive:
            return 503, {"status": "failed", "reason": "the inference thread stopped"}
        if time.monotonic() - self._loop_beat > LOOP_STALL_SECONDS:
            return 503, {"status": "stalled", "reason": "the event loop is blocked"}
        return 200, {"status": "ok"}

    async def offload(self, fn: Callable[..., T], *args: Any) -> T:
        """Run `fn(*args)` on the bodies thread (see `bodies`)."""
        return await asyncio.get_running_loop().run_in_executor(
            self.bodies, _without_frames, fn, args
        )

    async def exposition(self) -> tuple[bytes, str]:
        """The /metrics text, rendered on the bodies thread; scrapes that arrive while one is
        rendered share it, so scrapers cannot queue up renders."""
        if self._rendering is None:
            self._rendering = asyncio.ensure_future(self.offload(render, self.registry))
            self._rendering.add_done_callback(lambda _: setattr(self, "_rendering", None))
        return await asyncio.shield(self._rendering)

    # ---------------------------------------------------------------- loading

    async def load_forever(self) -> None:
        """Retry with capped exponential backoff (+jitter) until a model passes its smoke test."""
        s = self.settings
        delay = s.model_load_backoff_initial_seconds
        while self.model is None:
            self.load_attempts += 1
            started = time.perf_counter()
            try:
                model = await _in_thread(lambda: fetch_and_deserialize(s, self.scratch))
                await self.engine.run(smoke_test, model)
                self._install(model, started)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                if not isinstance(exc, LoadError):  # a bug of ours, not the model's
                    exc = LoadError(Reason.MODEL_REJECTED, describe(exc))
                self.reason = exc.reason
                self.metrics.model_load_failures.inc()
                log.warning(
                    "model load attempt %d failed: %s (%s); retrying in %.1fs",
                    self.load_attempts,
                    exc.reason.value,
                    exc.detail,
                    delay,
                )
            finally:
                gc.enable()  # `python -m ml_service` holds it off through imports and this attempt
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter
            delay = min(delay * 2, s.model_load_backoff_max_seconds)

    def _install(self, model: LoadedModel, started: float) -> None:
        stamp(model, started)
        example = example_row(model.reference, model.feature_names)
        self.schemas = ModelSchemas.build(model.feature_names, example)
        self.classes = np.asarray(model.classes, dtype=object)
        self.drift = _drift_sink(model, self.registry)
        if self.feedback is not None:
            self.feedback.on_model_loaded(model)
        self.model = model
        self.metrics.record_mismatches(model.mismatches)
        self.metrics.mark_loaded(
            model.name, model.version, model.run_id, model.load_seconds, model.classes
        )
        for callback in self.on_model_loaded:
            callback(model)
        # Start-up objects (MLflow, sklearn, the model) live as long as the process: moving them
        # out of the collector's generations makes full collections, the tail-latency spikes
        # under load, much shorter. (No gc.collect() first: it would delay readiness.)
        gc.freeze()
        # MLflow's scoring machinery (the /invocations fallback) loads off the start-up path; its
        # ~100,000 objects are frozen too once there, or every full collection under load scans
        # them again (measured: 22-27 ms pauses twice a second at c=50, the p99 tail).
        threading.Thread(
            target=self._warm_up, args=(model,), name="mlflow-warmup", daemon=True
        ).start()
        log.info(
            "model %s version %s (run %s) loaded in %.2fs",
            model.name,
            model.version,
            model.run_id,
            model.load_seconds,
        )

    def _warm_up(self, model: LoadedModel) -> None:
        """Load what the /invocations fallback needs; retried, and if it keeps failing the
        process says it is broken (liveness and readiness 503: the kubelet restarts it), never
        a 500 on every such request behind a 200 `/ready`."""
        delay = 1.0
        try:
            for attempt in range(1, WARM_UP_ATTEMPTS + 1):
                try:
                    model.mlflow_schemas  # noqa: B018 - the import and the schema objects
                    return
                except Exception as exc:
                    log.warning(
                        "loading MLflow's scoring machinery failed (attempt %d of %d): %s",
                        attempt,
                        WARM_UP_ATTEMPTS,
                        describe(exc),
                    )
                time.sleep(delay)
                delay *= 2
            self.broken = "MLflow's scoring machinery cannot be loaded"
            log.error("%s: /health and /ready answer 503 so the pod restarts", self.broken)
        finally:
            gc.freeze()

    # ---------------------------------------------------------------- predicting

    def check_rows(self, rows: int) -> None:
        if rows > self.settings.max_batch_rows:
            raise too_many_rows(self.settings.max_batch_rows)

    async def predict_proba(
        self, model: LoadedModel, features: np.ndarray, gone: Callable[[], bool] | None = None
    ) -> np.ndarray:
        self.check_rows(features.shape[0])
        return await self.engine.predict_proba(model, features, gone)

    def labels(self, model: LoadedModel, proba: np.ndarray) -> list[str]:
        """Most probable class per row, counted in the prediction metrics."""
        assert self.classes is not None
        label_list = self.classes[np.argmax(proba, axis=1)].tolist()
        self.metrics.record_predictions(label_list, proba)
        return label_list

    def identify(
        self,
        headers: Any,
        endpoint: str,
        model: LoadedModel,
        features: np.ndarray,
        labels: list[str],
        proba: list[list[float]],
    ) -> tuple[str, list[str] | None] | None:
        """With prediction IDs on: the request ID and one prediction ID per row (the rows go to
        the payload log when it is on); None when off, and the answer stays as it was."""
        if self.feedback is None:
            return None
        rid = request_id(headers.get("x-request-id"))
        ids = self.feedback.issue(labels, proba)
        if self.payload_log is not None and ids is not None:
            assert self.schemas is not None
            row_type = self.schemas.row_struct
            self.payload_log.offer_predictions(
                endpoint, rid, model, ids, features, labels, proba, row_type
            )
        return rid, ids

    def _observe_drift(self, features: np.ndarray, proba: np.ndarray) -> None:
        # On the inference thread, once per predict call (a whole micro-batch at a time).
        drift, classes = self.drift, self.classes
        if drift is not None and classes is not None:
            drift.submit(features, classes[np.argmax(proba, axis=1)])

    async def close(self) -> None:
        self.bodies.shutdown(wait=False, cancel_futures=True)
        await self.engine.close()
        if self.payload_log is not None:
            await asyncio.to_thread(self.payload_log.close)
        if self.drift is not None:
            self.drift.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


def _drift_sink(model: LoadedModel, registry: CollectorRegistry) -> DriftSink | None:
    """Start the drift monitor when the model carries reference statistics."""
    if not model.reference:
        log.warning("model has no %s metadata; drift monitoring is off", REFERENCE_KEY)
        return None
    try:
        monitor = DriftMonitor.from_model_metadata(
            {REFERENCE_KEY: model.reference}, registry=registry
        )
    except Exception as exc:
        log.warning("drift monitoring is off: %s", describe(exc))
        return None
    if tuple(monitor.feature_names) != model.feature_names:
        monitor.unregister()
        log.warning("drift reference features differ from the signature; drift monitoring is off")
        return None
    return DriftSink(monitor.observe)


def _without_frames(fn: Callable[..., T], args: tuple) -> T:
    """`fn(*args)`; a refusal (an answer, not a bug) leaves without its traceback. Its frames
    hold what was parsed of the body (24 MB for 1 MiB of `{}` rows), and the executor keeps
    the last exception it carried alive until the next one."""
    try:
        return fn(*args)
    except (ApiError, InputError) as exc:
        fn, args = None, ()  # type: ignore[assignment]  # nor this frame's locals (the body)
        raise exc.with_traceback(None) from None


async def _in_thread(fn: Callable[[], T]) -> T:
    """Run blocking work on a daemon thread: a hung MLflow call must not block process exit
    (the default executor's threads are joined at interpreter exit)."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def runner() -> None:
        result, error = None, None
        try:
            result = fn()
        except BaseException as exc:
            error = exc
        # the loop may be gone when the app stopped while this thread was still loading
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(settle, future, result, error)

    threading.Thread(target=runner, name="model-loader", daemon=True).start()
    return await future
