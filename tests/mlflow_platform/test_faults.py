"""Faults of the platform, against the real processes: the database restarting while the app serves,
the artifact store down when the app starts, a wrong credential, a half-uploaded model version,
a checkout the unprivileged servers cannot enter.

`/ready` answers 503 with `{"status", "reason", "message", "attempts"}` while no model is loaded
(the readiness contract of docs/api.md); each failed attempt is logged with its reason code.
"""

from __future__ import annotations

import os
import re
import threading
import time
import uuid
from pathlib import Path

import httpx
import pytest
from support.app_server import AppServer, app_server
from support.mlflow import RegisteredModel
from support.mlflow_platform import (
    BUCKET,
    MINIO_BIN,
    Credentials,
    Minio,
    PlatformServer,
    Postgres,
    sentinel,
    service_user,
)
from support.poll import wait_until
from support.rows import from_app

from .conftest import EXTRA_SECRETS, dump, record, registry_client
from .test_serving import model_objects

REASONS = {
    "starting",
    "registry_unreachable",
    "model_not_found",
    "unauthorized",
    "artifacts_unavailable",
    "model_rejected",
}


def not_ready(app: AppServer, http: httpx.Client) -> dict:
    """The 503 body of /ready, checked against the readiness contract."""
    r = http.get(app.url("/ready"))
    assert r.status_code == 503, r.text
    assert r.headers["retry-after"].isdigit()
    body = r.json()
    assert {"status", "reason", "message", "attempts"} <= set(body), dump(body)
    assert body["status"] == "loading", dump(body)
    assert body["reason"] in REASONS, dump(body)
    assert isinstance(body["message"], str) and body["message"], dump(body)
    return body


def failing_with(app: AppServer, http: httpx.Client, reason: str, timeout: float = 120) -> dict:
    """Wait until the loader has failed at least twice (it retries) for `reason`."""

    def check():
        r = http.get(app.url("/ready"))
        assert r.status_code == 503, f"became ready although it must not: {r.text}"
        body = r.json()
        return body if body.get("attempts", 0) >= 2 and body.get("reason") != "starting" else None

    wait_until(check, timeout, "two failed load attempts", 0.5, app.log_tail)
    body = not_ready(app, http)
    assert body["reason"] == reason, f"{dump(body)}\n{app.log_tail()}"
    return body


def attempt_log_lines(app: AppServer) -> list[str]:
    return [line for line in app.log_path.read_text().splitlines() if "attempt" in line]


def assert_logged_reason(app: AppServer, reason: str) -> None:
    lines = attempt_log_lines(app)
    assert lines, f"no failed attempt logged\n{app.log_tail()}"
    assert all(re.search(rf"\b{reason}\b", line) for line in lines), "\n".join(lines)


def assert_no_secret(text: str, secrets: list[str], where: str) -> None:
    leaked = [s[:6] + "..." for s in secrets if s in text]
    assert not leaked, f"{where} contains secrets {leaked}"


def serve(server: PlatformServer, model_uri: str, logs_dir: Path, **env: str):
    return app_server(
        model_uri=model_uri,
        tracking_uri=server.tracking_uri,
        log_dir=logs_dir,
        **{**server.client_env, **env},
    )


# ---------------------------------------------------------------- database restart


def test_database_restart_while_serving(
    postgres: Postgres,
    proxied_server: PlatformServer,
    proxied_model: RegisteredModel,
    http: httpx.Client,
    logs_dir: Path,
):
    env = proxied_server.client_env
    auth = (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
    registry = f"{proxied_server.tracking_uri}/api/2.0/mlflow/registered-models/get"
    params = {"name": proxied_model.name}
    with serve(proxied_server, proxied_model.alias_uri, logs_dir) as app:
        app.wait_ready()
        rows = from_app(app, http=http)
        statuses: list[int] = []
        stop = threading.Event()

        def load() -> None:  # bounded: at most 3000 requests, stops when told
            with httpx.Client(timeout=10, event_hooks={"response": [record]}) as client:
                for _ in range(3000):
                    if stop.is_set():
                        return
                    r = client.post(app.url("/predict"), json={"instances": rows})
                    statuses.append(r.status_code)
                    time.sleep(0.02)

        worker = threading.Thread(target=load, name="predict-load")
        worker.start()
        try:
            time.sleep(1)
            postgres.stop()
            # The tracking server really lost its database...
            down = http.get(registry, params=params, auth=auth)
            assert down.status_code >= 500, down.text
            # ...and the app does not care: its model is in memory.
            assert http.get(app.url("/ready")).status_code == 200
            time.sleep(2)
            postgres.start()
            time.sleep(1)
        finally:
            stop.set()
            worker.join(timeout=60)
            if postgres.process is None or postgres.process.poll() is not None:
                postgres.start()
        assert len(statuses) > 20, statuses
        assert set(statuses) == {200}, f"failed predictions during the restart: {statuses}"
        assert http.get(app.url("/ready")).status_code == 200

    # MLflow reconnects (its pool pings connections before use) and a new instance loads again.
    wait_until(
        lambda: http.get(registry, params=params, auth=auth).status_code == 200,
        60,
        "the tracking server answering again",
        0.5,
    )
    with serve(proxied_server, proxied_model.model_uri, logs_dir) as app:
        app.wait_ready()


# ---------------------------------------------------------------- artifact store down at start


@pytest.mark.parametrize("mode", ["proxied", "direct"])
def test_artifact_store_down_when_the_app_starts(
    mode: str, minio: Minio, request, http: httpx.Client, logs_dir: Path
):
    server: PlatformServer = request.getfixturevalue(f"{mode}_server")
    model: RegisteredModel = request.getfixturevalue(f"{mode}_model")
    minio.stop()
    try:
        with serve(server, model.model_uri, logs_dir) as app:
            assert http.get(app.url("/health")).status_code == 200
            failing_with(app, http, "artifacts_unavailable", timeout=180)
            assert_logged_reason(app, "artifacts_unavailable")
            blocked = http.post(app.url("/predict"), json={"instances": [{}]})
            assert blocked.status_code == 503 and "retry-after" in blocked.headers
            minio.start()
            app.wait_ready(timeout=180)
            rows = from_app(app, http=http)
            r = http.post(app.url("/predict"), json={"instances": rows})
            assert r.status_code == 200, r.text
            assert r.json()["model"]["version"] == model.version
    finally:
        if minio.process is None or minio.process.poll() is not None:
            minio.start()


# ---------------------------------------------------------------- wrong credential

WRONG = {
    # (server, variable): the app gets a wrong value for exactly one credential
    "mlflow-password": ("proxied", "MLFLOW_TRACKING_PASSWORD"),
    "mlflow-username": ("proxied", "MLFLOW_TRACKING_USERNAME"),
    "s3-secret-key": ("direct", "AWS_SECRET_ACCESS_KEY"),
    "s3-access-key": ("direct", "AWS_ACCESS_KEY_ID"),
}


@pytest.mark.parametrize("case", WRONG, ids=WRONG)
def test_wrong_credential_is_a_clear_reason_without_the_secret(
    case: str, creds: Credentials, request, http: httpx.Client, logs_dir: Path
):
    mode, variable = WRONG[case]
    server: PlatformServer = request.getfixturevalue(f"{mode}_server")
    model: RegisteredModel = request.getfixturevalue(f"{mode}_model")
    wrong = sentinel("wrong")
    EXTRA_SECRETS.append(wrong)
    with serve(server, model.model_uri, logs_dir, **{variable: wrong}) as app:
        body = failing_with(app, http, "unauthorized")
        assert_logged_reason(app, "unauthorized")
        secrets = [wrong, *creds.values().values()]
        assert_no_secret(dump(body), secrets, "/ready")
        assert_no_secret(app.log_path.read_text(), secrets, "the app log")
        # Retrying does not turn a refused credential into a success.
        assert not_ready(app, http)["attempts"] >= 2


# ---------------------------------------------------------------- half-uploaded version


def _copy_half(minio: Minio, objects: dict[str, int], dst: str, damage: str) -> None:
    """Copy a model directory to `dst` the way an interrupted upload leaves it."""
    s3 = minio.client()
    base = next(k for k in objects if k.endswith("/MLmodel")).rsplit("/", 1)[0]
    for key in objects:
        target = f"{dst}/{key.removeprefix(base + '/')}"
        if key.endswith(".skops"):
            if damage == "missing":
                continue
            data = s3.get_object(Bucket=BUCKET, Key=key)["Body"].read()
            s3.put_object(Bucket=BUCKET, Key=target, Body=data[: len(data) // 2])
        else:
            s3.copy_object(Bucket=BUCKET, Key=target, CopySource={"Bucket": BUCKET, "Key": key})


@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_half_uploaded_version_is_refused_and_old_instances_keep_serving(
    damage: str,
    minio: Minio,
    proxied_server: PlatformServer,
    proxied_model: RegisteredModel,
    http: httpx.Client,
    logs_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    client = registry_client(proxied_server, monkeypatch)
    name, good = proxied_model.name, proxied_model.version
    alias = f"production-{damage}"
    client.set_registered_model_alias(name, alias, good)
    try:
        with serve(proxied_server, f"models:/{name}@{alias}", logs_dir) as old:
            old.wait_ready()
            rows = from_app(old, http=http)
            # A new version whose files stopped uploading half-way, then the alias moved to it.
            # (inside the run's artifact directory: MLflow checks a version's source is its run's)
            run_root = client.get_run(proxied_model.run_id).info.artifact_uri
            assert run_root.startswith("mlflow-artifacts:/"), run_root
            source = f"{run_root}/half-upload-{damage}-{uuid.uuid4().hex[:8]}/model"
            prefix = proxied_server.artifact_uri.removeprefix(f"s3://{BUCKET}/")
            key = f"{prefix}/{source.removeprefix('mlflow-artifacts:/').strip('/')}"
            _copy_half(minio, model_objects(minio, proxied_server, proxied_model), key, damage)
            bad = client.create_model_version(name, source=source, run_id=proxied_model.run_id)
            client.set_registered_model_alias(name, alias, bad.version)

            with serve(proxied_server, f"models:/{name}@{alias}", logs_dir) as new:
                failing_with(new, http, "model_rejected")
                assert_logged_reason(new, "model_rejected")
                assert http.post(new.url("/predict"), json={"instances": rows}).status_code == 503
                # The old instance is untouched: still ready, still the good version.
                assert http.get(old.url("/ready")).status_code == 200
                r = http.post(old.url("/predict"), json={"instances": rows})
                assert r.status_code == 200, r.text
                assert r.json()["model"]["version"] == good
    finally:
        client.delete_registered_model_alias(name, alias)


def test_minio_starts_from_a_checkout_the_service_user_cannot_enter(
    creds: Credentials, tmp_path: Path
) -> None:
    """A clone under a 0700 directory (root's home, `mktemp -d`) made every MinIO start fail
    with EACCES: MinIO runs as the unprivileged service user, who could not reach `.tools`."""
    if service_user() is None:
        pytest.skip("the tier runs unprivileged here: MinIO runs as the checkout's own user")
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o700)
    binary = locked / "minio"
    os.link(MINIO_BIN, binary)
    server = Minio(creds, binary=binary)
    try:
        server.start()
        assert server.client().list_buckets()["Buckets"] == []
    finally:
        server.cleanup()
    assert binary.stat().st_uid == os.getuid(), "the checkout's binary changed owner"
