"""Paired bootstrap intervals: how much of the difference between two models scored on the same
rows is noise.

- **Paired**: every resample draws rows once and scores both models on those rows, so what the
  models share (the easy rows, the hard rows) cancels out of their difference.
- **Stratified by the true class**: the held-out split is stratified, so each resample keeps the
  number of rows of each class, and every metric is defined in every resample.
- **Seeded**: the caller passes the generator; one draw serves every metric of a group of rows.
- **Percentile interval** of the resampled values at the given confidence.

The metrics are scikit-learn's, called as `mlflow.models.evaluate` calls them for a binary
classifier (precision of a model that predicts no positive is 0; the gate checks that both agree
on every row). The resamples are the columns of a (rows x resamples) matrix, which
scikit-learn's multilabel scoring (`average=None`) scores column by column in one call; ROC AUC
comes from scipy's Mann-Whitney U, which ranks every column in one call; accuracy and log loss
have no such form and are scored resample by resample.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np

Interval = tuple[float, float]


@dataclass(frozen=True)
class Scores:
    """One model's output on the evaluation rows, seen from the positive class."""

    predicted: np.ndarray  # bool per row: the model predicted the positive class
    probability: np.ndarray  # float per row: its probability of the positive class

    @classmethod
    def of(cls, model, features, positive_class: str) -> Scores:
        """Scores of a fitted scikit-learn classifier (predict, predict_proba, classes_)."""
        classes = [str(c) for c in model.classes_]
        if positive_class not in classes:
            raise ValueError(f"the model's classes {classes} lack {positive_class!r}")
        predicted = np.asarray(model.predict(features)).astype(str) == positive_class
        probability = np.asarray(model.predict_proba(features), dtype="float64")
        return cls(predicted, probability[:, classes.index(positive_class)])


def _each_column(fn: Callable, truth: np.ndarray, other: np.ndarray) -> np.ndarray:
    return np.array([fn(truth[:, j], other[:, j]) for j in range(truth.shape[1])])


def _roc_auc(truth: np.ndarray, probability: np.ndarray) -> np.ndarray:
    """ROC AUC of each column: the Mann-Whitney U of the positives' scores against the
    negatives', over n1 * n0 (the same number as roc_auc_score, ties counted half; a unit test
    holds them within 1e-12). scipy ranks every column in one call, where roc_auc_score would
    be called once per resample (about 40 times slower)."""
    from scipy.stats import mannwhitneyu

    positives = truth.sum(axis=0)
    if (positives != positives[0]).any():
        raise ValueError("every column needs the same number of positive rows")
    n1 = int(positives[0])
    order = np.argsort(~truth, axis=0, kind="stable")  # positives first in every column
    ranked = np.take_along_axis(probability, order, axis=0)
    u = mannwhitneyu(ranked[:n1], ranked[n1:], axis=0, method="asymptotic").statistic
    return u / (n1 * (truth.shape[0] - n1))


def _scorers() -> dict[str, Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]]:
    """metric -> f(truth, predicted, probability), each (rows x columns) -> a value per column."""
    from sklearn import metrics as m

    def f1(t, p):
        return m.f1_score(t, p, average=None, zero_division=0.0)

    return {
        "recall_score": lambda t, p, s: m.recall_score(t, p, average=None, zero_division=0.0),
        "precision_score": lambda t, p, s: m.precision_score(t, p, average=None, zero_division=0.0),
        "f1_score": lambda t, p, s: f1(t, p),
        # macro F1 of a binary task: the mean of both classes' F1
        "f1_score_macro": lambda t, p, s: (f1(t, p) + f1(~t, ~p)) / 2,
        "roc_auc": lambda t, p, s: _roc_auc(t, s),
        "precision_recall_auc": lambda t, p, s: m.average_precision_score(t, s, average=None),
        "accuracy_score": lambda t, p, s: _each_column(m.accuracy_score, t, p),
        "log_loss": lambda t, p, s: _each_column(
            lambda y, q: m.log_loss(y, q, labels=[False, True]), t, s
        ),
    }


SCORERS = _scorers()


def score(metric: str, truth: np.ndarray, scores: Scores, rows: np.ndarray) -> np.ndarray:
    """`metric` of `scores` on each column of `rows` (row indices, rows x columns, ≥ 2 columns:
    scikit-learn reads a single column as a binary task)."""
    values = SCORERS[metric](truth[rows], scores.predicted[rows], scores.probability[rows])
    return np.asarray(values, dtype="float64")


def resample(truth: np.ndarray, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """(rows x resamples) row indices; each column draws, with replacement, as many rows of each
    class as `truth` has. Both classes must be present."""
    parts = []
    for cls in (False, True):
        members = np.flatnonzero(truth == cls)
        if members.size == 0:
            raise ValueError("a stratified resample needs rows of both classes")
        parts.append(rng.choice(members, size=(members.size, resamples)))
    return np.concatenate(parts)


def percentile_interval(values: np.ndarray, confidence: float) -> Interval:
    """The central `confidence` share of `values`."""
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Estimate:
    """A metric of the arriving model (and of the serving one) on one group of rows."""

    metric: str
    candidate: float
    candidate_interval: Interval
    baseline: float | None = None
    difference_interval: Interval | None = None  # of arriving - serving

    @property
    def difference(self) -> float | None:
        return None if self.baseline is None else self.candidate - self.baseline


def paired_bootstrap(
    metrics: Iterable[str],
    truth: np.ndarray,
    candidate: Scores,
    baseline: Scores | None,
    *,
    resamples: int,
    confidence: float,
    rng: np.random.Generator,
) -> dict[str, Estimate]:
    """Each metric of the candidate, its interval, and the interval of candidate - baseline,
    over the same stratified resamples of the rows of `truth` (bool: the positive class)."""
    every_row = np.repeat(np.arange(truth.size)[:, None], 2, axis=1)
    draws = resample(truth, resamples, rng)
    out = {}
    for metric in metrics:
        cand = score(metric, truth, candidate, draws)
        point = float(score(metric, truth, candidate, every_row)[0])
        if baseline is None:
            out[metric] = Estimate(metric, point, percentile_interval(cand, confidence))
            continue
        base = score(metric, truth, baseline, draws)
        out[metric] = Estimate(
            metric,
            point,
            percentile_interval(cand, confidence),
            float(score(metric, truth, baseline, every_row)[0]),
            percentile_interval(cand - base, confidence),
        )
    return out
