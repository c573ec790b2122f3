"""The MLflow users of docs/gitops.md step 8, made by scripts/mlflow_users.py on a real tracking
server with basic auth and charts/mlflow-platform's settings: each can do what its job needs and
no more. The champion user (champion-alias.yml) moves the alias and can neither register nor
delete a version; CI trains and registers; the environments' users read."""

from __future__ import annotations

import dataclasses
import stat
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from support.mlflow import QUIET_MLFLOW_ENV, RegisteredModel
from support.mlflow_platform import Credentials, Minio, PlatformServer, Postgres
from support.mlflow_platform import platform_mlflow_server as mlflow_server

from .conftest import EXTRA_SECRETS, train_on

pytestmark = pytest.mark.platform

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "mlflow_users.py"
CHART_VALUES = ROOT / "charts" / "mlflow-platform" / "values.yaml"
MODEL = "ml-service"


def chart_server_env() -> dict[str, str]:
    """The chart's registry policy: versions only from logged models (mlflow.modelVersionSource)."""
    pattern = yaml.safe_load(CHART_VALUES.read_text())["mlflow"]["modelVersionSource"]
    return {"MLFLOW_CREATE_MODEL_VERSION_SOURCE_VALIDATION_REGEX": pattern}


@dataclass
class Users:
    server: PlatformServer
    v1: RegisteredModel  # trained by the admin: the experiment and the model exist before the users
    out_dir: Path
    output: str

    def password(self, user: str) -> str:
        return (self.out_dir / user).read_text()

    def client(self, user: str, mp: pytest.MonkeyPatch):
        from mlflow import MlflowClient

        mp.setenv("MLFLOW_TRACKING_USERNAME", user)
        mp.setenv("MLFLOW_TRACKING_PASSWORD", self.password(user))
        return MlflowClient(self.server.tracking_uri, registry_uri=self.server.tracking_uri)


def run_script(server: PlatformServer, creds: Credentials, out_dir: Path, *args: str):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(out_dir.parent), **QUIET_MLFLOW_ENV,
           "MLFLOW_TRACKING_URI": server.tracking_uri, **creds.mlflow_client_env()}  # fmt: skip
    argv = [sys.executable, str(SCRIPT), "--out-dir", str(out_dir), *args]
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=300, check=False)


@pytest.fixture(scope="module")
def users(
    logs_dir: Path, creds: Credentials, postgres: Postgres, minio: Minio, tmp_path_factory
) -> Iterator[Users]:
    postgres.create_database("users")
    with mlflow_server(logs_dir / "users", creds=creds, pg=postgres, minio=minio,
                       database="users", extra_env=chart_server_env()) as server:  # fmt: skip
        v1 = train_on(server, logs_dir)
        out_dir = tmp_path_factory.mktemp("mlflow-users") / "credentials"
        proc = run_script(server, creds, out_dir)
        (logs_dir / "mlflow_users.log").write_text(proc.stdout + proc.stderr)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        EXTRA_SECRETS.extend(p.read_text() for p in out_dir.iterdir())
        yield Users(server, v1, out_dir, proc.stdout + proc.stderr)


def status(exc: BaseException) -> int | None:
    return getattr(exc, "get_http_status_code", lambda: None)()


def test_passwords_only_in_private_files(users: Users):
    assert stat.S_IMODE(users.out_dir.stat().st_mode) == 0o700
    names = sorted(p.name for p in users.out_dir.iterdir())
    assert names == sorted(f"{MODEL}-{u}" for u in ("ci", "champion", "dev", "staging", "prod"))
    for path in users.out_dir.iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert len(path.read_text()) >= 24 and path.read_text() not in users.output


def test_champion_moves_the_alias_and_nothing_else(users: Users, monkeypatch):
    from mlflow.exceptions import MlflowException

    champion = users.client(f"{MODEL}-champion", monkeypatch)
    champion.set_registered_model_alias(MODEL, "champion", users.v1.version)
    assert champion.get_model_version_by_alias(MODEL, "champion").version == users.v1.version
    v1 = champion.get_model_version(MODEL, users.v1.version)
    attempts = {
        "the trained logged model (what CI registers)": {"source": v1.source, "model_id": None},
        "the training run": {"source": f"runs:/{users.v1.run_id}/model", "run_id": users.v1.run_id},
        "a copy of version 1": {"source": f"models:/{MODEL}/{users.v1.version}"},
        "any URI": {"source": "s3://mlflow/elsewhere/model"},
    }
    for what, kwargs in attempts.items():
        with pytest.raises(MlflowException) as caught:
            champion.create_model_version(MODEL, **{k: v for k, v in kwargs.items() if v})
        assert status(caught.value) in (400, 403), (what, caught.value)
    with pytest.raises(MlflowException) as caught:
        champion.delete_model_version(MODEL, users.v1.version)
    assert status(caught.value) == 403
    with pytest.raises(MlflowException) as caught:
        champion.delete_registered_model(MODEL)
    assert status(caught.value) == 403
    versions = users.client(f"{MODEL}-ci", monkeypatch).search_model_versions(f"name='{MODEL}'")
    assert [v.version for v in versions] == [users.v1.version]


def test_an_environment_user_reads_but_moves_nothing(users: Users, monkeypatch):
    from mlflow.exceptions import MlflowException

    reader = users.client(f"{MODEL}-prod", monkeypatch)
    assert reader.get_model_version(MODEL, users.v1.version).version == users.v1.version
    with pytest.raises(MlflowException) as caught:
        reader.set_registered_model_alias(MODEL, "champion", users.v1.version)
    assert status(caught.value) == 403


def test_ci_trains_and_registers_into_the_existing_model(users: Users, logs_dir: Path):
    """The experiment and the model were made by someone else (the admin): CI's grants suffice."""
    ci = f"{MODEL}-ci"
    as_ci = {"MLFLOW_TRACKING_USERNAME": ci, "MLFLOW_TRACKING_PASSWORD": users.password(ci)}
    server = dataclasses.replace(users.server, client_env=as_ci)
    v2 = train_on(server, logs_dir, "--learning-rate", "0.05")
    assert int(v2.version) == int(users.v1.version) + 1


def test_a_second_run_keeps_passwords_and_permissions(users: Users, creds: Credentials,
                                                      monkeypatch):  # fmt: skip
    before = {p.name: p.read_text() for p in users.out_dir.iterdir()}
    proc = run_script(users.server, creds, users.out_dir)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {p.name: p.read_text() for p in users.out_dir.iterdir()} == before
    assert proc.stdout.count("kept its password") == len(before)
    champion = users.client(f"{MODEL}-champion", monkeypatch)
    champion.set_registered_model_alias(MODEL, "champion", users.v1.version)
