"""Errors the API answers with, and the one table that turns exceptions into responses.

Every error body is JSON and value-free: it never carries what the caller sent (field names are
named back only when they look like identifiers) and never a traceback. Two shapes exist:
`{"detail": ...}` on the ml-service endpoints, and MLflow's `{"error_code", "message"}` on the
MLflow scoring-protocol endpoints (see `mlflow_api.py`).
"""

from __future__ import annotations

import logging
import re
from typing import Any

import pydantic_core
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

log = logging.getLogger("ml_service")

MAX_ERRORS = 20
MAX_LOC_CHARS = 64
_NAME_RE = re.compile(rf"[A-Za-z_][A-Za-z0-9_.\-]{{0,{MAX_LOC_CHARS - 1}}}")


class ApiError(Exception):
    """An answer with a fixed, value-free message. `close` ends the connection after it."""

    def __init__(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        *,
        close: bool = False,
    ) -> None:
        super().__init__(status, message)
        self.status, self.message = status, message
        self.headers = dict(headers or {})
        if close:
            self.headers["Connection"] = "close"

    def response(self) -> Response:
        return json_response({"detail": self.message}, self.status, self.headers)


def too_many_rows(max_rows: int) -> ApiError:
    """The 413 of a request over MAX_BATCH_ROWS, whichever format carried its rows."""
    return ApiError(413, f"at most {max_rows} rows per request (MAX_BATCH_ROWS)")


# MLflow's own codes (mlflow.protos.databricks_pb2.ErrorCode) for the statuses we add.
_MLFLOW_CODES = {408: "BAD_REQUEST", 413: "REQUEST_LIMIT_EXCEEDED", 503: "TEMPORARILY_UNAVAILABLE"}


class MlflowError(ApiError):
    """An error in MLflow's scoring-server shape: `{"error_code": ..., "message": ...}`."""

    def __init__(
        self,
        status: int,
        error_code: str,
        message: str,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(status, message, headers)
        self.error_code = error_code

    @classmethod
    def of(cls, exc: ApiError) -> MlflowError:
        if isinstance(exc, MlflowError):
            return exc
        code = _MLFLOW_CODES.get(exc.status, "BAD_REQUEST")
        return cls(exc.status, code, exc.message, exc.headers)

    def response(self) -> Response:
        if self.status == 415:  # MLflow answers unsupported content types in plain text
            return Response(self.message, 415, headers=self.headers, media_type="text/plain")
        body = {"error_code": self.error_code, "message": self.message}
        return json_response(body, self.status, self.headers)


class InputError(Exception):
    """Client input failed validation; `errors` are safe to return (no input values)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} validation error(s)")
        self.errors = errors[:MAX_ERRORS]


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    detail: list[ErrorItem] | str


class MlflowErrorBody(BaseModel):
    error_code: str
    message: str


# The OpenAPI side of the table below.
ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    408: {"model": ErrorBody, "description": "The body did not arrive in time"},
    413: {"model": ErrorBody, "description": "Body or row count over the configured limit"},
    415: {"model": ErrorBody, "description": "Content-Type is not application/json"},
    422: {"model": ErrorBody, "description": "Field-level validation errors (values never echoed)"},
    503: {"model": ErrorBody, "description": "No model loaded yet, or shutting down (Retry-After)"},
}


def json_response(content: Any, status: int = 200, headers: dict[str, str] | None = None):
    # pydantic-core serializes ~5x faster than json.dumps for these nested lists/dicts
    return Response(
        pydantic_core.to_json(content), status, headers=headers, media_type="application/json"
    )


def _loc_part(part: Any) -> str | int:
    """Field names are named back (that is what makes errors field-level) only when they look
    like identifiers; anything else the caller put in a key is replaced, not echoed."""
    if isinstance(part, int):
        return part
    text = str(part)
    return text if _NAME_RE.fullmatch(text) else "<field>"


def error(loc: tuple | list, msg: str, type_: str) -> dict[str, Any]:
    return {"loc": [_loc_part(p) for p in loc], "msg": msg, "type": type_}


def safe_errors(exc: ValidationError | RequestValidationError, prefix: tuple = ()) -> list[dict]:
    """At most MAX_ERRORS field-level errors without the input values."""
    if isinstance(exc, ValidationError):
        raw = exc.errors(include_url=False, include_context=False, include_input=False)
    else:
        raw = exc.errors()
    return [
        error((*prefix, *e.get("loc", ())), e.get("msg", ""), e.get("type", ""))
        for e in raw[:MAX_ERRORS]
    ]


async def _api_error(_: Request, exc: ApiError) -> Response:
    return exc.response()


async def _input_error(_: Request, exc: InputError) -> Response:
    return json_response({"detail": exc.errors}, 422)


async def _request_validation(_: Request, exc: RequestValidationError) -> Response:
    return json_response({"detail": safe_errors(exc)}, 422)


async def _http_exception(_: Request, exc: StarletteHTTPException) -> Response:
    # 404/405 from routing: the framework's messages are fixed texts, never input
    return json_response({"detail": exc.detail}, exc.status_code, exc.headers)


async def _client_disconnect(request: Request, _: ClientDisconnect) -> Response:
    # Nobody is left to read an answer; the status only feeds http_requests_total (4xx).
    log.debug("client disconnected during %s %s", request.method, request.url.path)
    return Response(status_code=400)


async def _crash(request: Request, exc: Exception) -> Response:
    log.error(
        "unhandled error on %s %s: %s",
        request.method,
        request.url.path,
        type(exc).__name__,
        exc_info=exc,
    )
    return json_response({"detail": "internal error"}, 500)


HANDLERS: dict[type[Exception], Any] = {
    ApiError: _api_error,
    InputError: _input_error,
    RequestValidationError: _request_validation,
    StarletteHTTPException: _http_exception,
    ClientDisconnect: _client_disconnect,
    Exception: _crash,
}


def install(app: FastAPI) -> None:
    for exc_type, handler in HANDLERS.items():
        app.add_exception_handler(exc_type, handler)
