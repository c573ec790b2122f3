"""Find, download, check and deserialize the model named by MODEL_URI.

Everything here is blocking: `service.Service` runs it on a loader thread, `preflight` in the
foreground. MLflow is imported lazily so the port opens before its (slow) import finishes.
A failure is a `LoadError` with one of the `Reason`s below: what `/ready`, the log, the preflight
check and the pod's termination message say, with no URL, host or credential in it.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import re
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ml_service.model_format import (
    REFERENCE_KEY,
    TRAINING_KEY,
    ForeignTypesError,
    trusted_types,
)
from ml_service.redact import redact

from .flat_trees import FlatTrees, each_column_missing, flatten
from .settings import Settings

log = logging.getLogger(__name__)

NUMERIC_TYPES = {"double", "float", "long", "integer"}
# One thread imports MLflow's scoring machinery at a time (LoadedModel.mlflow_schemas).
_MLFLOW_IMPORT = threading.Lock()
# `flavors.python_function.predict_fn` values /invocations can answer (MLflow's default: predict).
PREDICT_FNS = ("predict", "predict_proba")


class Reason(StrEnum):
    """Why no model is serving. The value is the `reason` of `/ready`."""

    STARTING = "starting"
    REGISTRY_UNREACHABLE = "registry_unreachable"
    MODEL_NOT_FOUND = "model_not_found"
    UNAUTHORIZED = "unauthorized"
    ARTIFACTS_UNAVAILABLE = "artifacts_unavailable"
    MODEL_REJECTED = "model_rejected"

    @property
    def message(self) -> str:
        return REASON_MESSAGES[self]


REASON_MESSAGES = {
    Reason.STARTING: "loading the model",
    Reason.REGISTRY_UNREACHABLE: "waiting for the MLflow tracking server (MLFLOW_TRACKING_URI) "
    "to answer",
    Reason.MODEL_NOT_FOUND: "the registry has no such model version or alias (MODEL_URI)",
    Reason.UNAUTHORIZED: "the tracking server or artifact store refused the credentials",
    Reason.ARTIFACTS_UNAVAILABLE: "waiting for the model files in the artifact store",
    Reason.MODEL_REJECTED: "the model files were found but cannot be served (see the log)",
}


class LoadError(Exception):
    """A failed load: `reason` is public, `detail` (redacted) is for the log only."""

    def __init__(self, reason: Reason, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


class ModelRejectedError(Exception):
    """The model was found but must not serve (incompatible, not a classifier, failed smoke)."""


def describe(exc: BaseException) -> str:
    """First line of an exception, redacted and bounded: safe for a log line."""
    text = str(exc).strip()
    first = text.splitlines()[0] if text else ""
    return redact(f"{type(exc).__name__}: {first[:300]}")


_AUTH_CODES = {"UNAUTHENTICATED", "PERMISSION_DENIED", "CUSTOMER_UNAUTHORIZED"}
_NOT_FOUND_CODES = {"RESOURCE_DOES_NOT_EXIST", "NOT_FOUND"}
# boto/S3 error codes that mean "your credentials were refused"
_S3_AUTH_CODES = {"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "403", "401"}


def _is_auth_failure(exc: BaseException) -> bool:
    if getattr(exc, "error_code", None) in _AUTH_CODES:
        return True
    response = getattr(exc, "response", None)  # botocore ClientError
    if isinstance(response, dict):
        code = str((response.get("Error") or {}).get("Code", ""))
        status = str((response.get("ResponseMetadata") or {}).get("HTTPStatusCode", ""))
        return code in _S3_AUTH_CODES or status in ("401", "403")
    return False


def _classify(exc: BaseException, phase: str) -> Reason:
    if isinstance(exc, LoadError):
        return exc.reason
    if isinstance(exc, ModelRejectedError) or phase == "load":
        return Reason.MODEL_REJECTED
    if _is_auth_failure(exc):
        return Reason.UNAUTHORIZED
    if phase == "resolve":
        if getattr(exc, "error_code", None) in _NOT_FOUND_CODES:
            return Reason.MODEL_NOT_FOUND
        return Reason.REGISTRY_UNREACHABLE
    return Reason.ARTIFACTS_UNAVAILABLE


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
    # For the MLflow scoring protocol (mlflow_api.py): the MLmodel signature as written, and what
    # MLflow's own objects make of it (`mlflow_schemas`, built off the start-up path).
    raw_signature: dict[str, Any] = field(default_factory=dict)
    predict_fn: str = "predict"
    # Columns the model predicts on when missing (NaN): found by the smoke test, see there.
    nan_columns: frozenset[str] = frozenset()
    # The tree walk without scikit-learn's per-tree loop, once the smoke test proved it exact.
    flat: FlatTrees | None = None
    load_seconds: float = 0.0
    loaded_at: str = ""

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        if self.flat is not None:
            return self.flat.predict_proba(features)
        return self.estimator.predict_proba(features)

    @property
    def has_params(self) -> bool:
        return bool(self.raw_signature.get("params"))

    @functools.cached_property
    def mlflow_schemas(self) -> tuple[Any, Any]:
        """(input Schema, ParamSchema or None) as MLflow's schema enforcement needs them.

        Importing MLflow's scoring machinery takes a second; `Service` warms this up on a thread
        once the model serves, so readiness never waits for it. Whatever else needs that
        machinery asks for this first: it waits for the one import instead of starting its own
        (two threads importing MLflow at once can each see the other's modules half-built)."""
        with _MLFLOW_IMPORT:
            import mlflow.pyfunc.scoring_server  # noqa: F401 - what the /invocations fallback uses
            from mlflow.models.signature import ModelSignature

            signature = ModelSignature.from_dict(self.raw_signature)
            return signature.inputs, signature.params

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
    training = metadata.get(TRAINING_KEY) or {}
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


# `/model`'s `source` for a model directory: where the files are on this machine is nobody's
# business but the operator's.
LOCAL_SOURCE = "local"
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
            run_id=str(_read_mlmodel(local).get("run_id") or ""),
            local_dir=local,
            training_metrics={},
            source=LOCAL_SOURCE,
        )
    if not settings.model_uri.startswith("models:/"):
        # neither a registry URI nor a directory holding an MLmodel file (yet): a volume that is
        # not mounted, a typo, or a model directory still being copied
        raise LoadError(
            Reason.MODEL_NOT_FOUND, "MODEL_URI is not models:/... and has no MLmodel file"
        )
    m = _ALIAS_RE.match(settings.model_uri) or _VERSION_RE.match(settings.model_uri)
    if m is None:
        raise LoadError(
            Reason.MODEL_REJECTED,
            "MODEL_URI must be models:/<name>@<alias> or models:/<name>/<version>",
        )
    try:
        from mlflow import MlflowClient

        tracking_uri = settings.mlflow_tracking_uri
        client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
        name, alias = m["name"], m.groupdict().get("alias")
        if alias:
            mv = client.get_model_version_by_alias(name, alias)
        else:
            mv = client.get_model_version(name, m["version"])
    except Exception as exc:
        raise LoadError(_classify(exc, "resolve"), describe(exc)) from None

    # Pin the exact version: an alias that moves during the download must not mix versions.
    dst = Path(tempfile.mkdtemp(prefix="model-", dir=scratch))
    try:
        import mlflow

        path = mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{mv.version}",
            dst_path=str(dst),
            tracking_uri=tracking_uri,
        )
    except Exception as exc:
        shutil.rmtree(dst, ignore_errors=True)
        raise LoadError(_classify(exc, "download"), describe(exc)) from None
    metrics: dict[str, float] = {}
    if mv.run_id:
        try:
            metrics = dict(client.get_run(mv.run_id).data.metrics)
        except Exception as exc:  # training metrics are informative only
            log.warning("could not read training metrics of run %s: %s", mv.run_id, describe(exc))
    return Resolved(
        name,
        str(mv.version),
        alias,
        mv.run_id or "",
        Path(path),
        metrics,
        source=f"models:/{name}/{mv.version}",
    )


def _read_mlmodel(model_dir: Path) -> dict[str, Any]:
    return yaml.safe_load((model_dir / "MLmodel").read_text()) or {}


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

        try:
            trusted = trusted_types(model_file)
        except ForeignTypesError as exc:
            raise ModelRejectedError(str(exc)) from None
        return skops.io.load(str(model_file), trusted=trusted)
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
    if isinstance(doc, dict) and "dataframe_split" in doc:
        doc = doc["dataframe_split"]
    if isinstance(doc, dict) and "columns" in doc and "data" in doc:
        index = {c: i for i, c in enumerate(doc["columns"])}
        rows = [[row[index[n]] for n in names] for row in doc["data"]]
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
    predict_fn = (flavors.get("python_function") or {}).get("predict_fn") or "predict"
    if predict_fn not in PREDICT_FNS:
        raise ModelRejectedError(f"pyfunc predict_fn {predict_fn!r} is not one of {PREDICT_FNS}")
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
        source=resolved.source or LOCAL_SOURCE,
        estimator=estimator,
        feature_names=names,
        classes=tuple(str(c) for c in estimator.classes_),
        signature=signature,
        trained_with=trained,
        reference=metadata.get(REFERENCE_KEY),
        input_example=_input_example(model_dir, mlmodel, names),
        mismatches=check.mismatches,
        training_metrics=resolved.training_metrics,
        raw_signature=mlmodel["signature"],
        predict_fn=predict_fn,
    )


def fetch_and_deserialize(settings: Settings, scratch: Path) -> LoadedModel:
    """Resolve, download and deserialize (no smoke test): every failure is a LoadError."""
    try:
        resolved = resolve_and_download(settings, scratch)
        try:
            model = load_local(resolved)
        except Exception as exc:
            raise LoadError(_classify(exc, "load"), describe(exc)) from None
    finally:
        # Everything needed is in memory now; failed attempts must not pile up downloads.
        for child in scratch.iterdir():
            shutil.rmtree(child, ignore_errors=True)
    return model


def smoke_test(model: LoadedModel) -> None:
    """Predict on the logged input example; the model only counts as loaded if this passes.

    It also asks the model itself which columns it can take missing: one row per column with
    that column NaN (then column by column if the model refuses the batch). The MLflow endpoint
    passes missing values on only for those columns, as `mlflow models serve` would succeed;
    for the others it answers 400 naming the column instead of failing inside the model.
    Last, it offers the model to the flat tree walk (flat_trees.py), which takes it only where
    it reproduces scikit-learn's probabilities exactly.
    """
    try:
        proba = np.asarray(model.predict_proba(model.input_example))
    except Exception as exc:
        raise LoadError(
            Reason.MODEL_REJECTED, f"smoke prediction failed: {describe(exc)}"
        ) from None
    n = model.input_example.shape[0]
    if proba.shape != (n, len(model.classes)):
        raise LoadError(Reason.MODEL_REJECTED, f"smoke prediction returned shape {proba.shape}")
    if not np.all(np.isfinite(proba)) or not np.allclose(proba.sum(axis=1), 1.0, atol=1e-6):
        raise LoadError(Reason.MODEL_REJECTED, "smoke prediction returned invalid probabilities")
    model.flat = flatten(model.estimator, model.input_example)
    if model.flat is not None:
        log.info("flat tree walk: %d trees, depth %d", model.flat.n_trees, model.flat.depth)
    model.nan_columns = _nan_columns(model)


def _nan_columns(model: LoadedModel) -> frozenset[str]:
    names = model.feature_names
    probe = each_column_missing(model.input_example[0])
    if _predicts(model, probe):
        return frozenset(names)
    return frozenset(n for i, n in enumerate(names) if _predicts(model, probe[i : i + 1]))


def _predicts(model: LoadedModel, features: np.ndarray) -> bool:
    try:
        return bool(np.all(np.isfinite(model.predict_proba(features))))
    except Exception:
        return False


def stamp(model: LoadedModel, started: float) -> LoadedModel:
    """Record the whole load time (fetch + smoke test) once the model is accepted."""
    model.load_seconds = time.perf_counter() - started
    model.loaded_at = datetime.now(UTC).isoformat(timespec="seconds")
    return model
