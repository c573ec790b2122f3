"""The migration path of docs/mlflow-platform.md, run once: the embedded default (`make run`:
sqlite + a local artifact folder) -> `mlflow db upgrade` -> PostgreSQL + S3
(scripts/mlflow_migrate.py) -> a tracking server on the new stores -> the app serves the
migrated model by its alias."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.app_server import app_server
from support.mlflow import QUIET_MLFLOW_ENV, MlflowServer, RegisteredModel
from support.mlflow_platform import (
    BUCKET,
    Credentials,
    Minio,
    Postgres,
    platform_mlflow_server,
)
from support.rows import from_app

from .conftest import registry_client
from .test_serving import model_objects, s3_probabilities

ROOT = Path(__file__).resolve().parents[2]
MLFLOW = str(Path(sys.executable).with_name("mlflow"))


def run(cmd: list[str], env: dict[str, str], log: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
    with log.open("a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n{proc.stdout}\n{proc.stderr}\n")
    assert proc.returncode == 0, f"{cmd[:3]} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc


def test_sqlite_store_migrates_to_postgresql_and_s3(
    mlflow_server: MlflowServer,
    registered_model: RegisteredModel,
    creds: Credentials,
    postgres: Postgres,
    minio: Minio,
    http: httpx.Client,
    logs_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
):
    # The session's embedded server (tests/conftest.py) is exactly what `make run` starts: sqlite +
    # `--artifacts-destination` on a local folder, with `ml-service` trained and aliased champion.
    # It stays up, idle: the copy only reads it.
    embedded, old = mlflow_server.data_dir, registered_model
    old_objects = sorted(p.relative_to(embedded / "artifacts").as_posix()
                         for p in (embedded / "artifacts").rglob("*") if p.is_file())  # fmt: skip
    assert any(p.endswith(".skops") for p in old_objects)

    log = logs_dir / "migration.log"
    env = {**os.environ, **QUIET_MLFLOW_ENV, **postgres.env(), **creds.s3_env(minio.endpoint)}
    env.pop("MLFLOW_TRACKING_URI", None)
    source = f"sqlite:///{embedded / 'mlflow.db'}"
    target = postgres.create_database("migrated")
    run([MLFLOW, "db", "upgrade", source], env, log)
    run([MLFLOW, "db", "upgrade", target], env, log)
    destination = f"s3://{BUCKET}/migrated"
    run([sys.executable, str(ROOT / "scripts" / "mlflow_migrate.py"), "--from", source,
         "--to", target, "--artifacts-from", str(embedded / "artifacts"),
         "--artifacts-to", destination], env, log)  # fmt: skip
    # A second run refuses: the target is no longer empty.
    again = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "mlflow_migrate.py"), "--from", source,
         "--to", target], env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert again.returncode == 2 and "already has experiments" in again.stderr, again.stderr

    with platform_mlflow_server(
        logs_dir / "migrated", creds=creds, pg=postgres, minio=minio, database="migrated"
    ) as server:
        client = registry_client(server, monkeypatch)
        mv = client.get_model_version_by_alias(old.name, "champion")
        assert (mv.version, mv.run_id) == (old.version, old.run_id)
        run_data = client.get_run(old.run_id).data
        assert run_data.metrics == pytest.approx(old.metrics)
        # Writes work after the copy: id sequences continue after the copied rows.
        client.create_experiment("after-migration")
        client.set_registered_model_alias(old.name, "migrated", old.version)

        migrated = model_objects(minio, server, old)
        assert any(k.endswith(".skops") for k in migrated)
        with app_server(
            model_uri=f"models:/{old.name}@champion",
            tracking_uri=server.tracking_uri,
            wait_ready=True,
            log_dir=logs_dir,
            **server.client_env,
        ) as app:
            info = http.get(app.url("/model")).json()
            assert (info["version"], info["run_id"], info["alias"]) == (
                old.version,
                old.run_id,
                "champion",
            )
            rows = from_app(app, http=http)
            r = http.post(app.url("/predict"), json={"instances": rows})
            assert r.status_code == 200, r.text
            expected = s3_probabilities(minio, migrated, rows)
            got = [
                [p["probabilities"][c] for c in info["classes"]] for p in r.json()["predictions"]
            ]
            np.testing.assert_allclose(got, expected, rtol=1e-12)
