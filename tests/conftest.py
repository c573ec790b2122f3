"""What every tier shares: its marker, and session fixtures (a real MLflow server and a model
trained once on it)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.app_server import served_model  # noqa: F401 - fixture: a ready app for the session model
from support.mlflow import (
    MlflowServer,
    RegisteredModel,
    as_registered_model,
    mlflow_env,
    train,
)
from support.mlflow import mlflow_server as _start_mlflow_server

TESTS = Path(__file__).resolve().parent
# A tier is a directory of tests/ and the marker of the same name (registered in pyproject.toml):
# `pytest -m <tier>` selects exactly that directory. tests/mlflow_platform's marker is `platform`.
MARKER_OF_DIRECTORY = {"mlflow_platform": "platform"}


@pytest.hookimpl(tryfirst=True)  # before `-m` deselects by marker
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    registered = {line.split(":")[0].strip() for line in config.getini("markers")}
    for item in items:
        directory = Path(item.path).resolve().relative_to(TESTS).parts[0]
        marker = MARKER_OF_DIRECTORY.get(directory, directory)
        if marker not in registered:
            raise pytest.UsageError(f"{item.nodeid}: no tier marker `{marker}` in pyproject.toml")
        item.add_marker(marker)


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory):
    """A real `mlflow server` on a free 127.0.0.1 port (sqlite + artifacts in a tmp dir)."""
    with _start_mlflow_server(tmp_path_factory.mktemp("mlflow")) as server:
        yield server


@pytest.fixture(scope="session")
def registered_model(
    mlflow_server: MlflowServer, tmp_path_factory: pytest.TempPathFactory
) -> RegisteredModel:
    """`ml-service` trained once per session with default hyper-parameters, alias `champion`."""
    out = tmp_path_factory.mktemp("train") / "result.json"
    return as_registered_model(
        train(mlflow_server.tracking_uri, "--alias", "champion", output_json=out)
    )


@pytest.fixture(scope="session")
def local_model_dir(
    registered_model: RegisteredModel, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    """The registered model downloaded to a plain directory (what an image carries)."""
    import mlflow

    # An explicit client: download_artifacts(tracking_uri=...) alone resolves `models:/` URIs
    # against the default registry, not the session server.
    uri = registered_model.tracking_uri
    client = mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)
    source = client.get_model_version_download_uri(registered_model.name, registered_model.version)
    path = mlflow.artifacts.download_artifacts(
        artifact_uri=source, dst_path=str(tmp_path_factory.mktemp("model")), tracking_uri=uri
    )
    return Path(path)


@pytest.fixture
def mlflow_child_env(mlflow_server: MlflowServer) -> dict[str, str]:
    """Environment for a subprocess that should talk to the session MLflow server."""
    return mlflow_env(mlflow_server.tracking_uri)
