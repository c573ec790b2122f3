"""Sentinel test: every secret of the platform is a random sentinel string handed over in the
environment variables MLflow, libpq and boto read; none may appear in any HTTP answer the tier
received or in any log it produced (app, mlflow server, PostgreSQL, MinIO, training, migration).

Runs last (conftest.py) so it also reads what the fault tests left behind, and drives the risky
states itself so it is meaningful on its own: ready apps in both modes, every endpoint with good
and bad input, refused credentials, a tracking URI carrying userinfo.
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest
from support.app_server import AppServer, app_server
from support.mlflow import RegisteredModel
from support.mlflow_platform import Credentials, PlatformServer, sentinel
from support.poll import wait_until

from .conftest import EXTRA_SECRETS, LOG_DIRS, RESPONSES

pytestmark = pytest.mark.runs_last


def probe(app: AppServer, http: httpx.Client) -> None:
    """Every endpoint, good and bad requests, whatever state the app is in."""
    for path in ("/health", "/ready", "/model", "/metrics", "/openapi.json", "/docs", "/nope"):
        http.get(app.url(path))
    for path in ("/predict", "/invocations"):
        http.post(app.url(path), json={"instances": [{"x": 1}]})
        http.post(app.url(path), content=b"{not json", headers={"content-type": "application/json"})
        http.post(app.url(path), content=b"a=1", headers={"content-type": "text/plain"})


def log_files() -> list[Path]:
    files: list[Path] = []
    for entry in LOG_DIRS:
        files += [entry] if entry.is_file() else [p for p in entry.rglob("*") if p.is_file()]
    return files


def leaks(texts: dict[str, str], secrets: dict[str, str]) -> list[str]:
    """`where: secret name` for every secret found in any text."""
    return [f"{where}: {name}" for where, text in texts.items()
            for name, value in secrets.items() if value in text]  # fmt: skip


def test_scanner_finds_a_planted_secret(creds: Credentials):
    texts = {"clean": "nothing here", "planted": f"Authorization failed for {creds.s3_secret_key}"}
    assert leaks(texts, creds.values()) == ["planted: s3_secret_key"]


def test_no_secret_in_any_response_or_log(
    creds: Credentials,
    proxied_server: PlatformServer,
    proxied_model: RegisteredModel,
    direct_server: PlatformServer,
    direct_model: RegisteredModel,
    http: httpx.Client,
    logs_dir: Path,
):
    wrong = sentinel("wrong")
    EXTRA_SECRETS.append(wrong)
    host = proxied_server.tracking_uri.removeprefix("http://")
    env = proxied_server.client_env
    userinfo_uri = (
        f"http://{env['MLFLOW_TRACKING_USERNAME']}:{env['MLFLOW_TRACKING_PASSWORD']}@{host}"
    )
    cases = [
        (proxied_server, proxied_model.alias_uri, {}, True),
        (direct_server, direct_model.model_uri, {}, True),
        (proxied_server, proxied_model.model_uri, {"MLFLOW_TRACKING_PASSWORD": wrong}, False),
        (direct_server, direct_model.model_uri, {"AWS_SECRET_ACCESS_KEY": wrong}, False),
    ]
    for server, uri, override, ready in cases:
        with app_server(model_uri=uri, tracking_uri=server.tracking_uri, log_dir=logs_dir,
                        **{**server.client_env, **override}) as app:  # fmt: skip
            if ready:
                app.wait_ready()
            else:
                wait_until(
                    lambda app=app: http.get(app.url("/ready")).json().get("attempts", 0) >= 2,
                    120, "two failed attempts", 0.5, app.log_tail,
                )  # fmt: skip
            probe(app, http)
    # Credentials in the tracking URI's userinfo: the app redacts them from every log line.
    with app_server(model_uri=proxied_model.model_uri, tracking_uri=userinfo_uri,
                    log_dir=logs_dir) as app:  # fmt: skip
        wait_until(lambda: http.get(app.url("/ready")).json().get("attempts", 0) >= 1, 120,
                   "a first load attempt", 0.5, app.log_tail)  # fmt: skip
        probe(app, http)

    secrets = {**creds.values(), **{f"wrong-{i}": s for i, s in enumerate(EXTRA_SECRETS)}}
    files = log_files()
    kinds = {p.name.split("-")[0].split(".")[0] for p in files}
    # The scan covers every kind of log, or it proves nothing.
    assert {"app", "postgres", "minio", "mlflow", "train"} <= kinds, sorted(kinds)
    assert len(RESPONSES) >= 50, len(RESPONSES)
    texts = {str(p): p.read_text(errors="replace") for p in files}
    texts.update({f"response {i}": r for i, r in enumerate(RESPONSES)})
    found = leaks(texts, secrets)
    assert not found, "secrets leaked:\n" + "\n".join(found)
