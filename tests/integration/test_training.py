"""Training against a real `mlflow server`: what is logged, registered, aliased and reproducible."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import mlflow
import pandas as pd
import pytest
import skops.io
import yaml
from ml_service.model_format import (
    REFERENCE_KEY,
    SKOPS_TRUSTED_TYPES,
    TRAINING_KEY,
    reference_from_metadata,
)
from ml_service.training.train import load_dataset
from support.mlflow import MlflowServer, RegisteredModel, mlflow_env, run_training, train

HYPER_PARAMS = {
    "seed", "test_size", "model_seed", "learning_rate", "max_iter", "max_leaf_nodes",
    "max_depth", "min_samples_leaf", "l2_regularization", "max_features", "class_weight",
    "drift_bins",
}  # fmt: skip


@pytest.fixture(scope="module")
def client(mlflow_server: MlflowServer) -> mlflow.MlflowClient:
    uri = mlflow_server.tracking_uri
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


@pytest.fixture(scope="module")
def retrained(
    registered_model: RegisteredModel, mlflow_server: MlflowServer, tmp_path_factory
) -> dict:
    """A second training from the same commit and seed, without --alias."""
    out = tmp_path_factory.mktemp("retrain") / "result.json"
    return train(mlflow_server.tracking_uri, output_json=out)


def test_registered_with_champion_alias(
    registered_model: RegisteredModel, client: mlflow.MlflowClient
) -> None:
    assert registered_model.name == "ml-service"
    assert registered_model.model_uri == f"models:/ml-service/{registered_model.version}"
    assert registered_model.alias_uri == "models:/ml-service@champion"
    mv = client.get_model_version_by_alias("ml-service", "champion")
    assert mv.version == registered_model.version
    assert mv.run_id == registered_model.run_id
    assert mv.tags["git_commit"] == registered_model.result["git_commit"]


def test_run_logs_params_metrics_and_confusion_matrix(
    registered_model: RegisteredModel, client: mlflow.MlflowClient, tmp_path: Path
) -> None:
    run = client.get_run(registered_model.run_id)
    assert set(run.data.params) >= HYPER_PARAMS
    assert run.data.params["model"] == "HistGradientBoostingClassifier"
    metrics = run.data.metrics
    for key in ("accuracy", "f1_macro", "roc_auc", "precision_malignant", "recall_malignant",
                "precision_benign", "recall_benign"):  # fmt: skip
        assert key in metrics, key
    assert metrics["accuracy"] > 0.93 and metrics["roc_auc"] > 0.98
    assert metrics == pytest.approx(registered_model.metrics)
    png = client.download_artifacts(registered_model.run_id, "confusion_matrix.png", str(tmp_path))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ref = client.download_artifacts(registered_model.run_id, "drift/reference.json", str(tmp_path))
    assert json.loads(Path(ref).read_text())["class_labels"] == ["benign", "malignant"]


def test_model_artifact_carries_signature_example_and_metadata(local_model_dir: Path) -> None:
    mlmodel = yaml.safe_load((local_model_dir / "MLmodel").read_text())
    assert mlmodel["flavors"]["sklearn"]["serialization_format"] == "skops"
    x, _ = load_dataset()
    inputs = json.loads(mlmodel["signature"]["inputs"])
    assert [c["name"] for c in inputs] == list(x.columns)
    assert {c["type"] for c in inputs} == {"double"}
    assert mlmodel["saved_input_example_info"]["artifact_path"] == "input_example.json"

    ref = reference_from_metadata(mlmodel["metadata"])
    assert ref["features"] == list(x.columns)
    assert ref["class_labels"] == ["benign", "malignant"]
    assert sum(ref["class_priors"].values()) == pytest.approx(1)
    for name in ref["features"]:
        s = ref["feature_stats"][name]
        assert len(s["fractions"]) == len(s["edges"]) + 1 and s["min"] <= s["max"]
    training = mlmodel["metadata"][TRAINING_KEY]
    for key in ("sklearn_version", "numpy_version", "python_version", "git_commit",
                "lock_sha256", "data_fingerprint"):  # fmt: skip
        assert training.get(key), key
    requirements = (local_model_dir / "requirements.txt").read_text()
    assert f"scikit-learn=={training['sklearn_version']}" in requirements
    assert "skops==" in requirements


def test_local_model_dir_loads_safely_without_a_server(
    local_model_dir: Path, tmp_path: Path
) -> None:
    """skops with the app's own allow-list (not the one the file carries) and via pyfunc."""
    model_file = local_model_dir / "model.skops"
    assert skops.io.get_untrusted_types(file=model_file) == SKOPS_TRUSTED_TYPES
    pipe = skops.io.load(model_file, trusted=SKOPS_TRUSTED_TYPES)
    example = json.loads((local_model_dir / "input_example.json").read_text())
    frame = pd.DataFrame(example["data"], columns=example["columns"])
    assert list(pipe.predict(frame)) == ["benign", "malignant"]  # one real row per class
    # a subprocess with no tracking URI at all: the directory is self-contained
    code = (
        "import sys, json, pandas as pd, mlflow.pyfunc\n"
        "m = mlflow.pyfunc.load_model(sys.argv[1])\n"
        "e = json.load(open(sys.argv[1] + '/input_example.json'))\n"
        "print(json.dumps(list(m.predict(pd.DataFrame(e['data'], columns=e['columns'])))))\n"
        "print(json.dumps(sorted(m.metadata.metadata)))\n"
    )
    env = mlflow_env(MLFLOW_ALLOW_PICKLE_DESERIALIZATION="true")
    env.pop("MLFLOW_TRACKING_URI", None)
    out = subprocess.run(
        [sys.executable, "-c", code, str(local_model_dir)],
        env=env, cwd=tmp_path, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    lines = out.stdout.strip().splitlines()
    assert json.loads(lines[-2]) == ["benign", "malignant"]
    assert json.loads(lines[-1]) == sorted([REFERENCE_KEY, TRAINING_KEY])


def test_same_commit_and_seed_reproduce_metrics_and_predictions(
    registered_model: RegisteredModel, retrained: dict
) -> None:
    first = registered_model.result
    # other tiers may register versions on the shared session server in between
    assert int(retrained["version"]) > int(first["version"])
    assert retrained["metrics"] == first["metrics"]  # exact, not approx
    assert retrained["test_predictions"] == first["test_predictions"]
    assert retrained["predictions_sha256"] == first["predictions_sha256"]
    assert retrained["data_fingerprint"] == first["data_fingerprint"]


def test_alias_moves_only_when_asked(
    registered_model: RegisteredModel, retrained: dict, client: mlflow.MlflowClient
) -> None:
    assert retrained["alias"] is None
    mv = client.get_model_version_by_alias("ml-service", "champion")
    assert mv.version == registered_model.version != retrained["version"]


def test_flags_change_the_model_are_logged_and_the_cli_prints_the_version(
    mlflow_server: MlflowServer,
    registered_model: RegisteredModel,
    client: mlflow.MlflowClient,
    tmp_path: Path,
) -> None:
    result, proc = run_training(
        mlflow_server.tracking_uri,
        "--seed", "7", "--learning-rate", "0.3", "--max-iter", "20", "--alias", "challenger",
        output_json=tmp_path / "r.json",
    )  # fmt: skip
    params = client.get_run(result["run_id"]).data.params
    assert (params["seed"], params["learning_rate"], params["max_iter"]) == ("7", "0.3", "20")
    assert result["predictions_sha256"] != registered_model.result["predictions_sha256"]
    aliased = client.get_model_version_by_alias("ml-service", "challenger")
    assert aliased.version == result["version"]
    champion = client.get_model_version_by_alias("ml-service", "champion")
    assert champion.version == registered_model.version

    lines = proc.stdout.strip().splitlines()
    assert lines[-1] == result["version"]
    machine = next(line for line in lines if line.startswith("ML_SERVICE_TRAIN_RESULT "))
    summary = json.loads(machine.split(" ", 1)[1])
    assert summary["version"] == result["version"] and summary["alias"] == "challenger"
    assert summary["run_id"] == result["run_id"]
