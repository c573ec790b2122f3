"""Train the ml-service classifier, log it to MLflow and register a new model version.

    python -m ml_service.training [--alias champion] [--seed 42] [--model-seed 42] ...
    python -m ml_service.training --output-dir DIR   # no tracking server: an MLflow model dir

The tracking server comes from MLFLOW_TRACKING_URI. The alias moves only when --alias is given:
deployed environments pin an exact version in git, so training never silently changes what
production serves. Two seeds: --seed draws the held-out split (the quality gate scores every
version on that split, so it must stay the same across versions), --model-seed the estimator's
randomness (which features each split considers): retraining with another --model-seed gives an
equivalent model the gate can compare. --output-dir saves the same model (signature, input
example, drift reference in its metadata) to a local directory instead, with no run and no
registry: the image's demo model. --served-data adds the rows the service answered and got labels
for (its payload log joined with the `/feedback` labels by prediction ID) to the training rows, or
(--served-use evaluate) scores the new model on them too; the held-out split stays the fixed one
either way.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import platform
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from ml_service.model_format import (
    REFERENCE_KEY,
    SKOPS_TRUSTED_TYPES,
    TRAINING_KEY,
    compute_reference,
    snake_case,
)
from ml_service.payload_format import labelled_rows

log = logging.getLogger("ml_service.train")

MODEL_NAME = "ml-service"
EXPERIMENT = "ml-service"
REPO_ROOT = Path(__file__).resolve().parents[3]
RESULT_PREFIX = "ML_SERVICE_TRAIN_RESULT "
VERSIONED_PACKAGES = ("scikit-learn", "numpy", "scipy", "pandas", "skops", "mlflow")


@dataclass(frozen=True)
class Dataset:
    x_train: pd.DataFrame
    x_test: pd.DataFrame
    y_train: pd.Series
    y_test: pd.Series
    fingerprint: str


def load_dataset() -> tuple[pd.DataFrame, pd.Series]:
    """Breast cancer (212 malignant / 357 benign): ships with scikit-learn, real imbalance."""
    from sklearn.datasets import load_breast_cancer

    raw = load_breast_cancer(as_frame=True)
    x = raw.data.astype("float64")
    x.columns = [snake_case(c) for c in x.columns]
    y = pd.Series(np.asarray(raw.target_names)[raw.target.to_numpy()], name="label", dtype=object)
    return x, y


def fingerprint(x: pd.DataFrame, y: pd.Series) -> str:
    """sha256 over column names, float64 values (C order) and labels: any change shows."""
    h = hashlib.sha256()
    h.update(json.dumps(list(x.columns)).encode())
    h.update(np.ascontiguousarray(x.to_numpy(dtype="float64")).tobytes())
    h.update("\n".join(map(str, y)).encode())
    return f"sha256:{h.hexdigest()}"


def split(x: pd.DataFrame, y: pd.Series, test_size: float, seed: int) -> Dataset:
    from sklearn.model_selection import train_test_split

    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, stratify=y, random_state=seed
    )
    return Dataset(x_tr, x_te, y_tr, y_te, fingerprint(x, y))


@dataclass(frozen=True)
class Served:
    """Labelled rows of the payload log: what the service answered and the truth came back for."""

    x: pd.DataFrame
    y: pd.Series
    counts: dict[str, int]
    fingerprint: str


class ServedDataError(ValueError):
    """--served-data holds nothing usable (the message says why)."""


def load_served(
    uri: str, columns: list[str], classes: set[str], since: str | None = None
) -> Served:
    """The payload log at `uri` joined with its labels (ml_service.payload_format)."""
    rows, labels, _ids, counts = labelled_rows(uri, columns, since)
    if not rows:
        raise ServedDataError(
            f"--served-data: no labelled rows ({counts['predictions']} logged rows, "
            f"{counts['labels']} labels, none joined)"
        )
    unknown = sorted(set(labels) - classes)
    if unknown:
        raise ServedDataError(f"--served-data: labels outside the data set's classes: {unknown}")
    x = pd.DataFrame(rows, columns=columns, dtype="float64")
    y = pd.Series(labels, name="label", dtype=object)
    return Served(x, y, counts, fingerprint(x, y))


def with_served(data: Dataset, served: Served) -> Dataset:
    """The split with the served rows added to its training part (the test part is untouched)."""
    x_train = pd.concat([data.x_train, served.x], ignore_index=True)
    y_train = pd.concat([data.y_train, served.y], ignore_index=True)
    return Dataset(x_train, data.x_test, y_train, data.y_test, data.fingerprint)


def build_pipeline(args: argparse.Namespace):
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline

    # Trees need no scaling; the Pipeline keeps the artifact's shape stable if steps are added.
    clf = HistGradientBoostingClassifier(
        learning_rate=args.learning_rate,
        max_iter=args.max_iter,
        max_leaf_nodes=args.max_leaf_nodes,
        max_depth=args.max_depth,
        min_samples_leaf=args.min_samples_leaf,
        l2_regularization=args.l2_regularization,
        class_weight=None if args.class_weight == "none" else args.class_weight,
        # Each split considers a random share of the 30 (strongly correlated) features: a
        # regularizer, and the randomness --model-seed draws.
        max_features=args.max_features,
        early_stopping=False,  # the validation split it would draw changes what is trained
        random_state=args.model_seed,
    )
    return Pipeline([("classifier", clf)])


def evaluate(pipe, data: Dataset) -> tuple[dict[str, float], np.ndarray, np.ndarray]:
    return score(pipe, data.x_test, data.y_test)


def score(pipe, x: pd.DataFrame, y_true: pd.Series) -> tuple[dict, np.ndarray, np.ndarray]:
    from sklearn.metrics import (
        accuracy_score,
        f1_score,
        precision_recall_fscore_support,
        roc_auc_score,
    )

    classes = list(pipe.classes_)
    pred = pipe.predict(x)
    proba = pipe.predict_proba(x)
    y = y_true.to_numpy()
    metrics = {
        "accuracy": float(accuracy_score(y, pred)),
        "f1_macro": float(f1_score(y, pred, average="macro")),
        # positive class = malignant: the one a screening model must not miss
        "roc_auc": float(roc_auc_score(y == "malignant", proba[:, classes.index("malignant")])),
    }
    prec, rec, _, support = precision_recall_fscore_support(y, pred, labels=classes)
    for i, c in enumerate(classes):
        metrics[f"precision_{c}"] = float(prec[i])
        metrics[f"recall_{c}"] = float(rec[i])
        metrics[f"test_support_{c}"] = float(support[i])
    return metrics, pred, proba


def confusion_figure(y_true, y_pred, classes):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(4.5, 4))
    ConfusionMatrixDisplay.from_predictions(y_true, y_pred, labels=classes, ax=ax, colorbar=False)
    ax.set_title("Test-set confusion matrix")
    fig.tight_layout()
    return fig


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(REPO_ROOT), *args],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def lock_hashes(root: Path = REPO_ROOT) -> dict[str, str]:
    """sha256 of every requirements/*.txt (the lock files)."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((root / "requirements").glob("*.txt"))
    }


def package_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for pkg in VERSIONED_PACKAGES:
        try:
            versions[pkg] = importlib_metadata.version(pkg)
        except importlib_metadata.PackageNotFoundError:
            continue
    return versions


def training_metadata(data: Dataset, args: argparse.Namespace) -> dict[str, Any]:
    versions = package_versions()
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        # flat keys for the serving-side compatibility check, `packages` for everything else
        "python_version": versions["python"],
        "sklearn_version": versions.get("scikit-learn"),
        "numpy_version": versions.get("numpy"),
        "packages": versions,
        "git_commit": _git("rev-parse", "HEAD") or "unknown",
        "git_dirty": bool(status) if status is not None else None,
        "lock_sha256": lock_hashes(),
        "data_fingerprint": data.fingerprint,
        "train_fingerprint": fingerprint(data.x_train, data.y_train),
        "test_fingerprint": fingerprint(data.x_test, data.y_test),
        "dataset": "sklearn.datasets.load_breast_cancer",
        "seed": args.seed,
        "test_size": args.test_size,
        "model_seed": args.model_seed,
        "serialization_format": "skops",
    }


def served_summary(args: argparse.Namespace, served: Served) -> dict[str, Any]:
    """What --served-data contributed, as the model's metadata and the result document say."""
    return {
        "uri": args.served_data,
        "since": args.served_since,
        "use": args.served_use,
        "rows": len(served.y),
        "fingerprint": served.fingerprint,
        **{f"logged_{k}": v for k, v in served.counts.items()},
    }


def serving_requirements(versions: dict[str, str]) -> list[str]:
    """What loading the model needs (mlflow-skinny is enough beside these)."""
    return [
        f"{pkg}=={versions[pkg]}" for pkg in ("scikit-learn", "numpy", "pandas", "skops", "scipy")
    ]


def predictions_digest(pred: np.ndarray, proba: np.ndarray) -> str:
    """Hash of test-set predictions and probabilities (bit-exact), for reproducibility checks."""
    h = hashlib.sha256("\n".join(map(str, pred)).encode())
    h.update(np.ascontiguousarray(proba, dtype="float64").tobytes())
    return h.hexdigest()


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m ml_service.training", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--alias", help="point this registered-model alias (e.g. champion) at the new version"
    )
    p.add_argument("--model-name", default=MODEL_NAME, help="registered model name (%(default)s)")
    p.add_argument("--experiment", default=EXPERIMENT, help="MLflow experiment (%(default)s)")
    p.add_argument(
        "--seed", type=int, default=42, help="split seed: which rows are held out (%(default)s)"
    )
    p.add_argument(
        "--model-seed", type=int, default=42, help="the estimator's random_state (%(default)s)"
    )
    p.add_argument("--test-size", type=float, default=0.25, help="held-out share (%(default)s)")
    p.add_argument("--learning-rate", type=float, default=0.1)
    p.add_argument("--max-iter", type=int, default=200)
    p.add_argument("--max-leaf-nodes", type=int, default=15)
    p.add_argument("--max-depth", type=int, default=None)
    p.add_argument("--min-samples-leaf", type=int, default=20)
    p.add_argument("--l2-regularization", type=float, default=0.0)
    p.add_argument(
        "--max-features", type=float, default=0.5, help="share of features per split (%(default)s)"
    )
    p.add_argument("--class-weight", choices=["none", "balanced"], default="none")
    p.add_argument("--drift-bins", type=int, default=10, help="quantile bins per feature")
    p.add_argument(
        "--served-data",
        metavar="URI",
        help="a payload log (PAYLOAD_LOG_URI: s3://bucket/prefix or a directory): its rows that "
        "got a label through /feedback, joined by prediction ID",
    )
    p.add_argument(
        "--served-use",
        choices=["train", "evaluate"],
        default="train",
        help="add the served rows to the training rows, or only score the model on them "
        "(%(default)s); the held-out split is the fixed one either way",
    )
    p.add_argument(
        "--served-since", metavar="YYYY-MM-DD", help="only payload-log objects of this UTC date on"
    )
    p.add_argument("--output-json", type=Path, help="also write the result document here")
    p.add_argument(
        "--output-dir",
        type=Path,
        help="save the model to this new directory instead of logging it to a tracking server",
    )
    args = p.parse_args(argv)
    if not 0.05 <= args.test_size <= 0.5:
        p.error("--test-size must be between 0.05 and 0.5")
    if not 0.0 < args.max_features <= 1.0:
        p.error("--max-features must be in (0, 1]")
    if args.drift_bins < 2:
        p.error("--drift-bins must be at least 2")
    if args.output_dir and args.alias:
        p.error("--alias needs the registry; it cannot be used with --output-dir")
    if args.output_dir and args.output_dir.exists():
        p.error(f"--output-dir {args.output_dir} exists; remove it first")
    if args.served_since and not re.fullmatch(r"\d{4}-\d{2}-\d{2}", args.served_since):
        p.error("--served-since must be a date, YYYY-MM-DD")
    if (args.served_since or args.served_use != "train") and not args.served_data:
        p.error("--served-since and --served-use need --served-data")
    return args


def hyper_params(args: argparse.Namespace) -> dict[str, Any]:
    keys = (
        "seed",
        "test_size",
        "model_seed",
        "learning_rate",
        "max_iter",
        "max_leaf_nodes",
        "max_depth",
        "min_samples_leaf",
        "l2_regularization",
        "max_features",
        "class_weight",
        "drift_bins",
    )
    return {k: getattr(args, k) for k in keys}


def train(args: argparse.Namespace) -> dict[str, Any]:
    import mlflow
    from mlflow.models import infer_signature
    from threadpoolctl import threadpool_limits

    x, y = load_dataset()
    data = split(x, y, args.test_size, args.seed)
    served = None
    if args.served_data:
        served = load_served(args.served_data, list(x.columns), set(y), args.served_since)
        if args.served_use == "train":
            data = with_served(data, served)
    # One OpenMP thread: on small, shared machines more threads only contend (fit took 35 s
    # instead of ~2 s here), and the result must not depend on the core count.
    with threadpool_limits(limits=1):
        pipe = build_pipeline(args).fit(data.x_train, data.y_train)
        metrics, pred, proba = evaluate(pipe, data)
        if served is not None:
            metrics["served_rows"] = float(len(served.y))
            if args.served_use == "evaluate":
                served_metrics = score(pipe, served.x, served.y)[0]
                metrics.update({f"served_{k}": v for k, v in served_metrics.items()})
    classes = [str(c) for c in pipe.classes_]

    reference = compute_reference(
        data.x_train.to_numpy(),
        list(data.x_train.columns),
        data.y_train.to_numpy(),
        classes,
        n_bins=args.drift_bins,
    )
    training = training_metadata(data, args)
    if served is not None:
        training["served_data"] = served_summary(args, served)
    signature = infer_signature(data.x_train, pipe.predict(data.x_train.head(5)))
    # one real row per class: the server's smoke prediction and the README's curl use it
    example = pd.concat([data.x_test[data.y_test == c].head(1) for c in classes]).reset_index(
        drop=True
    )

    log_model_args = {
        "signature": signature,
        "input_example": example,
        "serialization_format": "skops",
        "skops_trusted_types": SKOPS_TRUSTED_TYPES,
        "metadata": {REFERENCE_KEY: reference, TRAINING_KEY: training},
        # explicit: MLflow's inference re-imports the model in a subprocess (~20 s here)
        "pip_requirements": serving_requirements(training["packages"]),
    }
    result = {
        "name": args.model_name,
        "metrics": metrics,
        "params": hyper_params(args),
        "predictions_sha256": predictions_digest(pred, proba),
        "test_predictions": [str(p) for p in pred],
        "git_commit": training["git_commit"],
        "data_fingerprint": training["data_fingerprint"],
        "example": example.iloc[0].to_dict(),
    }
    if served is not None:
        result["served"] = training["served_data"]
    if args.output_dir:
        import mlflow.sklearn

        mlflow.sklearn.save_model(pipe, path=str(args.output_dir), **log_model_args)
        return {**result, "version": None, "model_uri": str(args.output_dir.resolve())}

    mlflow.set_experiment(args.experiment)
    with mlflow.start_run() as run:
        mlflow.log_params({"model": "HistGradientBoostingClassifier", **hyper_params(args)})
        if served is not None:
            summary = training["served_data"]
            mlflow.log_params({f"served_{k}": summary[k] for k in ("uri", "since", "use")})
            mlflow.set_tag("served_data_fingerprint", summary["fingerprint"])
        mlflow.log_metrics(metrics)
        mlflow.set_tags(
            {
                "git_commit": training["git_commit"],
                "data_fingerprint": training["data_fingerprint"],
                "predictions_sha256": predictions_digest(pred, proba),
            }
        )
        fig = confusion_figure(data.y_test, pred, classes)
        mlflow.log_figure(fig, "confusion_matrix.png")
        with tempfile.TemporaryDirectory() as tmp:
            ref_path = Path(tmp, "reference.json")
            ref_path.write_text(json.dumps(reference, indent=1, sort_keys=True))
            mlflow.log_artifact(str(ref_path), artifact_path="drift")
        info = mlflow.sklearn.log_model(
            pipe, name="model", registered_model_name=args.model_name, **log_model_args
        )
        version = str(info.registered_model_version)
        client = mlflow.MlflowClient()
        for key in ("git_commit", "data_fingerprint"):
            client.set_model_version_tag(args.model_name, version, key, training[key])
        if args.alias:
            client.set_registered_model_alias(args.model_name, args.alias, version)

    return {
        **result,
        "version": version,
        "run_id": run.info.run_id,
        "model_id": getattr(info, "model_id", None),
        "model_uri": f"models:/{args.model_name}/{version}",
        "alias": args.alias,
        "alias_uri": f"models:/{args.model_name}@{args.alias}" if args.alias else None,
        "tracking_uri": mlflow.get_tracking_uri(),
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(), format="%(message)s")
    args = parse_args(argv)
    if not args.output_dir and not os.environ.get("MLFLOW_TRACKING_URI"):
        log.error(
            "MLFLOW_TRACKING_URI is not set (e.g. http://127.0.0.1:5000; `make train` sets it)"
        )
        return 2
    try:
        result = train(args)
    except ServedDataError as exc:
        log.error("%s", exc)
        return 2
    if args.output_json:
        args.output_json.write_text(json.dumps(result, indent=2))  # example keeps column order
    m = result["metrics"]
    scores = f"accuracy={m['accuracy']:.4f} f1_macro={m['f1_macro']:.4f} roc_auc={m['roc_auc']:.4f}"
    if args.output_dir:
        print(f"saved {result['name']} to {result['model_uri']}; {scores}", file=sys.stderr)
        print(result["model_uri"])
        return 0
    alias = f", alias {args.alias} -> {result['version']}" if args.alias else " (no alias moved)"
    print(
        f"registered {result['name']} version {result['version']}{alias}; {scores}",
        file=sys.stderr,
    )
    summary = {k: result[k] for k in ("name", "version", "run_id", "model_uri", "alias")}
    print(RESULT_PREFIX + json.dumps(summary, sort_keys=True))
    print(result["version"])
    return 0
