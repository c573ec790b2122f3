"""The FastAPI application: lifespan, background model loading, endpoints.

State lives on `app.state.service` and reaches handlers through `Depends(get_service)`,
so tests can build independent apps (each with its own Prometheus registry).
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
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import numpy as np
import pydantic_core
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import PlainTextResponse, Response
from prometheus_client import CollectorRegistry
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect

from . import __version__
from .inference import DriftSink, InferenceEngine
from .metrics import ServiceMetrics, default_registry, instrument, render
from .model import (
    LoadedModel,
    load_local,
    resolve_and_download,
    smoke_test,
    stamp,
)
from .reference import REFERENCE_KEY
from .schemas import (
    ErrorBody,
    GenericPredictRequest,
    InputError,
    InvocationsRequest,
    InvocationsResponse,
    ModelSchemas,
    PredictResponse,
    error,
)
from .settings import Settings

log = logging.getLogger("ml_service")
T = TypeVar("T")


class HTTPProblem(Exception):
    """An error answer with a fixed, value-free message."""

    def __init__(self, status: int, detail: Any, headers: dict[str, str] | None = None) -> None:
        super().__init__(status)
        self.status, self.detail, self.headers = status, detail, headers


class Service:
    """Everything a request needs: settings, metrics, the loaded model, the inference engine."""

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
        )
        self.model: LoadedModel | None = None
        self.schemas: ModelSchemas | None = None
        self.classes: np.ndarray | None = None
        self.drift: DriftSink | None = None
        self.shutting_down = False
        self.last_error: str | None = None
        self.load_attempts = 0
        self.scratch = Path(tempfile.mkdtemp(prefix="ml-service-"))
        self.on_model_loaded: list[Callable[[], None]] = []

    # ---------------------------------------------------------------- loading

    async def load_forever(self) -> None:
        """Retry with capped exponential backoff (+jitter) until a model passes its smoke test."""
        s = self.settings
        delay = s.model_load_backoff_initial_seconds
        while self.model is None:
            self.load_attempts += 1
            started = time.perf_counter()
            try:
                model = await _in_thread(self._fetch_and_deserialize)
                await self.engine.run(smoke_test, model)
                self._install(stamp(model, started))
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.metrics.model_load_failures.inc()
                self.last_error = _describe(exc)
                log.warning(
                    "model load attempt %d failed (%s); retrying in %.1fs",
                    self.load_attempts,
                    self.last_error,
                    delay,
                )
            await asyncio.sleep(delay * random.uniform(0.8, 1.2))  # noqa: S311 - jitter
            delay = min(delay * 2, s.model_load_backoff_max_seconds)

    def _fetch_and_deserialize(self) -> LoadedModel:
        try:
            return load_local(resolve_and_download(self.settings, self.scratch))
        finally:
            # Everything needed is in memory now; failed attempts must not pile up downloads.
            for child in self.scratch.iterdir():
                shutil.rmtree(child, ignore_errors=True)

    def _install(self, model: LoadedModel) -> None:
        example = model.input_example[0].tolist() if len(model.input_example) else None
        self.schemas = ModelSchemas.build(model.feature_names, example)
        self.classes = np.asarray(model.classes, dtype=object)
        self.drift = _drift_sink(model, self.registry)
        self.model = model
        self.last_error = None
        self.metrics.record_mismatches(model.mismatches)
        self.metrics.mark_loaded(model.name, model.version, model.run_id, model.load_seconds)
        for callback in self.on_model_loaded:
            callback()
        # Start-up objects (MLflow, sklearn, the model) live as long as the process: moving them
        # out of the collector's generations makes full collections, the tail-latency spikes
        # under load, much shorter. (No gc.collect() first: it would delay readiness.)
        gc.freeze()
        log.info(
            "model %s version %s (run %s) loaded in %.2fs",
            model.name,
            model.version,
            model.run_id,
            model.load_seconds,
        )

    # ---------------------------------------------------------------- predicting

    async def predict(self, model: LoadedModel, features: np.ndarray) -> tuple[list, np.ndarray]:
        rows = features.shape[0]
        if rows > self.settings.max_batch_rows:
            raise HTTPProblem(
                413, f"at most {self.settings.max_batch_rows} rows per request (MAX_BATCH_ROWS)"
            )
        proba = await self.engine.predict_proba(model, features)
        assert self.classes is not None
        label_list = self.classes[np.argmax(proba, axis=1)].tolist()
        self.metrics.record_predictions(model.version, label_list, rows)
        return label_list, proba

    def _observe_drift(self, features: np.ndarray, proba: np.ndarray) -> None:
        # On the inference thread, once per predict call (a whole micro-batch at a time).
        drift, classes = self.drift, self.classes
        if drift is not None and classes is not None:
            drift.submit(features, classes[np.argmax(proba, axis=1)])

    async def close(self) -> None:
        await self.engine.close()
        if self.drift is not None:
            self.drift.close()
        shutil.rmtree(self.scratch, ignore_errors=True)


def _describe(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text[:300]}"


def _drift_sink(model: LoadedModel, registry: CollectorRegistry) -> DriftSink | None:
    """Start the drift monitor when the model carries reference statistics and the module exists."""
    if not model.reference:
        log.warning("model has no ml_service_reference metadata; drift monitoring is off")
        return None
    try:
        from .drift import DriftMonitor
    except ImportError:
        log.warning("ml_service.drift is not available; drift monitoring is off")
        return None
    try:
        monitor = DriftMonitor.from_model_metadata(
            {REFERENCE_KEY: model.reference}, registry=registry
        )
    except Exception as exc:
        log.warning("drift monitoring is off: %s", _describe(exc))
        return None
    if tuple(monitor.feature_names) != model.feature_names:
        monitor.unregister()
        log.warning("drift reference features differ from the signature; drift monitoring is off")
        return None
    return DriftSink(monitor.observe)


async def _in_thread(fn: Callable[[], T]) -> T:
    """Run blocking work on a daemon thread: a hung MLflow call must not block process exit."""
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
            loop.call_soon_threadsafe(_settle, future, result, error)

    threading.Thread(target=runner, name="model-loader", daemon=True).start()
    return await future


def _settle(future: asyncio.Future, result: Any, exc: BaseException | None) -> None:
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(result)


# -------------------------------------------------------------------- dependencies


async def get_service(request: Request) -> Service:
    # async: FastAPI runs sync dependencies on its thread pool, a hop per request for nothing.
    return request.app.state.service


ServiceDep = Annotated[Service, Depends(get_service)]


def _unavailable(svc: Service) -> HTTPProblem:
    reason = "shutting down" if svc.shutting_down else "model not loaded yet"
    return HTTPProblem(503, reason, {"Retry-After": str(svc.settings.retry_after_seconds)})


def loaded_model(svc: Service) -> LoadedModel:
    if svc.model is None:
        raise _unavailable(svc)
    return svc.model


async def require_model(svc: ServiceDep) -> LoadedModel:
    return loaded_model(svc)


def _check_content_type(request: Request) -> None:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise HTTPProblem(415, "Content-Type must be application/json")


async def read_body(request: Request, limit: int) -> bytes:
    """Body up to `limit` bytes: Content-Length is checked first, then the streamed size
    (chunked uploads have no Content-Length)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise HTTPProblem(413, f"request body larger than {limit} bytes (MAX_REQUEST_BYTES)")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise HTTPProblem(413, f"request body larger than {limit} bytes (MAX_REQUEST_BYTES)")
        chunks.append(chunk)
    return b"".join(chunks)


async def json_request(request: Request, svc: Service) -> tuple[LoadedModel, ModelSchemas, bytes]:
    _check_content_type(request)
    body = await read_body(request, svc.settings.max_request_bytes)
    model = loaded_model(svc)
    assert svc.schemas is not None
    return model, svc.schemas, body


def _json_body(schema: str) -> dict[str, Any]:
    """OpenAPI for a required JSON body: the handlers read raw bytes, so FastAPI can't infer it."""
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    # pydantic-core serializes ~5x faster than json.dumps for these nested lists/dicts
    return Response(
        pydantic_core.to_json(content), status, headers=headers, media_type="application/json"
    )


# -------------------------------------------------------------------- app

ERRORS: dict[int | str, dict[str, Any]] = {
    413: {"model": ErrorBody, "description": "Body or row count over the configured limit"},
    415: {"model": ErrorBody, "description": "Content-Type is not application/json"},
    422: {"model": ErrorBody, "description": "Field-level validation errors (values never echoed)"},
    503: {"model": ErrorBody, "description": "No model loaded yet (see Retry-After)"},
}


def create_app(settings: Settings | None = None, registry: CollectorRegistry | None = None):
    settings = settings or Settings()
    registry = registry if registry is not None else default_registry()
    service = Service(settings, registry)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        service.engine.start()
        loader = asyncio.create_task(service.load_forever(), name="model-loader")
        try:
            yield
        finally:
            service.shutting_down = True
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            await service.close()

    app = FastAPI(
        title="ml-service",
        version=__version__,
        description="Predictions from the scikit-learn model registered in MLflow.",
        lifespan=lifespan,
    )
    app.state.service = service
    instrument(app, registry)

    # ------------------------------------------------------------ error handling
    @app.exception_handler(HTTPProblem)
    async def _problem(_: Request, exc: HTTPProblem) -> Response:
        return _json({"detail": exc.detail}, exc.status, exc.headers)

    @app.exception_handler(InputError)
    async def _input(_: Request, exc: InputError) -> Response:
        return _json({"detail": exc.errors}, 422)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> Response:
        errors = [
            error(e.get("loc", ()), e.get("msg", ""), e.get("type", "")) for e in exc.errors()
        ]
        return _json({"detail": errors[:20]}, 422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> Response:
        return _json({"detail": exc.detail}, exc.status_code, exc.headers)

    @app.exception_handler(ClientDisconnect)
    async def _gone(request: Request, _: ClientDisconnect) -> Response:
        # Nobody is left to read an answer; the status only feeds http_requests_total (4xx).
        log.debug("client disconnected during %s %s", request.method, request.url.path)
        return Response(status_code=400)

    @app.exception_handler(Exception)
    async def _crash(request: Request, exc: Exception) -> Response:
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return _json({"detail": "internal error"}, 500)

    # ------------------------------------------------------------ endpoints
    @app.get("/health", tags=["probes"], summary="Liveness: the process serves requests")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/ready",
        tags=["probes"],
        summary="Readiness: a model passed its smoke prediction and no shutdown began",
        responses={503: {"description": "Loading, failed to load, or shutting down"}},
    )
    async def ready(svc: ServiceDep) -> Response:
        if svc.shutting_down or svc.model is None:
            status = "shutting_down" if svc.shutting_down else "loading"
            body: dict[str, Any] = {"status": status, "attempts": svc.load_attempts}
            if svc.last_error and not svc.shutting_down:
                body["last_error"] = svc.last_error
            return _json(body, 503, {"Retry-After": str(svc.settings.retry_after_seconds)})
        return _json(
            {"status": "ready", "model": {"name": svc.model.name, "version": svc.model.version}}
        )

    @app.get(
        "/metrics",
        tags=["probes"],
        summary="Prometheus exposition",
        response_class=PlainTextResponse,
        responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
    )
    async def metrics(svc: ServiceDep) -> Response:
        payload, content_type = render(svc.registry)
        return Response(payload, media_type=content_type)

    @app.get(
        "/model", tags=["model"], summary="The model being served", responses={503: ERRORS[503]}
    )
    async def model_info(model: Annotated[LoadedModel, Depends(require_model)]) -> Response:
        return _json(model.describe())

    @app.post(
        "/predict",
        tags=["model"],
        summary="Class and class probabilities per row",
        response_model=PredictResponse,
        responses=ERRORS,
        openapi_extra=_json_body("PredictRequest"),
    )
    async def predict(request: Request) -> Response:
        # The closure's service, not a dependency: resolving one costs per request on the hot path.
        model, schemas, body = await json_request(request, service)
        features = schemas.parse_predict(body)
        labels, proba = await service.predict(model, features)
        classes = model.classes
        predictions = [
            {"class": label, "probabilities": dict(zip(classes, row, strict=True))}
            for label, row in zip(labels, proba.tolist(), strict=True)
        ]
        return _json(
            {"model": {"name": model.name, "version": model.version}, "predictions": predictions}
        )

    @app.post(
        "/invocations",
        tags=["model"],
        summary="MLflow scoring-server compatible predictions",
        response_model=InvocationsResponse,
        responses=ERRORS,
        openapi_extra=_json_body("InvocationsRequest"),
    )
    async def invocations(request: Request) -> Response:
        model, schemas, body = await json_request(request, service)
        try:
            payload = pydantic_core.from_json(body, allow_inf_nan=True)
        except ValueError:
            raise InputError([error((), "Invalid JSON", "json_invalid")]) from None
        features = schemas.parse_invocations(payload)
        labels, _ = await service.predict(model, features)
        return _json({"predictions": labels})

    # ------------------------------------------------------------ OpenAPI with the model's fields
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        request_model = (
            service.schemas.predict_request if service.schemas else GenericPredictRequest
        )
        for model_cls, name in ((request_model, "PredictRequest"), (InvocationsRequest, None)):
            js = model_cls.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(js.pop("$defs", {}))
            components[name or model_cls.__name__] = js
        if service.schemas is not None:
            components["InvocationsRequest"] = service.schemas.invocations_json_schema(
                "#/components/schemas/Instance"
            )
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    # The schema names the features only once a model is loaded: rebuild it then.
    service.on_model_loaded.append(lambda: setattr(app, "openapi_schema", None))
    return app
