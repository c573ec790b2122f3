"""HistGradientBoosting probabilities without scikit-learn's per-tree Python loop, bit for bit.

scikit-learn predicts a HistGradientBoostingClassifier tree by tree: a Python loop over its
predictors, one compiled call each. For the few rows a request carries that loop is the cost
(200 trees: about 2 ms for one row, ~10 µs a tree). Here every tree's nodes sit in one set of
flat arrays and all trees descend together, one level per numpy step, so one row costs about
0.1 ms. What it computes is scikit-learn's own arithmetic, in its order: the same comparisons
(`x <= threshold` goes left, a missing value goes where training sent it), the leaf values added
to the baseline tree after tree (a sequential `add.accumulate`, not a pairwise sum), then the
estimator's own link function. `flatten` proves it on probe rows at load time and declines any
model where it is not exact, or that it does not cover (categorical splits, unknown estimators):
those keep scikit-learn's path, as do batches larger than `max_rows`, where scikit-learn's
per-tree loop is cheap next to its compiled per-row descent.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

# Above this, scikit-learn is faster: it stops at each row's leaf, while a level-by-level walk
# pays the deepest tree's depth for every tree, and its (rows x trees) arrays outgrow the cache
# (this model, 200 trees: 1.5x faster at 250 varied rows, 0.8x at 400; the bench floor, repeated
# rows: 1.0x at 256, 0.5x at 512).
MAX_ROWS = 256
# Each level holds a few (rows x trees) arrays: capping their cells keeps a model with thousands of
# trees from costing hundreds of MB per batch (it walks fewer rows at once; this model: 256).
MAX_CELLS = MAX_ROWS * 200
# Load-time proof: this many example rows, each also with every column missing in turn.
PROBE_EXAMPLE_ROWS = 4


@dataclass(frozen=True)
class FlatTrees:
    estimator: Any  # the whole fitted estimator: what predicts what the walk does not take
    width: int  # columns the estimator takes
    before: Any  # a Pipeline's steps before the trees, or None
    roots: np.ndarray  # (trees,) first node of each tree, in scikit-learn's tree order
    children: np.ndarray  # (2 * nodes,) [2i] left, [2i+1] right; a leaf is its own child
    feature: np.ndarray  # (nodes,)
    threshold: np.ndarray  # (nodes,) float64, as trained; +inf on leaves
    missing_right: np.ndarray  # (nodes,) bool: where a NaN goes (False on leaves)
    value: np.ndarray  # (nodes,) leaf values
    depth: int  # the deepest leaf: levels every walk takes
    baseline: np.ndarray  # (classes_or_1,)
    link: Any  # the estimator's loss object: its predict_proba turns raw sums into probabilities

    @property
    def n_trees(self) -> int:
        return len(self.roots)

    @property
    def max_rows(self) -> int:
        return max(1, min(MAX_ROWS, MAX_CELLS // self.n_trees))

    def raw_predict(self, x: np.ndarray) -> np.ndarray:
        n, n_features = x.shape
        k = self.baseline.shape[0]
        flat_x = x.ravel()
        row_start = (np.arange(n, dtype=np.intp) * n_features)[:, None]
        node = np.broadcast_to(self.roots, (n, self.n_trees))
        has_nan = bool(np.isnan(flat_x).any())
        for _ in range(self.depth):
            x_at_node = flat_x.take(row_start + self.feature.take(node))
            # NaN > t is False: with no missing values present this alone is scikit-learn's rule
            go_right = x_at_node > self.threshold.take(node)
            if has_nan:
                go_right |= np.isnan(x_at_node) & self.missing_right.take(node)
            node = self.children.take(2 * node + go_right)
        leaves = self.value.take(node).reshape(n, self.n_trees // k, k)
        # scikit-learn: zeros + baseline, then `raw[:, k] += tree(X)` one tree after another
        start = np.zeros((n, 1, k)) + self.baseline
        return np.add.accumulate(np.concatenate([start, leaves], axis=1), axis=1)[:, -1, :]

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        # Large batches, and anything scikit-learn should reject with its own message, go to it.
        if (
            features.ndim != 2
            or features.shape[0] > self.max_rows
            or features.shape[1] != self.width
        ):
            return self.estimator.predict_proba(features)
        return self.walk(features)

    def walk(self, features: np.ndarray) -> np.ndarray:
        x = features if self.before is None else self.before.transform(features)
        x = np.ascontiguousarray(x, dtype=np.float64)
        return self.link.predict_proba(self.raw_predict(x))


def _final_step(estimator: Any) -> Any:
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.pipeline import Pipeline

    last = estimator[-1] if isinstance(estimator, Pipeline) else estimator
    if type(last) is not HistGradientBoostingClassifier or last._preprocessor is not None:
        return None  # a subclass may predict differently; a preprocessor means categorical splits
    return last


def _build(estimator: Any, clf: Any) -> FlatTrees | None:
    trees = [p.nodes for per_iteration in clf._predictors for p in per_iteration]
    nodes = np.concatenate(trees)
    if nodes["is_categorical"].any():
        return None
    sizes = np.array([len(t) for t in trees])
    roots = np.concatenate([[0], np.cumsum(sizes)[:-1]]).astype(np.intp)
    offset = np.repeat(roots, sizes)
    leaf = nodes["is_leaf"].astype(bool)
    me = np.arange(len(nodes), dtype=np.intp)
    children = np.empty(2 * len(nodes), dtype=np.intp)
    children[0::2] = np.where(leaf, me, nodes["left"].astype(np.intp) + offset)
    children[1::2] = np.where(leaf, me, nodes["right"].astype(np.intp) + offset)
    baseline = np.asarray(clf._baseline_prediction, dtype=np.float64).reshape(-1)
    if len(trees) % len(baseline) or len(baseline) != clf.n_trees_per_iteration_:
        return None
    return FlatTrees(
        estimator=estimator,
        width=int(estimator.n_features_in_),
        before=estimator[:-1] if estimator is not clf and len(estimator) > 1 else None,
        roots=roots,
        children=children,
        feature=np.where(leaf, 0, nodes["feature_idx"]).astype(np.intp),
        threshold=np.where(leaf, np.inf, nodes["num_threshold"]).astype(np.float64),
        missing_right=~nodes["missing_go_to_left"].astype(bool) & ~leaf,
        value=nodes["value"].astype(np.float64),
        depth=int(nodes["depth"].max()),
        baseline=baseline,
        link=clf._loss,
    )


def each_column_missing(row: np.ndarray) -> np.ndarray:
    """One copy of `row` per column, with that column NaN."""
    holed = np.repeat(row[None, :], len(row), axis=0)
    np.fill_diagonal(holed, np.nan)
    return holed


def probe_rows(example: np.ndarray) -> np.ndarray:
    """The example rows, each of them with one column missing in turn, and an all-missing row."""
    rows = [example, *map(each_column_missing, example)]
    rows.append(np.full((1, example.shape[1]), np.nan))
    return np.concatenate(rows)


def flatten(estimator: Any, example: np.ndarray) -> FlatTrees | None:
    """The flat form of `estimator` if it covers it and matches scikit-learn exactly on the
    probe rows built from `example`; else None (scikit-learn's own path)."""
    clf = _final_step(estimator)
    if clf is None:
        return None
    try:
        flat = _build(estimator, clf)
        if flat is None:
            return None
        probe = probe_rows(np.asarray(example, dtype=np.float64)[:PROBE_EXAMPLE_ROWS])
        expected = estimator.predict_proba(probe)
        got = flat.walk(probe)
    except Exception as exc:  # private attributes of another scikit-learn release
        log.warning("flat tree walk unavailable (%s): scikit-learn predicts", type(exc).__name__)
        return None
    if expected.dtype != got.dtype or not np.array_equal(expected, got):
        log.warning("flat tree walk differs from scikit-learn on probe rows: scikit-learn predicts")
        return None
    return flat
