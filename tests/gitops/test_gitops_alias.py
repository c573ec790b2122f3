"""`scripts/gitops.py set-alias prod` (the champion-alias workflow's step) on a real MLflow server.

It works on its own registered model, built from the session model's artifacts, so the session's
`ml-service@champion` that other tiers rely on never moves. `--version` is what Argo CD reports as
synced and healthy; it must be a version prod's release.yaml pinned (its git history)."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from .conftest import ROOT

pytestmark = pytest.mark.server

RELEASE = """\
# prod release state (test copy)
revision: "{commit}"
image:
  repository: ghcr.io/owner/ml-service
  tag: "{commit}"
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


def prod_repo(tmp_path: Path, name: str, *versions: str) -> Path:
    """A repository whose prod release.yaml pinned `versions` in turn (one commit each)."""
    git = ["git", "-C", str(tmp_path), "-c", "user.name=t", "-c", "user.email=t@example.invalid"]
    subprocess.run(["git", "init", "--quiet", str(tmp_path)], check=True)
    (tmp_path / "environments" / "prod").mkdir(parents=True)
    for version in versions:
        (tmp_path / "environments/prod/release.yaml").write_text(
            RELEASE.format(name=name, version=version, commit="c" * 40)
        )
        subprocess.run([*git, "add", "-A"], check=True)
        subprocess.run([*git, "commit", "--quiet", "-m", f"prod v{version}"], check=True)
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


def test_the_version_prod_serves_moves_champion_if_prod_pinned_it(
    tmp_path, registered_model, two_versions
):
    """The dispatch from Argo CD carries the version prod is synced with: it may lag behind
    main (a merged prod promotion that is not synced yet), but it must be one prod pinned."""
    client, name = two_versions
    repo = prod_repo(tmp_path, name, "1", "2")
    proc = set_alias(repo, registered_model.tracking_uri, "prod", "--version", "1")
    assert proc.returncode == 0 and "already on" in proc.stdout, proc.stderr
    client.set_registered_model_alias(name, "champion", "2")
    proc = set_alias(repo, registered_model.tracking_uri, "prod", "--version", "1")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"alias champion: {name} v2 -> v1"


@pytest.mark.parametrize("version", ["3", "01", "1; rm -rf /", ""])
def test_a_version_prod_never_pinned_is_refused(tmp_path, registered_model, two_versions, version):
    client, name = two_versions
    repo = prod_repo(tmp_path, name, "1")
    proc = set_alias(repo, registered_model.tracking_uri, "prod", "--version", version)
    if version == "3":
        assert proc.returncode == 3, proc.stdout + proc.stderr
        assert "version 3 was never pinned by environments/prod/release.yaml" in proc.stderr
    else:  # not a version at all: rejected without echoing it
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert proc.stderr.startswith("gitops: invalid model version")
    assert client.get_model_version_by_alias(name, "champion").version == "1"
