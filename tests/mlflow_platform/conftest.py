"""Platform tier fixtures: one PostgreSQL, one MinIO, two `mlflow server`s on them (proxied
artifacts and direct S3 access, both behind MLflow's basic auth), a model trained on each, and a
recorder of every HTTP answer and log file for the sentinel test (test_secrets.py).

Everything runs on 127.0.0.1; the servers are real processes (tests/support/mlflow_platform.py).
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.app_server import AppServer
from support.mlflow import RegisteredModel, as_registered_model, run_training
from support.mlflow_platform import (
    BUCKET,
    Credentials,
    Minio,
    PlatformServer,
    PlatformToolMissingError,
    Postgres,
    platform_mlflow_server,
)

RESPONSES: list[str] = []  # every answer the tier received (status, headers, body)
LOG_DIRS: list[Path] = []  # every directory whose files are logs of this tier
EXTRA_SECRETS: list[str] = []  # wrong credentials the fault tests hand out: secrets all the same


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The sentinel test reads what every other test of the tier left behind: it runs last."""
    last = [i for i in items if i.get_closest_marker("runs_last")]
    items[:] = [i for i in items if i not in last] + last


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "runs_last: run after every other test (sentinel scan)")


def record(response: httpx.Response) -> None:
    response.read()
    headers = "\n".join(f"{k}: {v}" for k, v in response.headers.items())
    RESPONSES.append(f"{response.request.method} {response.request.url} -> "
                     f"{response.status_code}\n{headers}\n{response.text}")  # fmt: skip


@pytest.fixture(scope="session")
def http() -> Iterator[httpx.Client]:
    """The HTTP client of the tier: every answer is kept for the sentinel test."""
    with httpx.Client(timeout=30, event_hooks={"response": [record]}) as client:
        yield client


@contextlib.contextmanager
def _running(factory):  # type: ignore[no-untyped-def]
    """A platform process (Postgres, MinIO) from `factory`: started, its log kept for the
    sentinel test, cleaned up afterwards; a missing binary fails the test."""
    try:
        server = factory()
    except PlatformToolMissingError as exc:
        pytest.fail(str(exc))
    LOG_DIRS.append(server.log_path)
    try:
        server.start()
        yield server
    finally:
        server.cleanup()


@pytest.fixture(scope="session")
def logs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("platform-logs")
    LOG_DIRS.append(path)
    return path


@pytest.fixture(scope="session")
def creds() -> Credentials:
    return Credentials()


@pytest.fixture(scope="session")
def postgres(creds: Credentials) -> Iterator[Postgres]:
    with _running(lambda: Postgres(creds)) as pg:
        yield pg


@pytest.fixture(scope="session")
def minio(creds: Credentials) -> Iterator[Minio]:
    with _running(lambda: Minio(creds)) as server:
        server.client().create_bucket(Bucket=BUCKET)
        yield server


@contextlib.contextmanager
def _server(logs_dir, creds, postgres, minio, mode: str, database: str):
    postgres.create_database(database)
    with platform_mlflow_server(
        logs_dir / database, creds=creds, pg=postgres, minio=minio, database=database, mode=mode
    ) as server:
        yield server


@pytest.fixture(scope="session")
def proxied_server(logs_dir, creds, postgres, minio) -> Iterator[PlatformServer]:
    """Clients talk to MLflow only (basic auth); the server holds the S3 credentials."""
    with _server(logs_dir, creds, postgres, minio, "proxied", "proxied") as server:
        yield server


@pytest.fixture(scope="session")
def direct_server(logs_dir, creds, postgres, minio) -> Iterator[PlatformServer]:
    """MLflow records s3:// locations; clients read and write S3 with their own credentials."""
    with _server(logs_dir, creds, postgres, minio, "direct", "direct") as server:
        yield server


def train_on(server: PlatformServer, logs_dir: Path, *args: str) -> RegisteredModel:
    """Real training run against `server`; its output is kept as a log of the tier."""
    out = logs_dir / f"train-{server.mode}-{time.monotonic_ns()}.json"
    result, proc = run_training(
        server.tracking_uri, *args, output_json=out, extra_env=server.client_env
    )
    out.with_suffix(".log").write_text(proc.stdout + "\n" + proc.stderr)
    return as_registered_model(result)


@pytest.fixture(scope="session")
def proxied_model(proxied_server: PlatformServer, logs_dir: Path) -> RegisteredModel:
    return train_on(proxied_server, logs_dir, "--alias", "champion")


@pytest.fixture(scope="session")
def direct_model(direct_server: PlatformServer, logs_dir: Path) -> RegisteredModel:
    return train_on(direct_server, logs_dir, "--alias", "champion")


@pytest.fixture(params=["proxied", "direct"])
def platform(request) -> tuple[PlatformServer, RegisteredModel]:
    """Each artifact access mode with its server and its trained model."""
    server = request.getfixturevalue(f"{request.param}_server")
    return server, request.getfixturevalue(f"{request.param}_model")


def registry_client(server: PlatformServer, monkeypatch: pytest.MonkeyPatch):
    """An MlflowClient of `server` with its client credentials in this test's environment."""
    import mlflow

    for key, value in server.client_env.items():
        monkeypatch.setenv(key, value)
    return mlflow.MlflowClient(tracking_uri=server.tracking_uri, registry_uri=server.tracking_uri)


def ready_body(app: AppServer, http: httpx.Client) -> tuple[int, dict]:
    r = http.get(app.url("/ready"))
    return r.status_code, r.json()


def dump(obj) -> str:
    return json.dumps(obj, indent=1, sort_keys=True, default=str)
