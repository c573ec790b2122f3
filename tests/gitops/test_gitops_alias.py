"""`scripts/gitops.py set-alias prod` (the champion-alias workflow's step) on a real MLflow server.

It works on its own registered model, built from the session model's artifacts, so the session's
`ml-service@champion` that other tiers rely on never moves."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = [pytest.mark.gitops, pytest.mark.integration]

RELEASE = """\
# prod release state (test copy)
image:
  repository: ghcr.io/owner/ml-service
  tag: "abc1234"
  digest: ""
model:
  name: {name}
  version: "{version}"
"""


def set_alias(repo: Path, tracking_uri: str, *args: str) -> subprocess.CompletedProcess:
    from support.mlflow import mlflow_env

    return subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gitops.py"), "-C", str(repo), "set-alias", *args],
        capture_output=True,
        text=True,
        env=mlflow_env(tracking_uri),
        check=False,
        timeout=120,
    )


@pytest.fixture
def two_versions(registered_model):
    """A fresh registered model with versions 1 and 2 (same artifacts), champion on version 1."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=registered_model.tracking_uri)
    original = client.get_model_version(registered_model.name, registered_model.version)
    name = f"gitops-alias-{uuid.uuid4().hex[:8]}"
    client.create_registered_model(name)
    # MLflow 3 sources are logged models (`models:/m-...`); the server wants their id beside them.
    model_id = original.model_id or original.source.removeprefix("models:/")
    for _ in range(2):
        client.create_model_version(
            name, original.source, run_id=original.run_id, model_id=model_id
        )
    client.set_registered_model_alias(name, "champion", "1")
    return client, name


def prod_repo(tmp_path: Path, name: str, version: str) -> Path:
    subprocess.run(["git", "init", "--quiet", str(tmp_path)], check=True)
    (tmp_path / "environments" / "prod").mkdir(parents=True)
    (tmp_path / "environments/prod/release.yaml").write_text(
        RELEASE.format(name=name, version=version)
    )
    return tmp_path


def test_prod_merge_moves_champion(tmp_path, registered_model, two_versions):
    client, name = two_versions
    repo = prod_repo(tmp_path, name, "2")
    proc = set_alias(repo, registered_model.tracking_uri, "prod")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"alias champion: {name} v1 -> v2"
    assert client.get_model_version_by_alias(name, "champion").version == "2"

    again = set_alias(repo, registered_model.tracking_uri, "prod")
    assert again.returncode == 0 and "already on" in again.stdout
    assert client.get_model_version_by_alias(name, "champion").version == "2"


def test_unknown_version_is_refused_and_alias_stays(tmp_path, registered_model, two_versions):
    client, name = two_versions
    repo = prod_repo(tmp_path, name, "99")
    proc = set_alias(repo, registered_model.tracking_uri, "prod")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"gitops: model {name} version 99 is not in the registry"
    assert client.get_model_version_by_alias(name, "champion").version == "1"
