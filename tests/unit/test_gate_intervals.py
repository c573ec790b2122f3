"""The quality gate's paired bootstrap (ml_service.release.intervals) and its decisions, on
synthetic predictions: no server, no training."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from ml_service.release import intervals, quality_gate
from sklearn import metrics as skm

POSITIVE = "malignant"


def synthetic(seed: int = 0, n_pos: int = 40, n_neg: int = 60):
    """Labels, and the scores of a decent model with tied probabilities (rounded)."""
    rng = np.random.default_rng(seed)
    truth = np.r_[np.ones(n_pos, bool), np.zeros(n_neg, bool)]
    probability = np.clip(np.where(truth, 0.7, 0.3) + rng.normal(0, 0.25, truth.size), 0, 1)
    probability = np.round(probability, 2)
    return truth, intervals.Scores(probability >= 0.5, probability)


def test_every_metric_is_scikit_learns_as_mlflow_calls_it() -> None:
    """On all rows, each scorer gives the number scikit-learn gives for string labels with the
    positive class named, which is how mlflow.models.evaluate's classifier evaluator calls it."""
    truth, scores = synthetic()
    y = np.where(truth, POSITIVE, "benign")
    pred = np.where(scores.predicted, POSITIVE, "benign")
    proba = np.c_[1 - scores.probability, scores.probability]
    expected = {
        "accuracy_score": skm.accuracy_score(y, pred),
        "recall_score": skm.recall_score(y, pred, pos_label=POSITIVE),
        "precision_score": skm.precision_score(y, pred, pos_label=POSITIVE),
        "f1_score": skm.f1_score(y, pred, pos_label=POSITIVE),
        "f1_score_macro": skm.f1_score(y, pred, average="macro"),
        "roc_auc": skm.roc_auc_score(y == POSITIVE, scores.probability),
        "precision_recall_auc": skm.average_precision_score(
            y, scores.probability, pos_label=POSITIVE
        ),
        "log_loss": skm.log_loss(y, proba, labels=["benign", POSITIVE]),
    }
    assert set(expected) == set(intervals.SCORERS) == set(quality_gate.METRICS)
    every_row = np.repeat(np.arange(truth.size)[:, None], 2, axis=1)
    for metric, value in expected.items():
        got = intervals.score(metric, truth, scores, every_row)
        assert got == pytest.approx([value, value], abs=1e-12), metric


def test_a_model_that_predicts_no_positive_has_precision_zero_as_in_mlflow() -> None:
    truth, scores = synthetic()
    silent = intervals.Scores(np.zeros_like(scores.predicted), scores.probability)
    rows = intervals.resample(truth, 50, np.random.default_rng(1))
    for metric in ("precision_score", "recall_score", "f1_score"):
        assert (intervals.score(metric, truth, silent, rows) == 0).all(), metric


def test_roc_auc_of_every_resample_is_roc_auc_score() -> None:
    truth, scores = synthetic(seed=3)
    rows = intervals.resample(truth, 200, np.random.default_rng(7))
    fast = intervals.score("roc_auc", truth, scores, rows)
    slow = [
        skm.roc_auc_score(truth[rows[:, j]], scores.probability[rows[:, j]]) for j in range(200)
    ]
    assert fast == pytest.approx(slow, abs=1e-12)


def test_resamples_keep_each_class_count_and_follow_the_seed() -> None:
    truth, _ = synthetic()
    rows = intervals.resample(truth, 300, np.random.default_rng(5))
    assert rows.shape == (truth.size, 300)
    assert (truth[rows].sum(axis=0) == truth.sum()).all()
    again = intervals.resample(truth, 300, np.random.default_rng(5))
    other = intervals.resample(truth, 300, np.random.default_rng(6))
    assert (rows == again).all() and not (rows == other).all()
    with pytest.raises(ValueError, match="both classes"):
        intervals.resample(np.ones(10, bool), 10, np.random.default_rng(0))


def test_a_model_against_itself_differs_by_exactly_nothing() -> None:
    truth, scores = synthetic()
    out = intervals.paired_bootstrap(
        ["f1_score_macro", "roc_auc", "recall_score"], truth, scores, scores,
        resamples=500, confidence=0.95, rng=np.random.default_rng(0),
    )  # fmt: skip
    for e in out.values():
        assert e.difference == 0 and e.difference_interval == (0.0, 0.0)
        low, high = e.candidate_interval
        assert low < e.candidate <= high or low <= e.candidate < high


def test_pairing_sees_a_difference_the_unpaired_noise_would_hide() -> None:
    """The candidate misses 3 of the 40 positives the baseline finds, and nothing else. Each
    model's own recall interval holds the other's recall; the paired difference is never
    positive in any resample."""
    truth, base = synthetic()
    missed = np.flatnonzero(truth & base.predicted)[:3]
    predicted = base.predicted.copy()
    predicted[missed] = False
    cand = intervals.Scores(predicted, base.probability)
    e = intervals.paired_bootstrap(
        ["recall_score"], truth, cand, base,
        resamples=1000, confidence=0.95, rng=np.random.default_rng(0),
    )["recall_score"]  # fmt: skip
    assert e.difference == pytest.approx(-3 / truth.sum())
    low, high = e.difference_interval
    assert low < e.difference < high == 0
    cand_low, cand_high = e.candidate_interval
    assert cand_low < e.candidate < e.baseline < cand_high


def test_higher_confidence_widens_the_interval() -> None:
    truth, base = synthetic()
    cand = synthetic(seed=9)[1]
    widths = []
    for confidence in (0.8, 0.95, 0.99):
        e = intervals.paired_bootstrap(
            ["f1_score_macro"], truth, cand, base,
            resamples=1000, confidence=confidence, rng=np.random.default_rng(0),
        )["f1_score_macro"]  # fmt: skip
        widths.append(e.difference_interval[1] - e.difference_interval[0])
    assert widths[0] < widths[1] < widths[2]


# --------------------------------------------------------------------------- decisions


def config(rule: dict, slices: list | None = None) -> quality_gate.GateConfig:
    return quality_gate.GateConfig.model_validate(
        {
            "evaluation": {"seed": 42, "test_size": 0.25, "positive_class": POSITIVE},
            "bootstrap": {"resamples": 1000, "confidence": 0.95, "seed": 0},
            "thresholds": {"recall_score": rule},
            "slices": slices or [],
        }
    )


def one_comparison(e: intervals.Estimate | None, note: str = "") -> quality_gate.Comparison:
    return quality_gate.Comparison("recall_score", None, "", None, 143, e, note)


# recall 0.90 -> 0.88: a drop of 0.02 whose interval reaches a drop of 0.07
WORSE = intervals.Estimate("recall_score", 0.88, (0.80, 0.95), 0.90, (-0.07, 0.0))


@pytest.mark.parametrize(
    ("rule", "passed", "value", "limit"),
    [
        ({"max_drop": 0.05, "decision": "point"}, True, 0.88, 0.85),
        ({"max_drop": 0.05, "decision": "interval"}, False, -0.07, -0.05),
        ({"max_drop": 0.08, "decision": "interval"}, True, -0.07, -0.08),
        ({"min": 0.85, "decision": "point"}, True, 0.88, 0.85),
        ({"min": 0.85, "decision": "interval"}, False, 0.80, 0.85),
    ],
)
def test_point_rules_decide_on_the_estimate_interval_rules_on_the_worst_bound(
    rule, passed, value, limit
) -> None:
    (check,) = quality_gate.decide(config(rule), [one_comparison(WORSE)])
    assert (check.passed, check.value, check.limit) == (passed, pytest.approx(value), limit)
    assert check.decision == rule["decision"]
    assert (check.message == "") == passed, "MLflow's validation message on a failure"


def test_an_override_decides_every_rule_one_way() -> None:
    c = config({"max_drop": 0.05, "decision": "point"})
    assert [x.passed for x in quality_gate.decide(c, [one_comparison(WORSE)], "interval")] == [
        False
    ]


def test_a_rule_that_cannot_apply_passes_and_says_why() -> None:
    c = config({"max_drop": 0.01, "min": 0.99, "decision": "interval"})
    (floor, drop) = quality_gate.decide(c, [one_comparison(None, "no malignant rows among 48")])
    for check in (floor, drop):
        assert check.passed and not check.applied and check.message == "no malignant rows among 48"
    first = intervals.Estimate("recall_score", 0.995, (0.991, 1.0))
    (floor, drop) = quality_gate.decide(c, [one_comparison(first)])
    assert drop.passed and not drop.applied and drop.message == "no baseline"
    assert floor.passed and floor.applied and floor.value == 0.991


def test_slices_cut_a_numeric_column_into_quantile_bins_and_a_text_column_by_value() -> None:
    frame = pd.DataFrame(
        {
            "size": np.arange(12, dtype=float),
            "site": ["a", "b", "c"] * 4,
            "label": [POSITIVE, "benign"] * 6,
        }
    )
    data = quality_gate.EvaluationSet("rows", frame, ("size",))
    c = config(
        {"min": 0.5},
        [
            {"column": "size", "bins": 3, "thresholds": {"recall_score": {"min": 0.5}}},
            {"column": "site", "thresholds": {"recall_score": {"min": 0.5}}},
        ],
    )
    groups = quality_gate.row_groups(c, data)
    assert [g.name for g in groups] == [
        None,
        "size 1/3 [0, 3.667]",
        "size 2/3 (3.667, 7.333]",
        "size 3/3 (7.333, 11]",
        "site=a",
        "site=b",
        "site=c",
    ]
    assert [g.key for g in groups][1:3] == ["slice_size_1of3", "slice_size_2of3"]
    assert [g.rows.tolist() for g in groups[1:4]] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11]]
    assert groups[4].rows.tolist() == [0, 3, 6, 9] and groups[4].spec == 1


@pytest.mark.parametrize(
    ("slice_", "frame_extra", "message"),
    [
        ({"column": "sise", "bins": 3}, {}, "slices[0].column: no column 'sise' in the rows"),
        ({"column": "site", "bins": 3}, {}, "slices[0].column: site is not numeric"),
        ({"column": "id"}, {"id": [str(i) for i in range(30)]}, "30 distinct values (at most 20"),
    ],
)
def test_a_slice_the_data_cannot_give_fails_naming_the_key(slice_, frame_extra, message) -> None:
    frame = pd.DataFrame(
        {"size": np.arange(30.0), "site": ["a", "b"] * 15, "label": ["benign"] * 30, **frame_extra}
    )
    spec = {**slice_, "thresholds": {"recall_score": {"min": 0.5}}}
    with pytest.raises(
        quality_gate.GateError, match=message.replace("[", r"\[").replace("(", r"\(")
    ):
        quality_gate.row_groups(
            config({"min": 0.5}, [spec]), quality_gate.EvaluationSet("rows", frame, ("size",))
        )


def sized_rows(n: int = 90):
    """An evaluation set whose smallest third by `size` holds no positive row."""
    rng = np.random.default_rng(0)
    size = np.arange(n, dtype=float)
    positive = (size >= n / 3) & (rng.random(n) < 0.6)
    frame = pd.DataFrame({"size": size, "label": np.where(positive, POSITIVE, "benign")})
    probability = np.clip(np.where(positive, 0.7, 0.3) + rng.normal(0, 0.2, n), 0, 1)
    return quality_gate.EvaluationSet("rows", frame, ("size",)), probability


def test_compare_bootstraps_every_group_and_marks_a_slice_without_positives() -> None:
    data, probability = sized_rows()
    base = intervals.Scores(probability >= 0.5, probability)
    cand = intervals.Scores(probability >= 0.6, probability)
    c = config(
        {"max_drop": 0.1},
        [{"column": "size", "bins": 3, "thresholds": {"roc_auc": {"max_drop": 0.05}}}],
    )
    comparisons = quality_gate.compare(c, data, cand, base)
    assert [(x.metric, x.slice) for x in comparisons] == [
        ("recall_score", None),
        ("roc_auc", "size 1/3 [0, 29.67]"),
        ("roc_auc", "size 2/3 (29.67, 59.33]"),
        ("roc_auc", "size 3/3 (59.33, 89]"),
    ]
    assert comparisons[1].estimate is None
    assert comparisons[1].note == f"no {POSITIVE} rows among its 30"
    assert comparisons[0].estimate.difference < 0, "a higher cut finds fewer positives"
    again = quality_gate.compare(c, data, cand, base)
    assert [x.estimate for x in again] == [x.estimate for x in comparisons], "seeded"
    reseeded = c.model_copy(update={"bootstrap": c.bootstrap.model_copy(update={"seed": 1})})
    other = quality_gate.compare(reseeded, data, cand, base)
    assert other[3].estimate.difference == comparisons[3].estimate.difference
    assert other[3].estimate.candidate_interval != comparisons[3].estimate.candidate_interval


def test_evaluation_rows_of_one_class_cannot_gate_anything() -> None:
    data, probability = sized_rows()
    data.frame["label"] = "benign"
    scores = intervals.Scores(probability >= 0.5, probability)
    with pytest.raises(quality_gate.GateError, match=f"the rows has no {POSITIVE} rows"):
        quality_gate.compare(config({"min": 0.5}), data, scores, scores)
