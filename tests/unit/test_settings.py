"""Settings: the env var names and defaults of the contract, and rejection of bad values."""

from __future__ import annotations

import pytest
from ml_service.serving.settings import Settings
from pydantic import ValidationError

ENV_NAMES = [
    "MODEL_URI",
    "MLFLOW_TRACKING_URI",
    "HOST",
    "PORT",
    "LOG_LEVEL",
    "MAX_REQUEST_BYTES",
    "MAX_BATCH_ROWS",
    "MODEL_LOAD_BACKOFF_MAX_SECONDS",
    "SHUTDOWN_GRACE_SECONDS",
    "SHUTDOWN_DRAIN_SECONDS",
    "NUMERIC_THREADS",
    "MICROBATCH_WAIT_MS",
    "MICROBATCH_MAX_ROWS",
    "MODEL_NAME",
    "MODEL_VERSION",
]


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ENV_NAMES:
        monkeypatch.delenv(name, raising=False)


def test_defaults_match_the_contract() -> None:
    s = Settings()
    assert s.model_uri == "models:/ml-service@champion"
    assert s.mlflow_tracking_uri is None
    assert (s.host, s.port, s.log_level) == ("127.0.0.1", 8000, "info")
    assert (s.max_request_bytes, s.max_batch_rows) == (1_048_576, 1000)
    assert s.model_load_backoff_max_seconds == 30
    assert s.shutdown_grace_seconds == 20
    assert s.numeric_threads == 1
    assert s.microbatch_wait_ms == 2
    assert s.model_name is None and s.model_version is None


def test_plain_env_var_names(monkeypatch: pytest.MonkeyPatch) -> None:
    values = {
        "MODEL_URI": "models:/ml-service/3",
        "MLFLOW_TRACKING_URI": "http://127.0.0.1:5999",
        "HOST": "0.0.0.0",
        "PORT": "8080",
        "LOG_LEVEL": "WARNING",
        "MAX_REQUEST_BYTES": "2048",
        "MAX_BATCH_ROWS": "10",
        "MODEL_LOAD_BACKOFF_MAX_SECONDS": "4",
        "SHUTDOWN_GRACE_SECONDS": "7",
        "NUMERIC_THREADS": "2",
        "MICROBATCH_WAIT_MS": "3",
        "MODEL_NAME": "local-model",
        "MODEL_VERSION": "7",
    }
    for key, value in values.items():
        monkeypatch.setenv(key, value)
    s = Settings()
    assert s.model_uri == "models:/ml-service/3"
    assert s.mlflow_tracking_uri == "http://127.0.0.1:5999"
    assert (s.host, s.port, s.log_level) == ("0.0.0.0", 8080, "warning")
    assert (s.max_request_bytes, s.max_batch_rows) == (2048, 10)
    assert s.model_load_backoff_max_seconds == 4
    assert s.shutdown_grace_seconds == 7
    assert s.numeric_threads == 2
    assert s.microbatch_wait_ms == 3
    assert (s.model_name, s.model_version) == ("local-model", "7")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("PORT", "eighty"),
        ("PORT", "70000"),
        ("LOG_LEVEL", "loud"),
        ("MAX_BATCH_ROWS", "0"),
        ("MAX_REQUEST_BYTES", "10"),
        ("NUMERIC_THREADS", "0"),
        ("MICROBATCH_WAIT_MS", "-1"),
        ("MODEL_LOAD_BACKOFF_MAX_SECONDS", "0"),
        ("SHUTDOWN_GRACE_SECONDS", "-5"),
        ("MODEL_URI", ""),
    ],
)
def test_bad_values_are_rejected(monkeypatch: pytest.MonkeyPatch, name: str, value: str) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert name.lower() in str(info.value).lower()


def test_backoff_initial_cannot_exceed_max(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_LOAD_BACKOFF_MAX_SECONDS", "1")
    monkeypatch.setenv("MODEL_LOAD_BACKOFF_INITIAL_SECONDS", "5")
    with pytest.raises(ValidationError, match="MODEL_LOAD_BACKOFF_INITIAL_SECONDS"):
        Settings()
