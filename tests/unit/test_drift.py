"""DriftMonitor: PSI against reference bins, bounded memory, windowing and the exported series."""

from __future__ import annotations

import math
import threading
import tracemalloc

import numpy as np
import pytest
from ml_service.model_format import REFERENCE_KEY, bin_indices, compute_reference
from ml_service.serving.drift import DriftMonitor, psi
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

FEATURES = ["alpha", "beta", "gamma_zeros"]
CLASSES = ["benign", "malignant"]
PRIORS = np.array([0.6, 0.4])


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sample(rng: np.random.Generator, n: int, shift: float = 0.0) -> np.ndarray:
    """Two normal features and one with 40 % exact zeros (duplicate quantile edges)."""
    zeros = np.where(rng.random(n) < 0.4, 0.0, rng.exponential(1.0, n))
    return np.column_stack([rng.normal(shift, 1, n), rng.normal(5 + shift, 2, n), zeros + shift])


def labels(rng: np.random.Generator, n: int, p=PRIORS) -> np.ndarray:
    return rng.choice(np.array(CLASSES, dtype=object), size=n, p=p)


@pytest.fixture(scope="module")
def reference() -> dict:
    rng = np.random.default_rng(0)
    return compute_reference(sample(rng, 20_000), FEATURES, labels(rng, 20_000), CLASSES)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def monitor(reference: dict, clock: FakeClock) -> DriftMonitor:
    return DriftMonitor(
        reference, registry=None, window_seconds=600, slots=10, min_window_rows=100, clock=clock
    )


def scrape(registry: CollectorRegistry) -> dict[tuple[str, tuple], float]:
    text = generate_latest(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
    }


def test_reference_bins_handle_ties(reference: dict) -> None:
    stats = reference["feature_stats"]
    assert len(stats["alpha"]["edges"]) == 9
    # 40 % zeros collapse the lower quantiles into one edge: fewer bins, honest fractions
    zeros = stats["gamma_zeros"]
    assert len(zeros["edges"]) < 9
    assert zeros["edges"][0] == 0.0 and zeros["fractions"][0] == pytest.approx(0.4, abs=0.02)
    for s in stats.values():
        assert np.all(np.diff(s["edges"]) > 0)
        assert sum(s["fractions"]) == pytest.approx(1.0)
    assert reference["class_priors"]["benign"] == pytest.approx(0.6, abs=0.02)


def test_vectorised_binning_matches_reference_rule(reference: dict, monitor: DriftMonitor) -> None:
    stats = reference["feature_stats"]
    # values exactly on the edges are the corner case of a right-closed rule
    # each feature's own edges (cycled to 9 rows), plus ordinary values
    on_edges = np.column_stack([np.resize(stats[f]["edges"], 9) for f in FEATURES])
    x = np.vstack([on_edges, sample(np.random.default_rng(9), 500, shift=0.5)])
    monitor.observe(x, ["benign"] * len(x))
    got = monitor._bin_total
    for j, name in enumerate(FEATURES):
        expected = np.bincount(bin_indices(stats[name]["edges"], x[:, j]), minlength=got.shape[1])
        np.testing.assert_array_equal(got[j], expected)


def test_psi_near_zero_on_reference_distribution(monitor: DriftMonitor) -> None:
    rng = np.random.default_rng(1)
    for _ in range(50):
        monitor.observe(sample(rng, 100), labels(rng, 100))
    snap = monitor.snapshot()
    assert snap["window_rows"] == 5000
    assert max(snap["feature_psi"].values()) < 0.02, snap
    assert snap["class_distribution_psi"] < 0.01
    assert snap["class_share"]["benign"] == pytest.approx(0.6, abs=0.03)


def test_psi_large_on_shifted_inputs(monitor: DriftMonitor) -> None:
    rng = np.random.default_rng(2)
    monitor.observe(sample(rng, 2000, shift=1.0), labels(rng, 2000, p=[0.1, 0.9]))
    snap = monitor.snapshot()
    assert min(snap["feature_psi"].values()) > 0.25, snap
    assert snap["class_distribution_psi"] > 0.25
    assert snap["class_share"]["malignant"] == pytest.approx(0.9, abs=0.03)


def test_psi_function_basics() -> None:
    assert psi(np.array([50, 50]), np.array([0.5, 0.5])) == pytest.approx(0.0)
    # symmetric formula: swapping actual and expected gives the same value
    a = psi(np.array([80, 20]), np.array([0.5, 0.5]))
    b = psi(np.array([50, 50]), np.array([0.8, 0.2]))
    assert a == pytest.approx(b) and a > 0.3
    assert math.isfinite(psi(np.array([100, 0]), np.array([0.5, 0.5])))


def test_too_few_rows_give_nan_not_a_false_alarm(monitor: DriftMonitor) -> None:
    rng = np.random.default_rng(3)
    monitor.observe(sample(rng, 99, shift=5.0), labels(rng, 99))
    snap = monitor.snapshot()
    assert all(math.isnan(v) for v in snap["feature_psi"].values())
    assert math.isnan(snap["class_distribution_psi"])
    # shares stay meaningful with few rows
    assert sum(snap["class_share"].values()) == pytest.approx(1.0)


def test_window_forgets_old_traffic(monitor: DriftMonitor, clock: FakeClock) -> None:
    rng = np.random.default_rng(4)
    monitor.observe(sample(rng, 1000, shift=2.0), labels(rng, 1000))
    clock.now += 300  # half a window later the shifted rows still count
    monitor.observe(sample(rng, 1000), labels(rng, 1000))
    assert monitor.snapshot()["window_rows"] == 2000
    assert min(monitor.snapshot()["feature_psi"].values()) > 0.1
    clock.now += 301  # the first sub-window has left the window
    snap = monitor.snapshot()
    assert snap["window_rows"] == 1000
    assert max(snap["feature_psi"].values()) < 0.05
    clock.now += 10_000  # idle for a long time: nothing left, no stale signal
    snap = monitor.snapshot()
    assert snap["window_rows"] == 0
    assert all(math.isnan(v) for v in snap["class_share"].values())
    # cumulative counters do not forget
    assert monitor._bin_total.sum(axis=1).tolist() == [2000] * len(FEATURES)


def test_ring_slot_reuse_clears_old_counts(monitor: DriftMonitor, clock: FakeClock) -> None:
    rng = np.random.default_rng(5)
    monitor.observe(sample(rng, 500), labels(rng, 500))
    clock.now += 600  # same ring index, next lap
    monitor.observe(sample(rng, 200), labels(rng, 200))
    assert monitor.snapshot()["window_rows"] == 200


def test_memory_is_constant_whatever_the_traffic(monitor: DriftMonitor, clock: FakeClock) -> None:
    rng = np.random.default_rng(6)
    batches = [(sample(rng, 100), labels(rng, 100)) for _ in range(20)]
    arrays = {k: v for k, v in vars(monitor).items() if isinstance(v, np.ndarray)}
    for x, y in batches:  # warm-up
        monitor.observe(x, y)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(5000):
            x, y = batches[i % len(batches)]
            monitor.observe(x, y)
            clock.now += 1
        monitor.snapshot()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 16_384, f"grew by {after - before} bytes over 500k rows"
    for name, arr in vars(monitor).items():
        if name in arrays:
            assert arr is arrays[name] and arr.nbytes == arrays[name].nbytes, name


def test_out_of_range_counts(reference: dict, monitor: DriftMonitor) -> None:
    stats = reference["feature_stats"]
    lo = [stats[f]["min"] for f in FEATURES]
    hi = [stats[f]["max"] for f in FEATURES]
    x = np.array(
        [
            [lo[0] - 1, hi[1] + 1, 0.5],
            [lo[0] - 1, hi[1], hi[2] + 10],
            [lo[0], lo[1], lo[2]],  # on the boundary: in range
        ]
    )
    monitor.observe(x, ["benign", "benign", "malignant"])
    assert monitor._low_total.tolist() == [2, 0, 0]
    assert monitor._high_total.tolist() == [0, 1, 1]


def test_exported_series_follow_the_contract(reference: dict) -> None:
    registry = CollectorRegistry()
    clock = FakeClock()
    mon = DriftMonitor(reference, registry=registry, min_window_rows=10, clock=clock)
    rng = np.random.default_rng(7)
    mon.observe(sample(rng, 300), np.array(["malignant"] * 300, dtype=object))
    series = scrape(registry)

    def value(name: str, **lbl: str) -> float:
        return series[(name, tuple(sorted(lbl.items())))]

    assert value("mlservice_training_class_prior", **{"class": "benign"}) == pytest.approx(
        0.6, 0.05
    )
    assert value("mlservice_prediction_class_share", **{"class": "malignant"}) == 1.0
    assert value("mlservice_prediction_class_share", **{"class": "benign"}) == 0.0
    assert value("mlservice_class_distribution_psi") > 1.0
    for f in FEATURES:
        assert value("mlservice_feature_psi", feature=f) < 0.2
        n_bins = len(reference["feature_stats"][f]["fractions"])
        total = sum(
            value("mlservice_feature_bin_total", feature=f, bin=str(b)) for b in range(n_bins)
        )
        assert total == 300
        assert ("mlservice_feature_bin_total", (("bin", str(n_bins)), ("feature", f))) not in series
        for side in ("low", "high"):
            assert value("mlservice_feature_out_of_range_total", feature=f, side=side) >= 0
    names = {name for name, _ in series}
    assert names == {
        "mlservice_training_class_prior",
        "mlservice_feature_psi",
        "mlservice_feature_bin_total",
        "mlservice_feature_out_of_range_total",
        "mlservice_prediction_class_share",
        "mlservice_class_distribution_psi",
    }


def test_nan_exported_when_window_is_empty(reference: dict) -> None:
    registry = CollectorRegistry()
    DriftMonitor(reference, registry=registry)
    series = scrape(registry)
    assert math.isnan(series[("mlservice_feature_psi", (("feature", "alpha"),))])
    assert math.isnan(series[("mlservice_class_distribution_psi", ())])


def test_one_monitor_per_registry_and_unregister(reference: dict) -> None:
    registry = CollectorRegistry(auto_describe=True)
    first = DriftMonitor(reference, registry=registry)
    with pytest.raises(ValueError, match="Duplicated timeseries"):
        DriftMonitor(reference, registry=registry)
    first.unregister()  # what a model reload does before the new model's monitor registers
    DriftMonitor(reference, registry=registry)
    assert ("mlservice_class_distribution_psi", ()) in scrape(registry)


def test_concurrent_observers_lose_no_counts(reference: dict) -> None:
    mon = DriftMonitor(reference, registry=None)
    x = sample(np.random.default_rng(8), 10)
    y = ["benign"] * 10

    def worker() -> None:
        for _ in range(200):
            mon.observe(x, y)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert mon.snapshot()["window_rows"] == 8000
    assert mon._bin_total.sum() == 8000 * len(FEATURES)


@pytest.mark.parametrize(
    "bad",
    [np.zeros((3, 2)), np.zeros(3), np.zeros((2, 3, 1))],
    ids=["too-few-columns", "1d", "3d"],
)
def test_rejects_wrong_shapes(monitor: DriftMonitor, bad: np.ndarray) -> None:
    with pytest.raises(ValueError, match=r"\(rows, 3\) feature matrix"):
        monitor.observe(bad, ["benign"] * len(bad))


def test_empty_batch_is_a_no_op(monitor: DriftMonitor) -> None:
    monitor.observe(np.zeros((0, 3)), [])
    assert monitor.snapshot()["window_rows"] == 0


def test_from_model_metadata(reference: dict) -> None:
    mon = DriftMonitor.from_model_metadata({REFERENCE_KEY: reference}, registry=None)
    assert mon.feature_names == FEATURES and mon.class_labels == CLASSES
    with pytest.raises(ValueError, match="no 'ml_service_reference' block"):
        DriftMonitor.from_model_metadata({}, registry=None)
    with pytest.raises(ValueError, match="schema_version"):
        DriftMonitor.from_model_metadata(
            {REFERENCE_KEY: {**reference, "schema_version": 99}}, registry=None
        )
