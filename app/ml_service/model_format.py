"""What a trained ml-service model carries, shared by training (writes it), serving and the
release gate (read it): the metadata keys, the reference statistics drift monitoring compares
live traffic with, and the rule for which types a skops file may instantiate.

numpy-only on purpose: the serving image imports this module without the training extras.

Binning rule (the same at training and serving time): with inner edges e_0 < ... < e_{k-1},
bin 0 holds x <= e_0, bin i holds e_{i-1} < x <= e_i, and bin k holds x > e_{k-1}
(i.e. ``np.searchsorted(edges, x, side="left")``). Edges are training-set quantiles with
duplicates removed, so a feature with many equal values (zeros) gets fewer bins, and the
expected per-bin fractions are stored rather than assumed to be 1/n_bins.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

REFERENCE_KEY = "ml_service_reference"
TRAINING_KEY = "ml_service_training"
SCHEMA_VERSION = 1

# The only non-default type skops must allow for the HistGradientBoosting pipeline: what training
# declares when it saves the model.
SKOPS_TRUSTED_TYPES = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]
# What a loader trusts: types of these libraries, never the list a model file carries about itself.
TRUSTED_TYPE_PREFIXES = ("sklearn.",)


class ForeignTypesError(ValueError):
    """A skops file needs types from no trusted library (the message lists them)."""


def trusted_types(skops_file: str | os.PathLike) -> list[str]:
    """The types beyond skops' defaults that loading `skops_file` needs (skops.io.load's
    `trusted`), once each is checked against TRUSTED_TYPE_PREFIXES: serving at load time and
    the release gate before scoring refuse a file holding any other."""
    import skops.io

    needed = skops.io.get_untrusted_types(file=str(skops_file))
    foreign = [t for t in needed if not t.startswith(TRUSTED_TYPE_PREFIXES)]
    if foreign:
        raise ForeignTypesError(f"model contains types outside the trusted libraries: {foreign}")
    return needed


def snake_case(name: str) -> str:
    """'mean concave points' -> 'mean_concave_points'."""
    return re.sub(r"[^0-9a-zA-Z]+", "_", name).strip("_").lower()


def bin_indices(edges: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Bin index of each value for one feature (see the module docstring for the rule)."""
    return np.searchsorted(np.asarray(edges, dtype=float), values, side="left")


def quantile_edges(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Unique inner quantile edges splitting `values` into (at most) `n_bins` bins."""
    qs = np.linspace(0.0, 1.0, n_bins + 1)[1:-1]
    # "lower" keeps edges on observed values, so the right-closed bins split ties predictably
    return np.unique(np.quantile(values, qs, method="lower"))


def compute_reference(
    features: np.ndarray,
    feature_names: Sequence[str],
    labels: np.ndarray,
    class_labels: Sequence[str],
    n_bins: int = 10,
) -> dict[str, Any]:
    """Reference statistics of a training set, as plain YAML/JSON-serialisable values."""
    x = np.asarray(features, dtype=float)
    per_feature = {}
    for j, name in enumerate(feature_names):
        col = x[:, j]
        edges = quantile_edges(col, n_bins)
        counts = np.bincount(bin_indices(edges, col), minlength=len(edges) + 1)
        per_feature[name] = {
            "edges": [float(e) for e in edges],
            "fractions": [float(c) for c in counts / counts.sum()],
            "min": float(col.min()),
            "max": float(col.max()),
        }
    labels = np.asarray(labels)
    priors = {str(c): float(np.mean(labels == c)) for c in class_labels}
    return {
        "schema_version": SCHEMA_VERSION,
        "n_rows": int(x.shape[0]),
        "n_bins": int(n_bins),
        "binning": "quantile; right-closed bins, np.searchsorted(edges, x, side='left')",
        "features": list(feature_names),
        "feature_stats": per_feature,
        "class_labels": [str(c) for c in class_labels],
        "class_priors": priors,
    }


def reference_from_metadata(metadata: Mapping[str, Any] | None) -> dict[str, Any]:
    """The reference block of an MLmodel `metadata` mapping; ValueError when absent/unknown."""
    ref = (metadata or {}).get(REFERENCE_KEY)
    if not isinstance(ref, Mapping):
        raise ValueError(f"model metadata has no {REFERENCE_KEY!r} block")
    if ref.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"unsupported {REFERENCE_KEY} schema_version {ref.get('schema_version')!r}"
        )
    return dict(ref)
