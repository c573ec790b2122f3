"""Where predictions run: one dedicated inference thread, optional micro-batching, drift off-path.

Why one thread (docs/api.md has the measurements): the event loop must never run numpy/sklearn
code, or every other request (health probes included) waits behind it. More than one inference
thread on a 2-core pod only makes OpenMP/BLAS pools and the GIL fight each other; a single
thread with NUMERIC_THREADS capped keeps one core for the event loop and one for the model.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from .model import LoadedModel

log = logging.getLogger(__name__)

# Rows arrive as a float matrix already in the estimator's column order (checked at load time
# against feature_names_in_); a DataFrame per request would cost more than the prediction.
warnings.filterwarnings(
    "ignore", message="X does not have valid feature names", category=UserWarning
)


def _limit_numeric_threads(n: int) -> None:
    # OpenMP's thread count is per calling thread, so it must be set on the inference thread.
    threadpool_limits(limits=n)


@dataclass
class _Pending:
    model: LoadedModel
    features: np.ndarray
    future: asyncio.Future


class InferenceEngine:
    """Runs predict_proba on a single thread; coalesces concurrent requests when enabled."""

    def __init__(
        self,
        *,
        numeric_threads: int,
        microbatch_wait_ms: float,
        microbatch_max_rows: int,
        observe_duration: Callable[[float], None],
    ) -> None:
        self._executor = ThreadPoolExecutor(
            max_workers=1,
            thread_name_prefix="inference",
            initializer=_limit_numeric_threads,
            initargs=(numeric_threads,),
        )
        self._wait = microbatch_wait_ms / 1000.0
        self._max_rows = microbatch_max_rows
        self._observe = observe_duration
        self._queue: asyncio.Queue[_Pending] | None = None
        self._collector: asyncio.Task | None = None

    @property
    def microbatching(self) -> bool:
        return self._wait > 0

    def start(self) -> None:
        if self.microbatching and self._collector is None:
            self._queue = asyncio.Queue()
            self._collector = asyncio.create_task(self._collect(), name="microbatch")

    async def close(self) -> None:
        if self._collector is not None:
            self._collector.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._collector
        self._executor.shutdown(wait=True, cancel_futures=True)

    def _timed_predict(self, model: LoadedModel, features: np.ndarray) -> np.ndarray:
        started = time.perf_counter()
        proba = model.predict_proba(features)
        self._observe(time.perf_counter() - started)
        return proba

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run any callable on the inference thread (smoke tests use the same thread limits)."""
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    async def predict_proba(self, model: LoadedModel, features: np.ndarray) -> np.ndarray:
        if not self.microbatching:
            return await self.run(self._timed_predict, model, features)
        assert self._queue is not None
        future = asyncio.get_running_loop().create_future()
        self._queue.put_nowait(_Pending(model, features, future))
        return await future

    async def _collect(self) -> None:
        """Take what is queued now (it piled up during the previous predict call); only when
        that shows concurrency (two or more requests), wait up to the bound for more. A lone
        request never waits, so batching costs nothing at concurrency 1."""
        assert self._queue is not None
        loop = asyncio.get_running_loop()
        carry: _Pending | None = None
        while True:
            first = carry or await self._queue.get()
            carry = None
            batch = [first]
            rows = first.features.shape[0]
            deadline = loop.time() + self._wait
            while rows < self._max_rows:
                try:
                    item = self._queue.get_nowait()
                except asyncio.QueueEmpty:
                    timeout = deadline - loop.time()
                    if len(batch) < 2 or timeout <= 0:
                        break
                    try:
                        item = await asyncio.wait_for(self._queue.get(), timeout)
                    except TimeoutError:
                        break
                if item.model is not first.model or rows + item.features.shape[0] > self._max_rows:
                    carry = item  # goes first into the next batch
                    break
                batch.append(item)
                rows += item.features.shape[0]
            await self._predict_batch(batch)

    async def _predict_batch(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.future.done()]  # clients that went away
        if not live:
            return
        features = (
            live[0].features
            if len(live) == 1
            else np.concatenate([p.features for p in live], axis=0)
        )
        try:
            proba = await self.run(self._timed_predict, live[0].model, features)
        except Exception as exc:
            for p in live:
                if not p.future.done():
                    p.future.set_exception(exc)
            return
        start = 0
        for p in live:
            end = start + p.features.shape[0]
            if not p.future.done():
                p.future.set_result(proba[start:end])
            start = end


class DriftSink:
    """Feeds the drift monitor from its own thread through a bounded queue.

    The request never waits for drift statistics, and when the monitor falls behind, batches
    are dropped (and counted in the log) instead of growing memory: the seed's leak was an
    unbounded per-request list.
    """

    def __init__(self, observe: Callable[[np.ndarray, np.ndarray], Any], maxsize: int = 256):
        self._observe = observe
        self._queue: queue.Queue = queue.Queue(maxsize=maxsize)
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="drift", daemon=True)
        self._thread.start()

    def submit(self, features: np.ndarray, labels: np.ndarray) -> None:
        try:
            self._queue.put_nowait((features, labels))
        except queue.Full:
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("drift monitor is behind; %d batches skipped so far", self.dropped)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            try:
                self._observe(*item)
            except Exception:
                log.exception("drift monitor failed on a batch")

    def close(self, timeout: float = 2.0) -> None:
        with contextlib.suppress(queue.Full):
            self._queue.put(None, timeout=timeout)
        self._thread.join(timeout)
