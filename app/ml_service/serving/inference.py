"""Where predictions run: one dedicated inference thread, optional micro-batching, drift off-path.

Why one thread (docs/api.md has the measurements): the event loop must never run numpy/sklearn
code, or every other request (health probes included) waits behind it. More than one inference
thread on a 2-core pod only makes OpenMP/BLAS pools and the GIL fight each other; a single
thread with NUMERIC_THREADS capped keeps one core for the event loop and one for the model.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import queue
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
from starlette.requests import ClientDisconnect
from threadpoolctl import threadpool_limits

from .model import LoadedModel

log = logging.getLogger(__name__)

# Rows arrive as a float matrix already in the estimator's column order (checked at load time
# against feature_names_in_); a DataFrame per request would cost more than the prediction.
warnings.filterwarnings(
    "ignore", message="X does not have valid feature names", category=UserWarning
)


def _limit_numeric_threads(n: int) -> bool:
    """Cap OpenMP/BLAS threads; False when it failed (e.g. out of file descriptors while
    threadpoolctl inspects the loaded libraries): predictions still run, and it is retried."""
    # OpenMP's thread count is per calling thread, so it must be set on the inference thread.
    try:
        threadpool_limits(limits=n)
    except Exception as exc:
        log.warning("could not cap numeric threads: %s", type(exc).__name__)
        return False
    return True


# The ASGI scope extension (set by server.py) that tells whether a request's client has gone:
# a callable, true once the connection is closed before its answer.
CLIENT_GONE = "ml_service.client_gone"


def client_gone(scope: dict) -> Callable[[], bool] | None:
    return scope.get("extensions", {}).get(CLIENT_GONE)


@dataclass
class _Pending:
    model: LoadedModel
    features: np.ndarray
    future: asyncio.Future
    gone: Callable[[], bool] | None = None


class _Call:
    """Any callable to run on the inference thread (smoke test, thread-limit probe)."""

    __slots__ = ("args", "fn", "future")

    def __init__(self, fn: Callable[..., Any], args: tuple, future: asyncio.Future) -> None:
        self.fn, self.args, self.future = fn, args, future


def settle(future: asyncio.Future, value: Any, exc: BaseException | None) -> None:
    """Complete a future from the event loop, unless its awaiter was cancelled meanwhile."""
    if future.done():
        return
    if exc is not None:
        future.set_exception(exc)
    else:
        future.set_result(value)


def _settle_all(results: list[tuple[asyncio.Future, Any, BaseException | None]]) -> None:
    for future, value, exc in results:
        settle(future, value, exc)


class InferenceEngine:
    """Runs predict_proba on one dedicated thread; coalesces concurrent requests when enabled.

    Hand-off: a SimpleQueue in, one `call_soon_threadsafe` per batch back (cheaper than
    `run_in_executor`'s two chained futures per request). With micro-batching, at most one batch
    is on the thread at a time; requests that arrive meanwhile queue on the event loop and go
    together as the next batch as soon as it returns. Only when two or more requests are
    queued does the batch wait, up to MICROBATCH_WAIT_MS, for more. A lone request never
    waits. All batching decisions run on the event loop: the thread never blocks with a
    timeout, so it never has to win the GIL back from a busy loop mid-batch.

    Requests larger than a micro-batch (more than MICROBATCH_MAX_ROWS rows) queue in a lane of
    their own and go one per batch, taking turns with the batches of the others: a one-row
    request waits behind at most one large request, however many are queued.
    """

    def __init__(
        self,
        *,
        numeric_threads: int,
        microbatch_wait_ms: float,
        microbatch_max_rows: int,
        observe_duration: Callable[[float], None],
        on_batch: Callable[[np.ndarray, np.ndarray], None] | None = None,
        on_abandoned: Callable[[int], None] = lambda n: None,
    ) -> None:
        self._numeric_threads = numeric_threads
        self._wait = microbatch_wait_ms / 1000.0
        self._max_rows = microbatch_max_rows
        self._observe = observe_duration
        # Runs on the inference thread once per predict call (drift statistics per batch).
        self.on_batch = on_batch
        # Counts requests never run because their clients had gone (on the inference thread).
        self._on_abandoned = on_abandoned
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: list[_Pending] = []
        self._pending_rows = 0
        self._large: collections.deque[_Pending] = collections.deque()
        self._large_turn = False  # the next batch comes from the large lane, if it has one
        self._busy = False  # a micro-batch is on the thread
        self._timer: asyncio.Handle | None = None
        self._closed = False

    @property
    def microbatching(self) -> bool:
        return self._wait > 0

    @property
    def alive(self) -> bool:
        """False once the inference thread died (nothing it was given would ever answer)."""
        return self._thread is None or self._thread.is_alive()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        if self._thread is None:
            # daemon: a wedged predict call must not keep the process alive after shutdown
            self._thread = threading.Thread(target=self._work, name="inference", daemon=True)
            self._thread.start()

    async def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
        if self._thread is not None:
            self._queue.put(None)
            await asyncio.get_running_loop().run_in_executor(None, self._thread.join, 10.0)
            self._thread = None

    def _submit(self, item: Any) -> None:
        if self._closed:
            raise RuntimeError("inference engine is closed")
        if self._thread is None:
            self.start()
        self._queue.put(item)

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run any callable on the inference thread (smoke tests use the same thread limits)."""
        future = asyncio.get_running_loop().create_future()
        self._submit(_Call(fn, args, future))
        return await future

    async def predict_proba(
        self,
        model: LoadedModel,
        features: np.ndarray,
        gone: Callable[[], bool] | None = None,
    ) -> np.ndarray:
        """`gone`, when given, is asked right before the rows run: a request whose client has
        gone is never run (it raises ClientDisconnect)."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        pending = _Pending(model, features, future, gone)
        if not self.microbatching:
            self._submit([pending])
            return await future
        if self._closed:
            raise RuntimeError("inference engine is closed")
        if features.shape[0] > self._max_rows:
            self._large.append(pending)
        else:
            self._pending.append(pending)
            self._pending_rows += features.shape[0]
        if not self._busy and self._timer is None:
            # after every request already runnable in this loop turn has been added
            self._timer = loop.call_soon(self._dispatch)
        return await future

    def _dispatch(self) -> None:
        """Send the queued requests as one batch, unless there is concurrency and room: then
        give stragglers up to MICROBATCH_WAIT_MS (once per batch)."""
        waited = self._timer is not None and isinstance(self._timer, asyncio.TimerHandle)
        self._timer = None
        if self._busy or not (self._pending or self._large):
            return
        if self._large and (self._large_turn or not self._pending):
            self._large_turn = False
            batch = [self._large.popleft()]
        elif not waited and len(self._pending) >= 2 and self._pending_rows < self._max_rows:
            assert self._loop is not None
            self._timer = self._loop.call_later(self._wait, self._dispatch)
            return
        else:
            self._large_turn = True
            batch, self._pending, self._pending_rows = self._pending, [], 0
        self._busy = True
        self._submit(batch)

    def _batch_done(self, results: list) -> None:
        _settle_all(results)
        self._busy = False
        if (self._pending or self._large) and self._timer is None:
            self._dispatch()

    # ---------------------------------------------------------------- inference thread

    def _reply(self, callback: Callable[[list], None], results: list) -> None:
        loop = self._loop
        if loop is not None:
            # the loop may be closed when the app stopped while a batch was running
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(callback, results)

    def _work(self) -> None:
        capped = False
        while True:
            item = self._queue.get()
            if item is None:
                return
            # threadpoolctl only caps the OpenMP/BLAS libraries loaded so far, and this thread
            # starts before the model (and scikit-learn's OpenMP runtime) is loaded: cap again
            # before each call (smoke tests run right after every model load) and the first
            # batch. Uncapped, HistGradientBoosting ran 10-50x slower on a busy 2-core node.
            if isinstance(item, _Call) or not capped:
                capped = _limit_numeric_threads(self._numeric_threads)
            if isinstance(item, _Call):
                try:
                    self._reply(_settle_all, [(item.future, item.fn(*item.args), None)])
                except Exception as exc:
                    self._reply(_settle_all, [(item.future, None, exc)])
                continue
            try:
                results = [r for chunk in self._chunks(item) for r in self._predict_chunk(chunk)]
            except Exception as exc:  # a bug of ours: these requests fail, the thread lives on
                log.exception("inference batch failed")
                results = [(p.future, None, exc) for p in item]
            self._reply(self._batch_done if self.microbatching else _settle_all, results)

    def _chunks(self, batch: list[_Pending]) -> Iterator[list[_Pending]]:
        """Consecutive runs with the same model and at most max_rows rows (a single larger
        request still runs, alone)."""
        chunk: list[_Pending] = []
        rows = 0
        for p in batch:
            n = p.features.shape[0]
            if chunk and (p.model is not chunk[0].model or rows + n > self._max_rows):
                yield chunk
                chunk, rows = [], 0
            chunk.append(p)
            rows += n
        if chunk:
            yield chunk

    def _predict_chunk(self, chunk: list[_Pending]) -> list:
        # Work whose client went away (a cancelled awaiter, a closed connection) is not run.
        live: list[_Pending] = []
        gone: list = []
        for p in chunk:
            if p.future.done():
                continue
            if p.gone is not None and p.gone():
                gone.append((p.future, None, ClientDisconnect()))
            else:
                live.append(p)
        if gone:
            self._on_abandoned(len(gone))
        if not live:
            return gone
        features = (
            live[0].features
            if len(live) == 1
            else np.concatenate([p.features for p in live], axis=0)
        )
        try:
            started = time.perf_counter()
            proba = live[0].model.predict_proba(features)
            self._observe(time.perf_counter() - started)
        except Exception as exc:
            return gone + [(p.future, None, exc) for p in live]
        if self.on_batch is not None:
            try:
                self.on_batch(features, proba)
            except Exception:
                log.exception("on_batch hook failed")
        if len(live) == 1:
            return [*gone, (live[0].future, proba, None)]
        results, start = gone, 0
        for p in live:
            end = start + p.features.shape[0]
            results.append((p.future, proba[start:end], None))
            start = end
        return results


class DriftSink:
    """Feeds the drift monitor from its own thread through a bounded queue.

    The request never waits for drift statistics, and when the monitor falls behind, batches
    are dropped (and counted in the log) instead of growing memory.
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
