"""No credential, token or URL userinfo reaches a response body, a header or a log line.

Sentinel values sit in every place MLflow and boto read credentials from; the app is pointed at
a tracking server that refuses (nothing listens) and at one that answers "no such model", with
debug logging on. Every endpoint's answer and the whole log are then searched for them.
"""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest
from support.app_server import app_server
from support.mlflow import MlflowServer
from support.net import free_port
from support.poll import wait_until

SECRETS = {
    "MLFLOW_TRACKING_USERNAME": "sentinel-user-5b1e",
    "MLFLOW_TRACKING_PASSWORD": "sentinel-password-5b1e",
    "MLFLOW_TRACKING_TOKEN": "sentinel-token-5b1e",
    "AWS_ACCESS_KEY_ID": "SENTINELACCESSKEY5B1E",
    "AWS_SECRET_ACCESS_KEY": "sentinel-secret-key-5b1e",
    "AWS_SESSION_TOKEN": "sentinel-session-token-5b1e",
    "MLFLOW_S3_ENDPOINT_URL": "http://sentinel-s3user:sentinel-s3pass-5b1e@127.0.0.1:9",
}
USERINFO = ("sentinel-uri-user", "sentinel-uri-pass-5b1e")
NEEDLES = [*SECRETS.values(), *USERINFO, "sentinel-s3user", "sentinel-s3pass-5b1e"]
PATHS = ["/ready", "/health", "/model", "/metrics", "/openapi.json", "/docs", "/ping"]


def _userinfo_uri(port: int) -> str:
    return f"http://{USERINFO[0]}:{USERINFO[1]}@127.0.0.1:{port}"


@pytest.mark.parametrize("registry", ["refusing", "no-such-model"])
def test_credentials_never_leave_the_process(
    registry: str, mlflow_server: MlflowServer, tmp_path: Path
) -> None:
    port = free_port() if registry == "refusing" else mlflow_server.port
    with app_server(
        model_uri="models:/no-such-model/7",
        tracking_uri=_userinfo_uri(port),
        log_dir=tmp_path,
        env_extra=SECRETS,
        LOG_LEVEL="debug",
        MODEL_LOAD_BACKOFF_INITIAL_SECONDS=0.2,
        MODEL_LOAD_BACKOFF_MAX_SECONDS=0.5,
    ) as app:
        wait_until(  # the error path, 3 times
            lambda: "load attempt 3 failed" in app.log_tail(1_000_000),
            60, "a third failed load attempt", 0.2, app.log_tail,
        )  # fmt: skip
        answers = []
        with httpx.Client(timeout=10) as http:
            for path in PATHS:
                answers.append(http.get(app.url(path)))
            for path in ("/predict", "/invocations"):
                answers.append(http.post(app.url(path), json={"instances": [{"a": 1}]}))
        ready = answers[0].json()
        log = app.log_tail(5_000_000)
    for response in answers:
        text = response.text + "".join(f"{k}: {v}\n" for k, v in response.headers.items())
        for needle in NEEDLES:
            assert needle not in text, (response.request.url.path, needle)
    for needle in NEEDLES:
        assert needle not in log, needle
    expected = "registry_unreachable" if registry == "refusing" else "model_not_found"
    assert ready["reason"] == expected, ready
    assert "127.0.0.1" not in ready["message"], "/ready must not name hosts"


def test_no_row_of_the_data_and_no_local_path_is_published(
    tiny_model: Path, tmp_path: Path
) -> None:
    """`/openapi.json` (and `/docs`) showed the model's input example, a real row of the
    training data, and `/model` the server's model path."""
    rows = json.loads((tiny_model / "input_example.json").read_text())["data"]
    with app_server(model_uri=str(tiny_model), wait_ready=True, log_dir=tmp_path) as app:
        schema = httpx.get(app.url("/openapi.json")).json()["components"]["schemas"]
        model = httpx.get(app.url("/model")).text
    example = schema["Instance"]["examples"][0]
    shown = json.dumps(schema)
    for row in rows:
        assert list(example.values()) != row
        assert not any(repr(float(v)) in shown for v in row), "a training value is published"
    assert str(tiny_model) not in model and str(tiny_model.parent) not in model
