"""The inference engine: one thread, capped numeric threads, micro-batching that slices right."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import threading

import numpy as np
import pytest
from ml_service.serving.inference import DriftSink, InferenceEngine
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_info


class Model:
    """Stands in for LoadedModel: the engine only calls predict_proba."""

    def __init__(self) -> None:
        rng = np.random.default_rng(0)
        x = rng.normal(size=(100, 3))
        self.estimator = LogisticRegression().fit(x, x[:, 0] > 0)
        self.calls: list[int] = []
        self.threads: set[str] = set()
        # (input, output) of every call: results are checked against what the model returned,
        # never against a separate call with another batch size (BLAS may differ in the last
        # bits between a row alone and the same row inside a batch).
        self.seen: list[tuple[np.ndarray, np.ndarray]] = []

    def predict_proba(self, features: np.ndarray) -> np.ndarray:
        self.calls.append(features.shape[0])
        self.threads.add(threading.current_thread().name)
        proba = self.estimator.predict_proba(features)
        self.seen.append((features.copy(), proba))
        return proba


def assert_sliced_from_calls(model: Model, batches: list[np.ndarray], results: list) -> None:
    """Each request's rows went to the model exactly once, in one call, and it got exactly
    the outputs of those rows (requests may be served out of arrival order)."""
    inputs = np.concatenate([x for x, _ in model.seen])
    outputs = np.concatenate([y for _, y in model.seen])
    assert inputs.shape[0] == sum(b.shape[0] for b in batches)
    for b, r in zip(batches, results, strict=True):
        (start,) = np.flatnonzero((inputs == b[0]).all(axis=1))  # rows are random: unique
        np.testing.assert_array_equal(inputs[start : start + b.shape[0]], b)
        np.testing.assert_array_equal(r, outputs[start : start + b.shape[0]])


async def _run(wait_ms: float, batches: list[np.ndarray], model: Model, max_rows: int = 256):
    durations: list[float] = []
    engine = InferenceEngine(
        numeric_threads=1,
        microbatch_wait_ms=wait_ms,
        microbatch_max_rows=max_rows,
        observe_duration=durations.append,
    )
    engine.start()
    try:
        results = await asyncio.gather(*(engine.predict_proba(model, b) for b in batches))
    finally:
        await engine.close()
    return results, durations


def _batches() -> list[np.ndarray]:
    rng = np.random.default_rng(1)
    return [rng.normal(size=(n, 3)) for n in (1, 3, 1, 5, 2)]


def test_without_microbatching_every_request_is_one_call() -> None:
    model, batches = Model(), _batches()
    results, durations = asyncio.run(_run(0, batches, model))
    assert sorted(model.calls) == sorted(b.shape[0] for b in batches)
    assert len(durations) == len(batches)
    assert {t.split("_")[0] for t in model.threads} == {"inference"}
    for b, r in zip(batches, results, strict=True):
        np.testing.assert_array_equal(r, model.estimator.predict_proba(b))


def test_microbatching_coalesces_concurrent_requests_and_slices_results() -> None:
    model, batches = Model(), _batches()
    results, durations = asyncio.run(_run(200, batches, model))
    assert model.calls == [sum(b.shape[0] for b in batches)]  # one predict_proba call
    assert len(durations) == 1
    assert_sliced_from_calls(model, batches, results)
    for b, r in zip(batches, results, strict=True):  # and the right numbers, to a tolerance
        np.testing.assert_allclose(r, model.estimator.predict_proba(b), rtol=0, atol=1e-12)


def test_microbatch_respects_max_rows() -> None:
    model, batches = Model(), _batches()
    results, _ = asyncio.run(_run(200, batches, model, max_rows=4))
    assert max(model.calls) <= 5  # a single request larger than the cap still runs alone
    assert sum(model.calls) == sum(b.shape[0] for b in batches)
    assert len(model.calls) > 1
    assert_sliced_from_calls(model, batches, results)


def test_a_small_request_waits_behind_one_large_request_at_most() -> None:
    """Requests larger than a micro-batch take turns with the others: a one-row request queued
    behind three large ones is predicted first or second, not fourth."""
    model = Model()
    rng = np.random.default_rng(2)
    batches = [rng.normal(size=(n, 3)) for n in (5, 5, 5, 1)]
    results, _ = asyncio.run(_run(200, batches, model, max_rows=4))
    assert sorted(model.calls) == [1, 5, 5, 5]
    assert model.calls.index(1) <= 1, model.calls
    assert_sliced_from_calls(model, batches, results)


def test_numeric_threads_are_capped_on_the_inference_thread() -> None:
    async def probe() -> list[dict]:
        engine = InferenceEngine(
            numeric_threads=1,
            microbatch_wait_ms=0,
            microbatch_max_rows=1,
            observe_duration=lambda _: None,
        )
        try:
            return await engine.run(threadpool_info)
        finally:
            await engine.close()

    info = asyncio.run(probe())
    assert info, "sklearn/numpy should expose at least one OpenMP or BLAS pool"
    assert all(pool["num_threads"] == 1 for pool in info), info


def test_drift_sink_is_bounded_and_never_raises() -> None:
    release = threading.Event()
    seen: list[int] = []

    def observe(features: np.ndarray, labels: np.ndarray) -> None:
        release.wait(10)
        if features.shape[0] == 2:
            raise ValueError("a broken monitor must not break predictions")
        seen.append(features.shape[0])

    sink = DriftSink(observe, maxsize=2)
    for _ in range(10):  # the worker holds one, the queue two, the rest are dropped
        sink.submit(np.zeros((1, 3)), np.array(["a"]))
    assert sink.dropped >= 7
    sink.submit(np.zeros((2, 3)), np.array(["a", "b"]))
    release.set()
    sink.close()
    assert seen and all(n == 1 for n in seen)


@pytest.mark.parametrize("wait_ms", [0, 50])
def test_errors_reach_the_caller(wait_ms: float) -> None:
    class Broken(Model):
        def predict_proba(self, features: np.ndarray) -> np.ndarray:
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        asyncio.run(_run(wait_ms, _batches()[:2], Broken()))


def test_numeric_threads_are_capped_for_libraries_loaded_after_start() -> None:
    """The engine starts with the app, before the model brings scikit-learn's OpenMP runtime:
    the cap must still reach it (threadpoolctl only sees libraries loaded so far). Uncapped,
    HistGradientBoosting ran 10-50x slower on a busy node. A fresh interpreter, because this
    one has long loaded scikit-learn."""
    script = """
import asyncio, json
from ml_service.serving.inference import InferenceEngine

async def main():
    engine = InferenceEngine(numeric_threads=1, microbatch_wait_ms=0, microbatch_max_rows=1,
                             observe_duration=lambda _: None)
    engine.start()
    try:
        import sklearn.ensemble  # noqa: F401  - loads the OpenMP runtime after start()
        from threadpoolctl import threadpool_info
        return await engine.run(threadpool_info)
    finally:
        await engine.close()

print(json.dumps(asyncio.run(main())))
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=120, check=True
    )
    info = json.loads(out.stdout.strip().splitlines()[-1])
    assert any(pool["user_api"] == "openmp" for pool in info), info
    assert all(pool["num_threads"] == 1 for pool in info), info


@pytest.mark.parametrize("wait_ms", [0.0, 2.0])
def test_rows_of_a_client_that_has_gone_never_run(wait_ms: float) -> None:
    from starlette.requests import ClientDisconnect

    model = Model()
    abandoned: list[int] = []
    rows = np.random.default_rng(1).normal(size=(2, 3))

    async def main() -> list:
        engine = InferenceEngine(
            numeric_threads=1,
            microbatch_wait_ms=wait_ms,
            microbatch_max_rows=256,
            observe_duration=lambda s: None,
            on_abandoned=abandoned.append,
        )
        engine.start()
        try:
            return await asyncio.gather(
                engine.predict_proba(model, rows[:1], lambda: True),  # its client left
                engine.predict_proba(model, rows[1:], lambda: False),
                return_exceptions=True,
            )
        finally:
            await engine.close()

    gone, served = asyncio.run(main())
    assert isinstance(gone, ClientDisconnect)
    assert isinstance(served, np.ndarray) and served.shape == (1, 2)
    assert sum(abandoned) == 1
    ran = np.concatenate([x for x, _ in model.seen])
    assert not (ran == rows[0]).all(axis=1).any()  # the gone client's row never reached it
