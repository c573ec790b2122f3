"""ml-service's own endpoints: probes, the model description, `/predict`, `/metrics`."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response

from .body import read_body, require_json
from .deps import ModelDep, ServiceDep, service_of
from .errors import ERROR_RESPONSES, json_response
from .metrics import render
from .schemas import FeedbackResponse, PredictResponse

router = APIRouter()
# Included only with PREDICTION_SIGNING_SECRET set (app.py).
feedback_router = APIRouter()


def json_body(schema: str) -> dict[str, Any]:
    """The OpenAPI request body of an endpoint that reads its raw body (openapi.py adds the
    schema to the components)."""
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


@router.get("/health", tags=["probes"], summary="Liveness: the process serves requests")
async def health() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/ready",
    tags=["probes"],
    summary="Readiness: a model passed its smoke prediction and no shutdown began",
    responses={503: {"description": "Loading, failed to load (`reason` says why), shutting down"}},
)
async def ready(svc: ServiceDep) -> Response:
    model = svc.model
    if model is not None and not svc.shutting_down:
        return json_response(
            {"status": "ready", "model": {"name": model.name, "version": model.version}}
        )
    body: dict[str, Any] = {"status": "shutting_down" if svc.shutting_down else "loading"}
    if not svc.shutting_down:
        # a fixed sentence per reason: never an error text, a URL or a host name
        body |= {"reason": svc.reason.value, "message": svc.reason.message}
    body["attempts"] = svc.load_attempts
    return json_response(body, 503, {"Retry-After": str(svc.settings.retry_after_seconds)})


@router.get(
    "/metrics",
    tags=["probes"],
    summary="Prometheus exposition",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(svc: ServiceDep) -> Response:
    payload, content_type = render(svc.registry)
    return Response(payload, media_type=content_type)


@router.get(
    "/model",
    tags=["model"],
    summary="The model being served",
    responses={503: ERROR_RESPONSES[503]},
)
async def model_info(model: ModelDep) -> Response:
    return json_response(model.describe())


@router.post(
    "/predict",
    tags=["model"],
    summary="Class and class probabilities per row",
    response_model=PredictResponse,
    responses=ERROR_RESPONSES,
    openapi_extra=json_body("PredictRequest"),
)
async def predict(request: Request) -> Response:
    svc = service_of(request)
    require_json(request)
    body = await read_body(request, svc.settings)
    model = svc.require_model()
    assert svc.schemas is not None
    features = svc.schemas.parse_predict(body, svc.settings.max_batch_rows)
    proba = await svc.predict_proba(model, features)
    labels = svc.labels(model, proba)
    classes, rows = model.classes, proba.tolist()
    predictions = [
        {"class": label, "probabilities": dict(zip(classes, row, strict=True))}
        for label, row in zip(labels, rows, strict=True)
    ]
    ref = {"name": model.name, "version": model.version}
    identified = svc.identify(request.headers, "/predict", model, features, labels, rows)
    if identified is None:
        return json_response({"model": ref, "predictions": predictions})
    rid, ids = identified
    for prediction, pid in zip(predictions, ids or (), strict=False):
        prediction["prediction_id"] = pid
    return json_response(
        {"model": ref, "request_id": rid, "predictions": predictions}, headers={"X-Request-ID": rid}
    )


@feedback_router.post(
    "/feedback",
    tags=["model"],
    summary="Labels (ground truth) for earlier predictions, by prediction ID",
    response_model=FeedbackResponse,
    responses={
        **ERROR_RESPONSES,
        422: {
            "model": ERROR_RESPONSES[422]["model"],
            "description": "The whole batch is refused, nothing is counted: an item's "
            "prediction ID is malformed, not issued by this service, expired, or its label is "
            "not one of the model's classes (items named by index, values never echoed)",
        },
    },
    openapi_extra=json_body("FeedbackRequest"),
)
async def feedback(request: Request) -> Response:
    svc = service_of(request)
    require_json(request)
    body = await read_body(request, svc.settings)
    model = svc.require_model()
    assert svc.feedback is not None
    answer, accepted = svc.feedback.receive(body, model.classes)
    if svc.payload_log is not None:
        svc.payload_log.offer_labels(accepted)
    return json_response(answer)
