"""ml-service's own endpoints: probes, the model description, `/predict`, `/metrics`.

The probes and `/metrics` are served on the probe listener too (probes.py), with the same
answers (`Service.liveness`, `Service.readiness`); the kubelet and Prometheus use that one.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import PlainTextResponse, Response
from starlette.datastructures import Headers

from .body import OFF_LOOP_BYTES, read_body, require_json
from .deps import ModelDep, ServiceDep, service_of
from .errors import ERROR_RESPONSES, json_response
from .inference import client_gone
from .model import LoadedModel
from .schemas import FeedbackResponse, PredictResponse
from .service import Service

router = APIRouter()
# Included only with PREDICTION_SIGNING_SECRET set (app.py).
feedback_router = APIRouter()


def json_body(schema: str) -> dict[str, Any]:
    """The OpenAPI request body of an endpoint that reads its raw body (openapi.py adds the
    schema to the components)."""
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": ref}}}}


# Answers with more rows than this are built on the bodies thread (256 rows: ~1 ms of work, 1,000
# rows ~4 ms). Below it the hand-off costs more than it saves: at 64, a lone client of 100-row
# requests was answered 10 % less often.
OFF_LOOP_ROWS = 256


@router.get(
    "/health",
    tags=["probes"],
    summary="Liveness: the process serves requests, its event loop and inference thread run",
    responses={503: {"description": "The event loop is blocked or the inference thread stopped"}},
)
async def health(svc: ServiceDep) -> Response:
    status, body = svc.liveness()
    return json_response(body, status)


@router.get(
    "/ready",
    tags=["probes"],
    summary="Readiness: a model passed its smoke prediction and no shutdown began",
    responses={503: {"description": "Loading, failed to load (`reason` says why), shutting down"}},
)
async def ready(svc: ServiceDep) -> Response:
    status, body, headers = svc.readiness()
    return json_response(body, status, headers)


@router.get(
    "/metrics",
    tags=["probes"],
    summary="Prometheus exposition",
    response_class=PlainTextResponse,
    responses={200: {"content": {"text/plain": {"schema": {"type": "string"}}}}},
)
async def metrics(svc: ServiceDep) -> Response:
    payload, content_type = await svc.exposition()
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
    schemas = svc.schemas
    assert schemas is not None
    max_rows = svc.settings.max_batch_rows
    if len(body) > OFF_LOOP_BYTES:
        features = await svc.offload(schemas.parse_predict, body, max_rows)
    else:
        features = schemas.parse_predict(body, max_rows)
    proba = await svc.predict_proba(model, features, client_gone(request.scope))
    labels = svc.labels(model, proba)
    if len(labels) > OFF_LOOP_ROWS:
        return await svc.offload(_answer, svc, request.headers, model, features, labels, proba)
    return _answer(svc, request.headers, model, features, labels, proba)


def _answer(
    svc: Service,
    headers: Headers,
    model: LoadedModel,
    features: np.ndarray,
    labels: list[str],
    proba: np.ndarray,
) -> Response:
    classes, rows = model.classes, proba.tolist()
    predictions = [
        {"class": label, "probabilities": dict(zip(classes, row, strict=True))}
        for label, row in zip(labels, rows, strict=True)
    ]
    ref = {"name": model.name, "version": model.version}
    identified = svc.identify(headers, "/predict", model, features, labels, rows)
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
