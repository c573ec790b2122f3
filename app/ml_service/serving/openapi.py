"""OpenAPI with the model's own feature names as typed request fields.

The prediction endpoints read raw bytes (faster than FastAPI's body parsing), so FastAPI cannot
infer their request schemas: they are added here, from the loaded model's signature once it is
loaded (a generic one before).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

from .schemas import FeedbackRequest, GenericPredictRequest, ModelSchemas
from .service import Service

REF = "#/components/schemas/{model}"


def invocations_schema(row: dict[str, Any], n: int) -> dict[str, Any]:
    """MLflow's JSON payload shapes, with this model's columns (`row`: one record's schema)."""
    records = {"type": "array", "items": row, "minItems": 1}
    columns = {"type": "array", "items": {"type": "string"}, "minItems": 1}
    rows = {"type": "array", "items": {"type": "array", "minItems": n}, "minItems": 1}
    split = {
        "type": "object",
        "required": ["data"],
        "properties": {"columns": columns, "data": rows, "index": {"type": "array"}},
    }

    def variant(key: str, schema: dict[str, Any]) -> dict[str, Any]:
        return {
            "type": "object",
            "required": [key],
            "properties": {key: schema, "params": {"type": "object"}},
        }

    return {
        "title": "InvocationsRequest",
        "description": "MLflow scoring-server payload: exactly one of the four format keys "
        "(extra columns are ignored, as by `mlflow models serve`)",
        "oneOf": [
            variant("dataframe_split", split),
            variant("dataframe_records", records),
            variant("instances", records),
            variant("inputs", {"anyOf": [records, {"type": "object"}]}),
        ],
    }


def _describe_prediction_ids(components: dict[str, Any]) -> None:
    """What prediction IDs add to `/predict` answers, and the `/feedback` body."""
    components["FeedbackRequest"] = FeedbackRequest.model_json_schema(ref_template=REF)
    components.update(components["FeedbackRequest"].pop("$defs", {}))
    components["PredictResponse"]["properties"]["request_id"] = {
        "type": "string",
        "title": "Request Id",
        "description": "the client's X-Request-ID when well formed, else a random one",
    }
    components["PredictResponse"]["required"].append("request_id")
    components["Prediction"]["properties"]["prediction_id"] = {
        "type": "string",
        "title": "Prediction Id",
        "description": "signed reference to this row, for POST /feedback",
    }


def install(app: FastAPI, service: Service) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema:
            return app.openapi_schema
        schema = get_openapi(
            title=app.title, version=app.version, description=app.description, routes=app.routes
        )
        components = schema.setdefault("components", {}).setdefault("schemas", {})
        schemas: ModelSchemas | None = service.schemas
        request_model = schemas.predict_request if schemas else GenericPredictRequest
        js = request_model.model_json_schema(ref_template=REF)
        components.update(js.pop("$defs", {}))
        components["PredictRequest"] = js
        if schemas:
            row, n = {"$ref": REF.format(model="Instance")}, len(schemas.feature_names)
        else:
            row, n = {"type": "object", "additionalProperties": {"type": "number"}}, 1
        components["InvocationsRequest"] = invocations_schema(row, n)
        if service.feedback is not None:
            _describe_prediction_ids(components)
        app.openapi_schema = schema
        return schema

    app.openapi = openapi  # type: ignore[method-assign]
    # The schema names the features only once a model is loaded: rebuild it then.
    service.on_model_loaded.append(lambda _model: setattr(app, "openapi_schema", None))
