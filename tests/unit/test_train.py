"""Training pieces that need no tracking server: data, split, pipeline, reference, metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ml_service.model_format import bin_indices, compute_reference, quantile_edges, snake_case
from ml_service.training import train
from threadpoolctl import threadpool_limits


@pytest.fixture(scope="module")
def dataset():
    return train.load_dataset()


@pytest.fixture(scope="module")
def args():
    return train.parse_args([])


def test_snake_case() -> None:
    assert snake_case("mean concave points") == "mean_concave_points"
    assert snake_case("Worst Fractal-Dimension ") == "worst_fractal_dimension"


def test_dataset_has_snake_case_columns_and_string_labels(dataset) -> None:
    x, y = dataset
    assert x.shape == (569, 30)
    assert list(x.columns[:3]) == ["mean_radius", "mean_texture", "mean_perimeter"]
    assert "worst_concave_points" in x.columns
    assert all(c == snake_case(c) for c in x.columns)
    assert (x.dtypes == "float64").all()
    assert y.value_counts().to_dict() == {"benign": 357, "malignant": 212}


def test_split_is_stratified_and_seeded(dataset) -> None:
    x, y = dataset
    a = train.split(x, y, 0.25, seed=42)
    b = train.split(x, y, 0.25, seed=42)
    c = train.split(x, y, 0.25, seed=7)
    assert list(a.x_test.index) == list(b.x_test.index)
    assert list(a.x_test.index) != list(c.x_test.index)
    share = lambda s: (s == "malignant").mean()  # noqa: E731
    assert share(a.y_train) == pytest.approx(share(y), abs=0.01)
    assert share(a.y_test) == pytest.approx(share(y), abs=0.01)
    assert a.fingerprint == c.fingerprint  # the whole data set, whatever the split


def test_fingerprint_sees_any_change(dataset) -> None:
    x, y = dataset
    base = train.fingerprint(x, y)
    x2 = x.copy()
    x2.iloc[100, 5] += 1e-9
    y2 = y.copy()
    y2.iloc[0] = "benign" if y.iloc[0] == "malignant" else "malignant"
    assert base == train.fingerprint(x.copy(), y.copy())
    assert base.startswith("sha256:")
    assert len({base, train.fingerprint(x2, y), train.fingerprint(x, y2)}) == 3


def test_hyper_parameter_flags_reach_the_estimator() -> None:
    args = train.parse_args(
        ["--learning-rate", "0.05", "--max-iter", "7", "--max-depth", "3", "--class-weight",
         "balanced", "--seed", "5"]
    )  # fmt: skip
    clf = train.build_pipeline(args).named_steps["classifier"]
    assert (clf.learning_rate, clf.max_iter, clf.max_depth) == (0.05, 7, 3)
    assert clf.class_weight == "balanced" and clf.random_state == 5
    logged = train.hyper_params(args)
    assert logged["learning_rate"] == 0.05 and logged["max_depth"] == 3
    assert logged["seed"] == 5 and logged["class_weight"] == "balanced"


@pytest.mark.parametrize(
    "argv", [["--test-size", "0.9"], ["--drift-bins", "1"], ["--class-weight", "heavy"]]
)
def test_bad_flags_are_rejected(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        train.parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


def test_fit_is_reproducible_whatever_the_thread_count(dataset) -> None:
    x, y = dataset
    args = train.parse_args(["--max-iter", "30"])  # small: two OpenMP threads on a busy box
    data = train.split(x, y, args.test_size, args.seed)
    results = []
    for limit in (1, 2, 1):
        with threadpool_limits(limits=limit):
            pipe = train.build_pipeline(args).fit(data.x_train, data.y_train)
            metrics, pred, proba = train.evaluate(pipe, data)
        results.append((metrics, train.predictions_digest(pred, proba)))
    assert results[0] == results[1] == results[2]


def test_default_model_is_accurate(dataset, args) -> None:
    x, y = dataset
    data = train.split(x, y, args.test_size, args.seed)
    with threadpool_limits(limits=1):
        pipe = train.build_pipeline(args).fit(data.x_train, data.y_train)
        metrics, _, _ = train.evaluate(pipe, data)
    assert list(pipe.classes_) == ["benign", "malignant"]
    assert metrics["accuracy"] > 0.93 and metrics["roc_auc"] > 0.98
    expected = {"accuracy", "f1_macro", "roc_auc"} | {
        f"{k}_{c}" for k in ("precision", "recall", "test_support") for c in pipe.classes_
    }
    assert set(metrics) == expected


def test_quantile_edges_and_bins() -> None:
    values = np.arange(1, 101, dtype=float)
    edges = quantile_edges(values, 10)
    assert len(edges) == 9
    counts = np.bincount(bin_indices(edges, values))
    assert counts.tolist() == [10] * 10
    # right-closed: a value equal to an edge falls in the lower bin
    assert bin_indices(edges, np.array([edges[0], edges[0] + 1e-9])).tolist() == [0, 1]


def test_reference_from_training_split(dataset, args) -> None:
    x, y = dataset
    data = train.split(x, y, args.test_size, args.seed)
    ref = compute_reference(
        data.x_train.to_numpy(), list(data.x_train.columns), data.y_train.to_numpy(),
        ["benign", "malignant"], n_bins=10,
    )  # fmt: skip
    assert ref["features"] == list(x.columns)
    assert ref["class_labels"] == ["benign", "malignant"]
    assert ref["class_priors"]["malignant"] == pytest.approx(212 / 569, abs=0.01)
    s = ref["feature_stats"]["mean_radius"]
    assert s["min"] == data.x_train["mean_radius"].min()
    assert s["max"] == data.x_train["mean_radius"].max()
    assert len(s["edges"]) == 9 and sum(s["fractions"]) == pytest.approx(1)
    # YAML/JSON-safe: no numpy scalars hiding in the metadata
    assert json.loads(json.dumps(ref)) == ref


def test_training_metadata_records_versions_and_locks(dataset, args) -> None:
    import sklearn

    x, y = dataset
    meta = train.training_metadata(train.split(x, y, args.test_size, args.seed), args)
    assert meta["sklearn_version"] == sklearn.__version__
    assert meta["numpy_version"] == np.__version__
    assert meta["packages"]["scikit-learn"] == sklearn.__version__
    assert set(meta["lock_sha256"]) >= {"requirements/runtime.txt", "requirements/dev.txt"}
    assert all(len(h) == 64 for h in meta["lock_sha256"].values())
    assert len(meta["git_commit"]) == 40
    assert meta["data_fingerprint"].startswith("sha256:")
    assert json.loads(json.dumps(meta)) == meta


def test_main_needs_a_tracking_uri(monkeypatch, caplog) -> None:
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert train.main([]) == 2
    assert "MLFLOW_TRACKING_URI is not set" in caplog.text
