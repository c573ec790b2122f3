"""The error table: every body is JSON of a fixed shape, names fields back only when they look
like identifiers, never carries what the caller sent or a traceback (over HTTP: test_validation.py,
tests/adversarial)."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest
from ml_service.serving import errors
from ml_service.serving.errors import (
    MAX_ERRORS,
    ApiError,
    MlflowError,
    error,
    safe_errors,
    too_many_rows,
)
from pydantic import BaseModel, ValidationError
from starlette.requests import Request

SENTINEL = "s3cr3t-value-4242"


def test_api_error_body_and_close() -> None:
    response = ApiError(413, "too big", {"Retry-After": "1"}, close=True).response()
    assert response.status_code == 413
    assert json.loads(response.body) == {"detail": "too big"}
    assert response.headers["connection"] == "close" and response.headers["retry-after"] == "1"
    assert "connection" not in ApiError(400, "bad").response().headers


def test_too_many_rows_names_the_limit_and_its_setting() -> None:
    exc = too_many_rows(7)
    assert (exc.status, exc.message) == (413, "at most 7 rows per request (MAX_BATCH_ROWS)")


@pytest.mark.parametrize(
    ("status", "code"),
    [(408, "BAD_REQUEST"), (413, "REQUEST_LIMIT_EXCEEDED"), (503, "TEMPORARILY_UNAVAILABLE"),
     (400, "BAD_REQUEST")],
)  # fmt: skip
def test_mlflow_shape_uses_mlflow_codes(status: int, code: str) -> None:
    response = MlflowError.of(ApiError(status, "msg", {"Retry-After": "2"})).response()
    assert response.status_code == status
    assert json.loads(response.body) == {"error_code": code, "message": "msg"}
    assert response.headers["retry-after"] == "2"


def test_mlflow_unsupported_media_type_is_plain_text() -> None:
    response = MlflowError.of(ApiError(415, "Content-Type must be application/json")).response()
    assert response.headers["content-type"].startswith("text/plain")
    assert response.body == b"Content-Type must be application/json"


@pytest.mark.parametrize(
    ("loc", "shown"),
    [
        (("instances", 0, "feature_1"), ["instances", 0, "feature_1"]),
        (("instances", 0, f"<img src={SENTINEL}>"), ["instances", 0, "<field>"]),
        (("instances", 3, "k" * 65), ["instances", 3, "<field>"]),
        (("instances", 3, "k" * 64), ["instances", 3, "k" * 64]),
    ],
)
def test_field_names_are_named_back_only_when_they_look_like_identifiers(
    loc: tuple, shown: list
) -> None:
    assert error(loc, "msg", "type") == {"loc": shown, "msg": "msg", "type": "type"}


def test_safe_errors_drop_input_values_and_are_bounded() -> None:
    class Row(BaseModel):
        a: float

    class Rows(BaseModel):
        rows: list[Row]

    with pytest.raises(ValidationError) as info:
        Rows.model_validate({"rows": [{"a": SENTINEL}] * (MAX_ERRORS + 5)})
    safe = safe_errors(info.value, prefix=("body",))
    assert len(safe) == MAX_ERRORS
    assert safe[0] == {
        "loc": ["body", "rows", 0, "a"],
        "msg": safe[0]["msg"],
        "type": "float_parsing",
    }
    assert SENTINEL not in json.dumps(safe)


def test_an_unexpected_exception_is_a_bare_500_and_a_log_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    scope = {
        "type": "http",
        "method": "POST",
        "path": "/predict",
        "headers": [],
        "query_string": b"",
    }
    with caplog.at_level(logging.ERROR, logger="ml_service"):
        response = asyncio.run(errors.HANDLERS[Exception](Request(scope), KeyError(SENTINEL)))
    assert response.status_code == 500
    assert json.loads(response.body) == {"detail": "internal error"}
    assert "unhandled error on POST /predict: KeyError" in caplog.text
