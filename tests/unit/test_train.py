"""Training pieces that need no tracking server: data, split, pipeline, reference, metadata."""

from __future__ import annotations

import json

import numpy as np
import pytest
from ml_service.model_format import bin_indices, compute_reference, quantile_edges, snake_case
from ml_service.training import train


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
         "balanced", "--seed", "5", "--model-seed", "9", "--max-features", "0.8"]
    )  # fmt: skip
    clf = train.build_pipeline(args).named_steps["classifier"]
    assert (clf.learning_rate, clf.max_iter, clf.max_depth) == (0.05, 7, 3)
    assert clf.class_weight == "balanced" and clf.max_features == 0.8
    assert clf.random_state == 9, "the model seed, not the split seed"
    logged = train.hyper_params(args)
    assert logged["learning_rate"] == 0.05 and logged["max_depth"] == 3
    assert (
        logged["seed"] == 5 and logged["model_seed"] == 9 and logged["class_weight"] == "balanced"
    )


@pytest.mark.parametrize(
    "argv",
    [
        ["--test-size", "0.9"],
        ["--drift-bins", "1"],
        ["--class-weight", "heavy"],
        ["--max-features", "0"],
        ["--served-use", "evaluate"],  # without --served-data
        ["--served-data", "/x", "--served-since", "yesterday"],
    ],
)
def test_bad_flags_are_rejected(argv, capsys) -> None:
    with pytest.raises(SystemExit) as exc:
        train.parse_args(argv)
    assert exc.value.code == 2
    assert "error" in capsys.readouterr().err


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


def write_payload_log(root, x, y, *, unlabelled: int = 0) -> list[str]:
    """A payload log as serving writes it: rows (with probabilities) and, apart from the last
    `unlabelled` rows, their labels, in two objects each."""
    from ml_service.payload_format import DirStore, encode, object_key

    store = DirStore(root)
    ids = [f"pid-{i}" for i in range(len(x))]
    rows = [
        {"time": "2026-12-01T00:00:00.000Z", "endpoint": "/predict", "request_id": f"r{i}",
         "prediction_id": pid, "model": {"name": "ml-service", "version": "1"},
         "features": dict(zip(x.columns, map(float, x.iloc[i]), strict=True)),
         "prediction": "benign", "probabilities": {"benign": 0.5, "malignant": 0.5}}
        for i, pid in enumerate(ids)
    ]  # fmt: skip
    labels = [
        {"time": "2026-12-02T00:00:00.000Z", "prediction_id": pid, "label": str(y.iloc[i])}
        for i, pid in enumerate(ids[: len(ids) - unlabelled])
    ]
    half = len(rows) // 2
    at = 1764547200.0  # 2025-12-01
    for seq, (kind, part) in enumerate(
        [("predictions", rows[:half]), ("predictions", rows[half:]), ("labels", labels[::-1])]
    ):
        store.put(object_key("", kind, at, "test", seq), encode(part))
    # the same label twice (two replicas took it): counts once
    store.put(object_key("", "labels", at, "test", 9), encode(labels[:3]))
    return ids


def test_training_takes_the_served_rows_joined_with_their_labels(dataset, tmp_path) -> None:
    x, y = dataset
    served = x.iloc[:60] * 1.01
    write_payload_log(tmp_path / "log", served, y.iloc[:60], unlabelled=10)
    out = tmp_path / "result.json"
    argv = ["--output-dir", str(tmp_path / "m"), "--served-data", str(tmp_path / "log"),
            "--output-json", str(out), "--max-iter", "20"]  # fmt: skip
    assert train.main(argv) == 0
    result = json.loads(out.read_text())
    assert result["served"]["rows"] == 50  # 10 rows never got a label
    assert result["served"]["logged_predictions"] == 60
    assert result["metrics"]["served_rows"] == 50
    # the rows were trained on: the training fingerprint covers them
    data = train.split(x, y, 0.25, 42)
    loaded = train.load_served(str(tmp_path / "log"), list(x.columns), set(y))
    trained = train.with_served(data, loaded)
    assert trained.x_train.shape[0] == data.x_train.shape[0] + 50
    assert trained.x_test is data.x_test  # the held-out split stays the fixed one
    mlmodel = (tmp_path / "m" / "MLmodel").read_text()
    assert train.fingerprint(trained.x_train, trained.y_train) in mlmodel
    assert train.fingerprint(data.x_train, data.y_train) not in mlmodel
    assert loaded.x.to_numpy().tolist() == served.iloc[:50].to_numpy().tolist()  # bit for bit
    assert loaded.y.tolist() == y.iloc[:50].tolist()


def test_served_rows_can_be_evaluation_data_only(dataset, tmp_path) -> None:
    x, y = dataset
    write_payload_log(tmp_path / "log", x.iloc[:40], y.iloc[:40])
    out = tmp_path / "result.json"
    argv = ["--output-dir", str(tmp_path / "m"), "--served-data", str(tmp_path / "log"),
            "--served-use", "evaluate", "--output-json", str(out), "--max-iter", "20"]  # fmt: skip
    assert train.main(argv) == 0
    metrics = json.loads(out.read_text())["metrics"]
    assert metrics["served_rows"] == 40
    assert 0.5 < metrics["served_accuracy"] <= 1.0 and "served_recall_malignant" in metrics


def test_an_empty_or_foreign_payload_log_is_a_clear_error(dataset, tmp_path, caplog) -> None:
    x, y = dataset
    argv = ["--output-dir", str(tmp_path / "m"), "--served-data", str(tmp_path / "none")]
    assert train.main(argv) == 2
    assert "no labelled rows" in caplog.text
    animals = y.iloc[:5].map({"benign": "cat", "malignant": "dog"})
    write_payload_log(tmp_path / "log", x.iloc[:5], animals)
    argv = ["--output-dir", str(tmp_path / "m2"), "--served-data", str(tmp_path / "log")]
    assert train.main(argv) == 2
    assert "labels outside the data set's classes" in caplog.text
