"""Find, download, check and deserialize the model named by MODEL_URI.

Everything here is blocking and runs off the event loop (see `main.ModelLoader`). MLflow is
imported lazily so the port opens before its (slow) import finishes.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .settings import Settings

log = logging.getLogger(__name__)

# skops asks which types to trust; we trust library types, never what the model file lists itself.
TRUSTED_TYPE_PREFIXES = ("sklearn.",)
NUMERIC_TYPES = {"double", "float", "long", "integer"}


class ModelRejectedError(Exception):
    """The model was found but must not serve (incompatible, not a classifier, failed smoke)."""


@dataclass(frozen=True)
class VersionCheck:
    incompatible: list[str] = field(default_factory=list)
    # (package, trained, serving) for compatible differences
    mismatches: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass
class LoadedModel:
    name: str
    version: str
    alias: str | None
    run_id: str
    source: str
    estimator: Any
    feature_names: tuple[str, ...]
    classes: tuple[str, ...]
    signature: dict[str, Any]
    trained_with: dict[str, str]
    reference: dict[str, Any] | None
    input_example: np.ndarray
    mismatches: list[tuple[str, str, str]]
    training_metrics: dict[str, float] = field(default_factory=dict)
    load_seconds: float = 0.0
    loaded_at: str = ""

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        return self.estimator.predict_proba(features)

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "version": self.version,
            "alias": self.alias,
            "run_id": self.run_id,
            "source": self.source,
            "classes": list(self.classes),
            "features": list(self.feature_names),
            "signature": self.signature,
            "trained_with": self.trained_with,
            "dependency_mismatches": [
                {"package": p, "trained": t, "serving": s} for p, t, s in self.mismatches
            ],
            "training_metrics": self.training_metrics,
            "loaded_at": self.loaded_at,
            "load_duration_seconds": round(self.load_seconds, 4),
        }


# ---------------------------------------------------------------- version compatibility


def _release(version: str) -> tuple[int, ...]:
    parts = re.findall(r"\d+", version.split("+")[0])[:3]
    return tuple(int(p) for p in parts)


def check_versions(trained: dict[str, str], serving: dict[str, str]) -> VersionCheck:
    """Which trained-vs-serving differences change how the model deserializes or predicts.

    scikit-learn: estimators' pickled state is only supported within one minor release
    (its docs: "load with the same version"; attributes such as HistGradientBoosting's
    node layout change between minors, patch releases are bug fixes only), so a major/minor
    difference refuses readiness and a patch difference is a warning.
    numpy: numpy 2 moved pickled module paths (`numpy.core` -> `numpy._core`) and changed
    dtype promotion, so a major difference refuses; minors keep the pickle format.
    """
    rules = {"scikit-learn": 2, "numpy": 1}  # number of leading components that must match
    incompatible: list[str] = []
    mismatches: list[tuple[str, str, str]] = []
    for package, strict_parts in rules.items():
        t, s = trained.get(package), serving.get(package)
        if not t or not s or t == s:
            continue
        if _release(t)[:strict_parts] != _release(s)[:strict_parts]:
            incompatible.append(f"{package} trained with {t}, serving has {s}")
        else:
            mismatches.append((package, t, s))
    return VersionCheck(incompatible, mismatches)


def serving_versions() -> dict[str, str]:
    # imported here: scikit-learn takes seconds to import, and the port must open first
    import sklearn

    return {"scikit-learn": sklearn.__version__, "numpy": np.__version__}


def trained_versions(metadata: dict[str, Any], flavors: dict[str, Any], model_dir: Path) -> dict:
    """Versions the model was trained with: our own metadata first, then MLflow's records."""
    training = metadata.get("ml_service_training") or {}
    found: dict[str, str] = {}
    sources = [training, training.get("versions") or {}, training.get("packages") or {}]
    aliases = {
        "scikit-learn": ("scikit-learn", "sklearn", "sklearn_version", "scikit_learn"),
        "numpy": ("numpy", "numpy_version"),
        "python": ("python", "python_version"),
    }
    for package, keys in aliases.items():
        for source in sources:
            if not isinstance(source, dict):
                continue
            value = next((source[k] for k in keys if source.get(k)), None)
            if value:
                found[package] = str(value)
                break
    if "scikit-learn" not in found and flavors.get("sklearn", {}).get("sklearn_version"):
        found["scikit-learn"] = str(flavors["sklearn"]["sklearn_version"])
    requirements = model_dir / "requirements.txt"
    if requirements.is_file():
        for line in requirements.read_text().splitlines():
            m = re.match(r"^\s*(scikit-learn|numpy)\s*==\s*([\w.+-]+)", line)
            if m and m.group(1) not in found:
                found[m.group(1)] = m.group(2)
    return found


# ---------------------------------------------------------------- locating the model


@dataclass(frozen=True)
class Resolved:
    name: str
    version: str
    alias: str | None
    run_id: str
    local_dir: Path
    training_metrics: dict[str, float]
    source: str = ""
    downloaded: bool = False


_ALIAS_RE = re.compile(r"^models:/(?P<name>[^/@]+)@(?P<alias>[^/]+)/?$")
_VERSION_RE = re.compile(r"^models:/(?P<name>[^/@]+)/(?P<version>\d+)/?$")


def _local_path(uri: str) -> Path | None:
    if uri.startswith("file://"):
        uri = uri[len("file://") :]
    path = Path(uri)
    return path if (path / "MLmodel").is_file() else None


def resolve_and_download(settings: Settings, scratch: Path) -> Resolved:
    """Resolve MODEL_URI to one exact version and make its files available locally."""
    local = _local_path(settings.model_uri)
    if local is not None:
        return Resolved(
            name=settings.model_name or local.name,
            version=settings.model_version or "local",
            alias=None,
            run_id=_run_id_from_mlmodel(local),
            local_dir=local,
            training_metrics={},
            source=str(local),
        )
    import mlflow
    from mlflow import MlflowClient

    tracking_uri = settings.mlflow_tracking_uri
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    alias = None
    if m := _ALIAS_RE.match(settings.model_uri):
        name, alias = m["name"], m["alias"]
        mv = client.get_model_version_by_alias(name, alias)
    elif m := _VERSION_RE.match(settings.model_uri):
        name = m["name"]
        mv = client.get_model_version(name, m["version"])
    else:
        raise ModelRejectedError(
            "MODEL_URI must be models:/<name>@<alias>, models:/<name>/<version> "
            "or a local directory containing an MLmodel file"
        )
    # Pin the exact version: an alias that moves during the download must not mix versions.
    dst = Path(tempfile.mkdtemp(prefix="model-", dir=scratch))
    path = mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/{name}/{mv.version}", dst_path=str(dst), tracking_uri=tracking_uri
    )
    metrics: dict[str, float] = {}
    if mv.run_id:
        try:
            metrics = dict(client.get_run(mv.run_id).data.metrics)
        except Exception as exc:  # training metrics are informative only
            log.warning("could not read training metrics of run %s: %s", mv.run_id, exc)
    return Resolved(
        name,
        str(mv.version),
        alias,
        mv.run_id or "",
        Path(path),
        metrics,
        source=f"models:/{name}/{mv.version}",
        downloaded=True,
    )


def _read_mlmodel(model_dir: Path) -> dict[str, Any]:
    return yaml.safe_load((model_dir / "MLmodel").read_text()) or {}


def _run_id_from_mlmodel(model_dir: Path) -> str:
    return str(_read_mlmodel(model_dir).get("run_id") or "")


# ---------------------------------------------------------------- loading


def _signature_columns(mlmodel: dict[str, Any]) -> tuple[tuple[str, ...], dict[str, Any]]:
    signature = mlmodel.get("signature") or {}
    raw_inputs = signature.get("inputs")
    if not raw_inputs:
        raise ModelRejectedError("model has no input signature; log it with a signature")
    inputs = json.loads(raw_inputs) if isinstance(raw_inputs, str) else raw_inputs
    names: list[str] = []
    for col in inputs:
        if "name" not in col:
            raise ModelRejectedError("tensor signatures are not supported; use named columns")
        if col.get("type") not in NUMERIC_TYPES:
            raise ModelRejectedError(f"column {col['name']!r} is not numeric ({col.get('type')})")
        names.append(str(col["name"]))
    outputs = signature.get("outputs")
    described = {
        "inputs": inputs,
        "outputs": json.loads(outputs) if isinstance(outputs, str) else outputs,
    }
    return tuple(names), described


def _deserialize(model_dir: Path, flavor: dict[str, Any]) -> Any:
    model_file = model_dir / flavor["pickled_model"]
    fmt = flavor.get("serialization_format", "pickle")
    if fmt == "skops":
        import skops.io

        untrusted = skops.io.get_untrusted_types(file=str(model_file))
        foreign = [t for t in untrusted if not t.startswith(TRUSTED_TYPE_PREFIXES)]
        if foreign:
            raise ModelRejectedError(
                f"model contains types outside the trusted libraries: {foreign}"
            )
        return skops.io.load(str(model_file), trusted=untrusted)
    # pickle executes arbitrary code; only with MLflow's own explicit opt-in.
    if os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "").lower() != "true":
        raise ModelRejectedError(
            f"model is serialized as {fmt}: needs MLFLOW_ALLOW_PICKLE_DESERIALIZATION=true"
        )
    import mlflow.sklearn

    return mlflow.sklearn.load_model(str(model_dir))


def _input_example(model_dir: Path, mlmodel: dict[str, Any], names: tuple[str, ...]) -> np.ndarray:
    info = mlmodel.get("saved_input_example_info") or {}
    path = model_dir / info.get("artifact_path", "input_example.json")
    if not path.is_file():
        raise ModelRejectedError("model has no logged input example for the smoke prediction")
    doc = json.loads(path.read_text())
    if isinstance(doc, dict) and "columns" in doc and "data" in doc:
        index = {c: i for i, c in enumerate(doc["columns"])}
        rows = [[row[index[n]] for n in names] for row in doc["data"]]
    elif isinstance(doc, dict) and "dataframe_split" in doc:
        inner = doc["dataframe_split"]
        index = {c: i for i, c in enumerate(inner["columns"])}
        rows = [[row[index[n]] for n in names] for row in inner["data"]]
    elif isinstance(doc, list):
        rows = [[rec[n] for n in names] for rec in doc]
    else:
        raise ModelRejectedError("unsupported input example layout")
    return np.asarray(rows, dtype=np.float64)


def load_local(resolved: Resolved) -> LoadedModel:
    """Check versions, deserialize and describe a model directory (no smoke test yet)."""
    model_dir = resolved.local_dir
    mlmodel = _read_mlmodel(model_dir)
    flavors = mlmodel.get("flavors") or {}
    if "sklearn" not in flavors:
        raise ModelRejectedError("model has no sklearn flavor")
    metadata = mlmodel.get("metadata") or {}
    trained = trained_versions(metadata, flavors, model_dir)
    check = check_versions(trained, serving_versions())
    if check.incompatible:
        raise ModelRejectedError("incompatible dependencies: " + "; ".join(check.incompatible))
    for package, t, s in check.mismatches:
        log.warning("dependency mismatch: %s trained with %s, serving with %s", package, t, s)
    names, signature = _signature_columns(mlmodel)
    estimator = _deserialize(model_dir, flavors["sklearn"])
    if not hasattr(estimator, "predict_proba") or not hasattr(estimator, "classes_"):
        raise ModelRejectedError("model is not a fitted classifier with predict_proba")
    n_in = getattr(estimator, "n_features_in_", len(names))
    if n_in != len(names):
        raise ModelRejectedError(f"signature has {len(names)} columns, model expects {n_in}")
    fitted_names = getattr(estimator, "feature_names_in_", None)
    if fitted_names is not None and tuple(map(str, fitted_names)) != names:
        # Requests become a bare float matrix, so column order must be the estimator's own.
        raise ModelRejectedError("signature columns differ from the estimator's feature_names_in_")
    return LoadedModel(
        name=resolved.name,
        version=resolved.version,
        alias=resolved.alias,
        run_id=resolved.run_id or str(mlmodel.get("run_id") or ""),
        source=resolved.source or str(model_dir),
        estimator=estimator,
        feature_names=names,
        classes=tuple(str(c) for c in estimator.classes_),
        signature=signature,
        trained_with=trained,
        reference=metadata.get("ml_service_reference"),
        input_example=_input_example(model_dir, mlmodel, names),
        mismatches=check.mismatches,
        training_metrics=resolved.training_metrics,
    )


def smoke_test(model: LoadedModel) -> None:
    """Predict on the logged input example; the model only counts as loaded if this passes."""
    proba = np.asarray(model.predict_proba(model.input_example))
    n = model.input_example.shape[0]
    if proba.shape != (n, len(model.classes)):
        raise ModelRejectedError(f"smoke prediction returned shape {proba.shape}")
    if not np.all(np.isfinite(proba)) or not np.allclose(proba.sum(axis=1), 1.0, atol=1e-6):
        raise ModelRejectedError("smoke prediction returned invalid probabilities")


def stamp(model: LoadedModel, started: float) -> LoadedModel:
    model.load_seconds = time.perf_counter() - started
    model.loaded_at = datetime.now(UTC).isoformat(timespec="seconds")
    return model
