"""The payload log: sampled prediction rows and accepted labels, written in batches to the
S3 store the MLflow platform runs (or a directory), to retrain and evaluate on what was served.

Off the request path: a request only appends a reference to its arrays to a queue (the rows
are already in memory) after one sampling draw. A writer thread turns them into compressed
JSON Lines objects (ml_service.payload_format) a request at a time, yielding the GIL in between,
and writes an object when it holds PAYLOAD_LOG_BATCH_ROWS rows or PAYLOAD_LOG_FLUSH_SECONDS after
its first row, and once more at shutdown. The
queue holds at most PAYLOAD_LOG_QUEUE_ROWS rows (those waiting and those being written): past
it, rows are dropped and counted, never waited for. A write the store refuses (or a store that
is down) drops that object's rows, counted too; the next object tries again. What the log holds
never reaches the app's log: failures are logged by type only.
"""

from __future__ import annotations

import collections
import logging
import os
import random
import socket
import threading
import time
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry

from ml_service.payload_format import ObjectBuilder, object_key, open_store

from .metrics import PayloadLogMetrics
from .model import LoadedModel, describe
from .settings import Settings

log = logging.getLogger("ml_service")

# How long shutdown waits for the last objects (inside the chart's terminationGracePeriod margin).
CLOSE_SECONDS = 5.0
# How often the writer takes what arrived (rows wait in the queue at most this long), and how
# long it holds the GIL at most before handing it back to the event loop (Python's own switch
# interval is 5 ms: a request would wait that long behind the writer).
TICK_SECONDS = 0.1
YIELD_SECONDS = 0.0005


class PayloadLog:
    def __init__(self, settings: Settings, registry: CollectorRegistry) -> None:
        assert settings.payload_log_uri
        self.uri = settings.payload_log_uri
        self.sample = settings.payload_log_sample
        self.batch_rows = settings.payload_log_batch_rows
        self.flush_seconds = settings.payload_log_flush_seconds
        self.capacity = settings.payload_log_queue_rows
        self.metrics = metrics = PayloadLogMetrics(registry)
        self._queue: collections.deque = collections.deque()
        self._rows = 0  # queued or being written: what the capacity bounds
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._writer = f"{socket.gethostname()[:63]}-{os.getpid()}"
        self._seq = 0
        self._clock = Clock()
        metrics.queued.set_function(lambda: self._rows)

    # ------------------------------------------------------------ the request side (event loop)

    def _admit(self, kind: str, rows: int) -> bool:
        with self._lock:
            if self._rows + rows > self.capacity:
                admitted = False
            else:
                self._rows += rows
                admitted = True
        if not admitted:
            self.metrics.dropped.labels(kind, "queue_full").inc(rows)
        return admitted

    def offer_predictions(
        self,
        endpoint: str,
        request_id: str,
        model: LoadedModel,
        ids: list[str],
        features: np.ndarray,
        labels: list[str],
        proba: list[list[float]],
        row_type: type,
    ) -> None:
        """`row_type`: the model's msgspec struct of one row (ModelSchemas.row_struct), which
        encodes a row as {feature name: value} in C."""
        if self.sample < 1.0 and random.random() >= self.sample:  # noqa: S311 - sampling
            return
        if self._admit("predictions", len(ids)):
            entry = (
                time.time(),
                endpoint,
                request_id,
                model,
                ids,
                features,
                labels,
                proba,
                row_type,
            )
            self._queue.append(("predictions", entry))

    def offer_labels(self, accepted: list[Any]) -> None:
        if accepted and self._admit("labels", len(accepted)):
            self._queue.append(("labels", (time.time(), accepted)))

    # ------------------------------------------------------------ the writer thread

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="payload-log", daemon=True)
        self._thread.start()

    def close(self, timeout: float = CLOSE_SECONDS) -> None:
        """Write what is queued (within `timeout`), then stop the writer."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)

    def _run(self) -> None:
        """Every TICK_SECONDS: encode what arrived into the objects being built, one request at
        a time, handing the GIL back to the event loop in between (the thread never holds it
        for long, so requests do not queue behind a whole object's encoding); write an object
        once it is full or old enough."""
        store = None
        building: dict[str, tuple[float, ObjectBuilder]] = {}
        while True:
            self._wake.wait(TICK_SECONDS)
            stopping = self._stopping
            ready = []
            yielded = time.perf_counter()
            while self._queue:
                kind, entry = self._queue.popleft()
                at, builder = building.setdefault(kind, (entry[0], ObjectBuilder()))
                builder.add(ENCODE[kind](entry, self._clock))
                if time.perf_counter() - yielded > YIELD_SECONDS:
                    time.sleep(0)  # let the event loop run
                    yielded = time.perf_counter()
                if builder.rows >= self.batch_rows:
                    ready.append((kind, *building.pop(kind)))
            now = time.time()
            for kind, (at, builder) in list(building.items()):
                if stopping or now - at >= self.flush_seconds:
                    del building[kind]
                    ready.append((kind, at, builder))
            for kind, at, builder in ready:
                if store is None:
                    store = self._open()
                self._write(store, kind, at, builder)
            if stopping and not self._queue:
                return

    def _open(self):  # type: ignore[no-untyped-def]
        try:
            return open_store(self.uri)
        except Exception as exc:
            log.warning("payload log: the store cannot be opened: %s", describe(exc))
            return None

    def _write(self, store, kind: str, at: float, builder: ObjectBuilder) -> None:  # type: ignore[no-untyped-def]
        rows = builder.rows
        try:
            if store is None:
                raise RuntimeError("the store could not be opened")
            self._seq += 1
            store.put(object_key(store.prefix, kind, at, self._writer, self._seq), builder.finish())
        except Exception as exc:
            self.metrics.dropped.labels(kind, "write_failed").inc(rows)
            log.warning("payload log: %d %s rows not written: %s", rows, kind, _what(exc))
        else:
            self.metrics.written.labels(kind).inc(rows)
            self.metrics.objects.inc()
        finally:
            with self._lock:
                self._rows -= rows


def _what(exc: Exception) -> str:
    """The failure, for the log: S3's error code when the store answered, else the first line
    of the error (redacted); neither quotes the rows."""
    code = (getattr(exc, "response", None) or {}).get("Error", {}).get("Code")
    return f"{type(exc).__name__} ({code})" if code else describe(exc)


class Clock:
    """UTC ISO 8601 times with milliseconds, formatted once per second (datetime's isoformat
    costs more than the rest of a record)."""

    def __init__(self) -> None:
        self._second, self._text = -1, ""

    def iso(self, at: float) -> str:
        second = int(at)
        if second != self._second:
            self._second, self._text = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(at))
        return f"{self._text}.{int((at - second) * 1000):03d}Z"


def _prediction_records(entry: tuple, clock: Clock) -> list[dict[str, Any]]:
    at, endpoint, request_id, model, ids, features, labels, proba, row_type = entry
    when, ref = clock.iso(at), {"name": model.name, "version": model.version}
    classes = model.classes
    return [
        {
            "time": when,
            "endpoint": endpoint,
            "request_id": request_id,
            "prediction_id": pid,
            "model": ref,
            "features": row_type(*row),
            "prediction": label,
            "probabilities": dict(zip(classes, p, strict=True)),
        }
        for pid, row, label, p in zip(ids, features.tolist(), labels, proba, strict=True)
    ]


def _label_records(entry: tuple, clock: Clock) -> list[dict[str, Any]]:
    at, accepted = entry
    when = clock.iso(at)
    return [{"time": when, "prediction_id": a.prediction_id, "label": a.label} for a in accepted]


ENCODE = {"predictions": _prediction_records, "labels": _label_records}
