"""Bounded-memory drift monitoring against the reference statistics logged at training time.

The request path only adds to fixed-size numpy count arrays (`DriftMonitor.observe`, called
once per inference batch); PSI and shares are computed when Prometheus scrapes (`collect`).
Memory is O(slots x features x bins) whatever the traffic: no request data is kept.

Windowing: a ring of `slots` sub-window count arrays, each covering `window_seconds / slots`
seconds. The windowed signals (PSI, class share) sum the sub-windows of the last
`window_seconds`, so a shift shows within one sub-window and is forgotten one window after it
stops. Below `min_window_rows` rows in the window the PSIs are NaN ("not enough data"), so an
alert such as `mlservice_feature_psi > 0.2` cannot fire on a handful of requests.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ml_service.model_format import reference_from_metadata

# Empty bins would make PSI infinite; the usual floor keeps a bin never seen finite but large.
PSI_EPSILON = 1e-4


def psi(actual: np.ndarray, expected: np.ndarray, eps: float = PSI_EPSILON) -> np.ndarray:
    """Population Stability Index along the last axis: sum((a - e) * ln(a / e)).

    `actual` are counts or fractions (normalised here), `expected` fractions; both floored at eps.
    """
    actual = np.asarray(actual, dtype=float)
    total = actual.sum(axis=-1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        a = np.clip(actual / total, eps, None)
    e = np.clip(np.asarray(expected, dtype=float), eps, None)
    return np.sum((a - e) * np.log(a / e), axis=-1)


class DriftMonitor(Collector):
    """Per-feature bin counts, out-of-range counts, windowed feature PSI and class shares."""

    def __init__(
        self,
        reference: Mapping[str, Any],
        *,
        registry: CollectorRegistry | None = REGISTRY,
        window_seconds: float = 900.0,
        slots: int = 15,
        min_window_rows: int = 100,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if window_seconds <= 0 or slots < 1:
            raise ValueError("window_seconds must be > 0 and slots >= 1")
        self.feature_names: list[str] = list(reference["features"])
        self.class_labels: list[str] = [str(c) for c in reference["class_labels"]]
        self._class_array = np.array(self.class_labels, dtype=object)
        stats = reference["feature_stats"]
        n_features = len(self.feature_names)
        edges = [np.asarray(stats[f]["edges"], dtype=float) for f in self.feature_names]
        self._n_bins = np.array([len(e) + 1 for e in edges])
        width = int(self._n_bins.max())
        if width > 255:
            raise ValueError("at most 255 bins per feature")  # bin indices are summed as uint8
        # Padding with +inf: `x > inf` is never true, so padded edges never move a value up.
        self._edges = np.full((n_features, width - 1), np.inf)
        self._expected = np.zeros((n_features, width))
        self._valid = np.zeros((n_features, width), dtype=bool)
        for j, (name, e) in enumerate(zip(self.feature_names, edges, strict=True)):
            fr = np.asarray(stats[name]["fractions"], dtype=float)
            if len(fr) != len(e) + 1:
                raise ValueError(f"reference for {name!r}: {len(e)} edges but {len(fr)} fractions")
            self._edges[j, : len(e)] = e
            self._expected[j, : len(fr)] = fr
            self._valid[j, : len(fr)] = True
        # edge-major copy: comparisons reduce over the leading axis, ~3x faster than the last
        self._edges_t = np.ascontiguousarray(self._edges.T)
        self._min = np.array([stats[f]["min"] for f in self.feature_names], dtype=float)
        self._max = np.array([stats[f]["max"] for f in self.feature_names], dtype=float)
        self._offsets = np.arange(n_features, dtype=np.intp) * width
        priors = reference["class_priors"]
        self._priors = np.array([float(priors[c]) for c in self.class_labels])

        self._slot_seconds = float(window_seconds) / slots
        self._slots = slots
        self.min_window_rows = int(min_window_rows)
        self._clock = clock
        self._lock = threading.Lock()
        self._bin_total = np.zeros((n_features, width), dtype=np.int64)
        self._low_total = np.zeros(n_features, dtype=np.int64)
        self._high_total = np.zeros(n_features, dtype=np.int64)
        self._win_bins = np.zeros((slots, n_features, width), dtype=np.int64)
        self._win_rows = np.zeros(slots, dtype=np.int64)
        self._win_classes = np.zeros((slots, len(self.class_labels)), dtype=np.int64)
        self._slot_ids = np.full(slots, -1, dtype=np.int64)  # absolute slot number held

        self._registry = registry
        if registry is not None:
            registry.register(self)

    @classmethod
    def from_model_metadata(cls, metadata: Mapping[str, Any] | None, **kwargs: Any) -> DriftMonitor:
        """Build from an MLmodel `metadata` mapping (`ml_service_reference` block)."""
        return cls(reference_from_metadata(metadata), **kwargs)

    def unregister(self) -> None:
        """Detach from the registry (e.g. before a monitor for a newly loaded model registers)."""
        if self._registry is not None:
            self._registry.unregister(self)
            self._registry = None

    # ---- request path -------------------------------------------------------------------
    def observe(self, features: np.ndarray, predicted: Sequence[str] | np.ndarray) -> None:
        """Count one inference batch: `features` (rows x features, signature column order)
        and the predicted class label of each row. Vectorised; no per-row Python work."""
        x = np.asarray(features, dtype=float)
        if x.ndim != 2 or x.shape[1] != len(self.feature_names):
            raise ValueError(f"expected a (rows, {len(self.feature_names)}) feature matrix")
        n = x.shape[0]
        if n == 0:
            return
        # bin = number of edges strictly below x, i.e. searchsorted(edges, x, side="left")
        # np.add.reduce, not .sum()/count_nonzero: those are Python wrappers, and this runs on
        # every request of one row as well.
        bins = np.add.reduce(x[None, :, :] > self._edges_t[:, None, :], axis=0, dtype=np.uint8)
        counts = np.bincount(
            (bins + self._offsets).ravel(), minlength=self._bin_total.size
        ).reshape(self._bin_total.shape)
        low = np.add.reduce(x < self._min, axis=0)
        high = np.add.reduce(x > self._max, axis=0)
        pred = np.asarray(predicted)
        classes = np.add.reduce(pred[:, None] == self._class_array[None, :], axis=0)

        with self._lock:
            i = self._current_slot()
            self._bin_total += counts
            self._low_total += low
            self._high_total += high
            self._win_bins[i] += counts
            self._win_rows[i] += n
            self._win_classes[i] += classes

    def _current_slot(self) -> int:
        """Ring index of the current sub-window, cleared if it last held an older one."""
        slot = int(self._clock() // self._slot_seconds)
        i = slot % self._slots
        if self._slot_ids[i] != slot:
            self._win_bins[i] = 0
            self._win_rows[i] = 0
            self._win_classes[i] = 0
            self._slot_ids[i] = slot
        return i

    # ---- scrape path --------------------------------------------------------------------
    def _window(self) -> tuple[int, np.ndarray, np.ndarray]:
        with self._lock:
            now = int(self._clock() // self._slot_seconds)
            live = (self._slot_ids > now - self._slots) & (self._slot_ids <= now)
            return (
                int(self._win_rows[live].sum()),
                self._win_bins[live].sum(axis=0),
                self._win_classes[live].sum(axis=0),
            )

    def snapshot(self) -> dict[str, Any]:
        """The windowed signals as plain values (what `collect` exports)."""
        rows, bins, classes = self._window()
        enough = rows >= self.min_window_rows and rows > 0
        feature_psi = np.full(len(self.feature_names), math.nan)
        class_psi = math.nan
        if enough:
            masked = np.where(self._valid, bins, 0)
            # padded bins have expected 0 and actual 0: floored equally, they add nothing
            feature_psi = psi(masked, np.where(self._valid, self._expected, PSI_EPSILON))
            class_psi = float(psi(classes, self._priors))
        share = classes / rows if rows else np.full(len(self.class_labels), math.nan)
        return {
            "window_rows": rows,
            "feature_psi": dict(zip(self.feature_names, map(float, feature_psi), strict=True)),
            "class_share": dict(zip(self.class_labels, map(float, share), strict=True)),
            "class_distribution_psi": class_psi,
        }

    def _families(self) -> dict[str, Metric]:
        return {
            "prior": GaugeMetricFamily(
                "mlservice_training_class_prior",
                "Share of each class in the training set (reference for predictions).",
                labels=["class"],
            ),
            "psi": GaugeMetricFamily(
                "mlservice_feature_psi",
                "Windowed Population Stability Index of each feature vs its training bins "
                "(NaN below the minimum window rows).",
                labels=["feature"],
            ),
            "bins": CounterMetricFamily(
                "mlservice_feature_bin",
                "Rows per feature and training quantile bin since start.",
                labels=["feature", "bin"],
            ),
            "oor": CounterMetricFamily(
                "mlservice_feature_out_of_range",
                "Feature values below the training minimum (low) or above the maximum (high).",
                labels=["feature", "side"],
            ),
            "share": GaugeMetricFamily(
                "mlservice_prediction_class_share",
                "Windowed share of predictions per class.",
                labels=["class"],
            ),
            "class_psi": GaugeMetricFamily(
                "mlservice_class_distribution_psi",
                "Windowed PSI of predicted classes vs training class priors.",
            ),
        }

    def describe(self) -> Iterable[Metric]:
        return self._families().values()

    def collect(self) -> Iterable[Metric]:
        fam = self._families()
        snap = self.snapshot()
        with self._lock:
            bin_total = self._bin_total.copy()
            low, high = self._low_total.copy(), self._high_total.copy()
        for c, p in zip(self.class_labels, self._priors, strict=True):
            fam["prior"].add_metric([c], float(p))
            fam["share"].add_metric([c], snap["class_share"][c])
        fam["class_psi"].add_metric([], snap["class_distribution_psi"])
        for j, name in enumerate(self.feature_names):
            fam["psi"].add_metric([name], snap["feature_psi"][name])
            fam["oor"].add_metric([name, "low"], float(low[j]))
            fam["oor"].add_metric([name, "high"], float(high[j]))
            for b in range(int(self._n_bins[j])):
                fam["bins"].add_metric([name, str(b)], float(bin_total[j, b]))
        return fam.values()
