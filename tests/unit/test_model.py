"""Why a load failed, as /ready says it: one public reason per failure class, a fixed sentence
each (never an error text, a URL or a host name); the detail goes to the log, redacted and one
line. Loading real models in-process: test_validation.py, test_metrics.py; against MLflow:
tests/integration."""

from __future__ import annotations

import re

import pytest
from ml_service.serving.model import (
    REASON_MESSAGES,
    LoadError,
    ModelRejectedError,
    Reason,
    _classify,
    describe,
)


class MlflowLike(Exception):
    def __init__(self, error_code: str) -> None:
        super().__init__(f"RESOURCE at http://user:pw@mlflow.internal:5000 {error_code}")
        self.error_code = error_code


class BotoLike(Exception):
    def __init__(self, code: str, status: int) -> None:
        super().__init__(code)
        self.response = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}


@pytest.mark.parametrize(
    ("exc", "phase", "reason"),
    [
        (LoadError(Reason.MODEL_NOT_FOUND, "x"), "download", Reason.MODEL_NOT_FOUND),
        (ModelRejectedError("not a classifier"), "resolve", Reason.MODEL_REJECTED),
        (ValueError("cannot unpickle"), "load", Reason.MODEL_REJECTED),
        (MlflowLike("PERMISSION_DENIED"), "resolve", Reason.UNAUTHORIZED),
        (BotoLike("AccessDenied", 403), "download", Reason.UNAUTHORIZED),
        (BotoLike("SlowDown", 503), "download", Reason.ARTIFACTS_UNAVAILABLE),
        (MlflowLike("RESOURCE_DOES_NOT_EXIST"), "resolve", Reason.MODEL_NOT_FOUND),
        (ConnectionError("refused"), "resolve", Reason.REGISTRY_UNREACHABLE),
        (OSError("disk full"), "download", Reason.ARTIFACTS_UNAVAILABLE),
    ],
    ids=lambda v: v if isinstance(v, str) else type(v).__name__,
)
def test_each_failure_has_its_reason(exc: BaseException, phase: str, reason: Reason) -> None:
    assert _classify(exc, phase) is reason


def test_every_reason_has_a_fixed_sentence_without_urls_or_hosts() -> None:
    assert set(REASON_MESSAGES) == set(Reason)
    for reason in Reason:
        assert reason.message and not re.search(r"://|\.svc|:\d{2,5}\b|@", reason.message), reason


def test_describe_is_one_redacted_bounded_line() -> None:
    exc = MlflowLike("RESOURCE_DOES_NOT_EXIST")
    exc.args = (f"{exc.args[0]} {'x' * 1000}\nTraceback (most recent call last):\n  boom",)
    line = describe(exc)
    assert line.startswith("MlflowLike: RESOURCE at http://***@mlflow.internal:5000")
    assert "\n" not in line and "user:pw" not in line and len(line) <= len("MlflowLike: ") + 300
