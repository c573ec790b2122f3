"""The flat tree walk must give scikit-learn's probabilities bit for bit, or not be used at all.

Every comparison is against the real `predict_proba` of the same fitted estimator, with
`np.array_equal` (no tolerance): rows at and next to every split threshold, missing values on
both sides of every split, infinities, multiclass, a Pipeline with a scaling step.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
from ml_service.serving import flat_trees
from ml_service.serving.flat_trees import MAX_ROWS, FlatTrees, flatten
from ml_service.training import train
from sklearn.datasets import load_iris
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

# Serving predicts on bare float matrices in the fitted column order (inference.py says why).
pytestmark = pytest.mark.filterwarnings("ignore:X does not have valid feature names")


@pytest.fixture(scope="module")
def served() -> tuple[Pipeline, np.ndarray]:
    """The pipeline `make train` builds, with its default hyper-parameters."""
    x, y = train.load_dataset()
    pipe = train.build_pipeline(train.parse_args([])).fit(x, y)
    return pipe, x.to_numpy()


@pytest.fixture(scope="module")
def trained_with_gaps() -> tuple[Pipeline, np.ndarray]:
    """Missing values in training: splits send NaN left in some nodes and right in others."""
    x, y = train.load_dataset()
    rng = np.random.default_rng(3)
    holed = x.to_numpy().copy()
    holed[rng.random(holed.shape) < 0.15] = np.nan
    pipe = Pipeline([("classifier", HistGradientBoostingClassifier(max_iter=60, random_state=0))])
    return pipe.fit(holed, y), holed


def _flat(pipe, x) -> FlatTrees:
    flat = flatten(pipe, x[:4])
    assert flat is not None
    return flat


def _same(pipe, flat: FlatTrees, rows: np.ndarray) -> None:
    expected = pipe.predict_proba(rows)
    got = flat.walk(rows)
    assert got.dtype == expected.dtype and got.shape == expected.shape
    mismatched = np.flatnonzero(~(got == expected).all(axis=1))
    assert mismatched.size == 0, f"{mismatched.size} rows differ, first {mismatched[:5]}"


def _threshold_rows(flat: FlatTrees, base: np.ndarray) -> np.ndarray:
    """For every split: its feature set exactly to the threshold, and one ulp either side."""
    split = np.isfinite(flat.threshold)
    rows = []
    for f, t in zip(flat.feature[split], flat.threshold[split], strict=True):
        for v in (t, np.nextafter(t, -np.inf), np.nextafter(t, np.inf)):
            row = base.copy()
            row[f] = v
            rows.append(row)
    return np.asarray(rows)


def test_the_served_model_matches_every_row_of_its_data(served) -> None:
    pipe, x = served
    flat = _flat(pipe, x)
    assert flat.n_trees == 200
    _same(pipe, flat, x[:MAX_ROWS])
    for i in range(0, 40):
        _same(pipe, flat, x[i : i + 1])


def test_rows_at_and_one_ulp_beside_every_threshold(served) -> None:
    pipe, x = served
    flat = _flat(pipe, x)
    rows = _threshold_rows(flat, x[0])
    assert len(rows) > 3_000  # every split of 200 trees, three rows each
    for start in range(0, len(rows), MAX_ROWS):
        _same(pipe, flat, rows[start : start + MAX_ROWS])


def test_missing_and_infinite_values(served, trained_with_gaps) -> None:
    for pipe, x in (served, trained_with_gaps):
        flat = _flat(pipe, x)
        assert flat.missing_right.any() or pipe is served[0]
        rng = np.random.default_rng(7)
        rows = x[:300].copy()
        rows[rng.random(rows.shape) < 0.3] = np.nan
        rows[rng.random(rows.shape) < 0.05] = np.inf
        rows[rng.random(rows.shape) < 0.05] = -np.inf
        _same(pipe, flat, rows)
        _same(pipe, flat, np.full((3, x.shape[1]), np.nan))


def test_nan_goes_both_ways_in_a_model_trained_with_gaps(trained_with_gaps) -> None:
    pipe, x = trained_with_gaps
    flat = _flat(pipe, x)
    split = np.isfinite(flat.threshold)
    assert flat.missing_right[split].any() and not flat.missing_right[split].all()
    _same(pipe, flat, _threshold_rows(flat, np.full(x.shape[1], np.nan))[:MAX_ROWS])


def test_multiclass_and_a_pipeline_with_a_scaling_step() -> None:
    x, y = load_iris(return_X_y=True)
    for est in (
        HistGradientBoostingClassifier(max_iter=30, random_state=0),
        Pipeline([("scale", StandardScaler()), ("hgb", HistGradientBoostingClassifier())]),
    ):
        est.fit(x, y)
        flat = _flat(est, x)
        assert flat.baseline.shape == (3,)
        _same(est, flat, x)


def test_large_batches_and_wrong_widths_go_to_scikit_learn(served, monkeypatch) -> None:
    pipe, x = served
    flat = _flat(pipe, x)
    walked: list[int] = []
    real_walk = FlatTrees.walk
    monkeypatch.setattr(
        FlatTrees, "walk", lambda self, f: walked.append(len(f)) or real_walk(self, f)
    )
    big = np.concatenate([x, x])[: MAX_ROWS + 1]
    assert np.array_equal(flat.predict_proba(big), pipe.predict_proba(big))
    assert np.array_equal(flat.predict_proba(x[:MAX_ROWS]), pipe.predict_proba(x[:MAX_ROWS]))
    assert walked == [MAX_ROWS]
    with pytest.raises(ValueError, match="features"):  # scikit-learn's own message
        flat.predict_proba(x[:2, :-1])


def test_a_model_with_many_trees_walks_fewer_rows_at_once() -> None:
    x, y = load_iris(return_X_y=True)
    est = HistGradientBoostingClassifier(max_iter=400, min_samples_leaf=1, random_state=0)
    flat = _flat(est.fit(x, y), x)
    assert flat.n_trees == 1_200 and flat.max_rows == flat_trees.MAX_CELLS // 1_200 < MAX_ROWS
    rows = np.concatenate([x] * 2)[: flat.max_rows + 1]
    _same(est, flat, rows[:-1])
    assert np.array_equal(flat.predict_proba(rows), est.predict_proba(rows))


def test_declines_what_it_does_not_cover() -> None:
    x, y = load_iris(return_X_y=True)
    categorical = np.column_stack([x, np.arange(len(x)) % 3])
    cat = HistGradientBoostingClassifier(categorical_features=[4], max_iter=10).fit(categorical, y)
    assert flatten(cat, categorical[:2]) is None

    class Tweaked(HistGradientBoostingClassifier):
        pass

    assert flatten(Tweaked(max_iter=5).fit(x, y), x[:2]) is None
    from sklearn.linear_model import LogisticRegression

    assert flatten(LogisticRegression(max_iter=500).fit(x, y), x[:2]) is None


def test_a_walk_that_is_off_by_one_ulp_is_refused_at_load(served, monkeypatch, caplog) -> None:
    pipe, x = served
    real = FlatTrees.raw_predict
    monkeypatch.setattr(FlatTrees, "raw_predict", lambda self, r: np.nextafter(real(self, r), 1.0))
    with caplog.at_level(logging.WARNING, logger=flat_trees.__name__):
        assert flatten(pipe, x[:4]) is None
    assert "differs from scikit-learn" in caplog.text


def test_a_scikit_learn_without_the_private_attributes_is_declined(served) -> None:
    pipe, x = served
    clf = pipe[-1]
    saved = clf.__dict__.pop("_predictors")
    try:
        assert flatten(pipe, x[:4]) is None
    finally:
        clf._predictors = saved


def test_the_load_time_smoke_test_switches_the_served_model_to_the_walk(
    served, monkeypatch
) -> None:
    from ml_service.serving.model import LoadedModel, smoke_test

    pipe, x = served
    model = LoadedModel(
        name="m",
        version="1",
        alias=None,
        run_id="r",
        source="s",
        estimator=pipe,
        feature_names=tuple(map(str, pipe.feature_names_in_)),
        classes=tuple(map(str, pipe.classes_)),
        signature={},
        trained_with={},
        reference=None,
        input_example=x[:2],
        mismatches=[],
    )
    smoke_test(model)
    assert model.flat is not None
    assert model.nan_columns == frozenset(model.feature_names)  # found through the walk
    walked: list[int] = []
    real_walk = FlatTrees.walk
    monkeypatch.setattr(
        FlatTrees, "walk", lambda self, f: walked.append(len(f)) or real_walk(self, f)
    )
    assert np.array_equal(model.predict_proba(x[5:8]), pipe.predict_proba(x[5:8]))
    assert walked == [3]
