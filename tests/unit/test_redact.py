"""Credentials never reach text: URL userinfo, signed query parameters, credential env values.
The running app's log lines and responses are attacked in tests/adversarial/test_secrets.py."""

from __future__ import annotations

import pytest
from ml_service.redact import redact, without_userinfo


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("GET https://u:p@h/x failed", "GET https://***@h/x failed"),
        ("postgresql://mlflow:pw@db:5432/m", "postgresql://***@db:5432/m"),
        ("'http://token@h' and http://plain:5000/x", "'http://***@h' and http://plain:5000/x"),
        ("https://u:p@ss@h/x", "https://***@h/x"),  # an unescaped @ in the password
        ("https://h/x?X-Amz-Signature=abc&a=1", "https://h/x?X-Amz-Signature=***&a=1"),
        ("mail someone@example.com", "mail someone@example.com"),
    ],
)
def test_redact_masks_url_credentials(text: str, masked: str) -> None:
    assert redact(text, secrets=[]) == masked


def test_redact_masks_credential_env_values(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "hunter2-long")
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "alice-the-user")
    monkeypatch.setenv("SOME_FLAG", "visible-value")
    assert redact("alice-the-user hunter2-long visible-value") == "*** *** visible-value"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://user:s3cret@mlflow.example.com:8443/ml/", "https://mlflow.example.com:8443/ml/"),
        ("ssh://git@github.com/o/r.git", "ssh://github.com/o/r.git"),
        ("https://github.com/o/r.git", "https://github.com/o/r.git"),
        ("git@github.com:o/r.git", "git@github.com:o/r.git"),  # scp syntax holds no password
    ],
)
def test_without_userinfo(url: str, shown: str) -> None:
    assert without_userinfo(url) == shown
