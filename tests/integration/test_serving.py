"""The real app as a uvicorn subprocess, over HTTP, against a real `mlflow server`."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.app_server import AppServer, app_server
from support.mlflow import MlflowServer, RegisteredModel
from support.mlflow import mlflow_server as start_mlflow_server
from support.net import free_port
from support.poll import wait_until
from support.rows import from_app


def local_probabilities(model_dir: Path, rows: list[dict[str, float]]) -> np.ndarray:
    """What the logged model itself predicts (loaded outside the app)."""
    import skops.io
    import yaml

    flavor = yaml.safe_load((model_dir / "MLmodel").read_text())["flavors"]["sklearn"]
    path = str(model_dir / flavor["pickled_model"])
    estimator = skops.io.load(path, trusted=skops.io.get_untrusted_types(file=path))
    names = list(estimator.feature_names_in_)
    return estimator.predict_proba(np.array([[r[n] for n in names] for r in rows]))


# ---------------------------------------------------------------- by version / by alias


def test_serves_registered_version(
    served_model: AppServer, registered_model: RegisteredModel, local_model_dir: Path
) -> None:
    info = httpx.get(served_model.url("/model")).json()
    assert info["name"] == registered_model.name
    assert info["version"] == registered_model.version
    assert info["run_id"] == registered_model.run_id
    assert info["alias"] is None
    assert info["training_metrics"], "training metrics of the run should be reachable"
    assert set(info["classes"]) == {"benign", "malignant"}
    assert info["trained_with"]["scikit-learn"]

    rows = from_app(served_model)
    r = httpx.post(served_model.url("/predict"), json={"instances": rows})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": registered_model.name, "version": registered_model.version}
    expected = local_probabilities(local_model_dir, rows)
    classes = info["classes"]
    for pred, exp in zip(body["predictions"], expected, strict=True):
        got = [pred["probabilities"][c] for c in classes]
        assert got == exp.tolist()  # exactly: the flat tree walk must not move a bit
        assert pred["class"] == classes[int(np.argmax(exp))]

    inv = httpx.post(served_model.url("/invocations"), json={"dataframe_records": rows})
    assert inv.status_code == 200, inv.text
    assert inv.json() == {"predictions": [p["class"] for p in body["predictions"]]}


def test_serves_by_alias(registered_model: RegisteredModel, tmp_path: Path) -> None:
    assert registered_model.alias_uri, "the session model should carry the champion alias"
    with app_server(
        model_uri=registered_model.alias_uri,
        tracking_uri=registered_model.tracking_uri,
        wait_ready=True,
        log_dir=tmp_path,
    ) as app:
        info = httpx.get(app.url("/model")).json()
        assert info["alias"] == registered_model.alias
        assert info["version"] == registered_model.version
        r = httpx.post(app.url("/predict"), json={"instances": from_app(app, 1)})
        assert r.status_code == 200, r.text
        assert r.json()["model"]["version"] == registered_model.version


# ---------------------------------------------------------------- start-up and retries


def test_late_tracking_server_is_picked_up(
    mlflow_server_data: Path, registered_model: RegisteredModel, tmp_path: Path
) -> None:
    """Port opens at once, /ready is 503 while MLflow is down, then 200 once it comes up."""
    port = free_port()
    late_uri = f"http://127.0.0.1:{port}"
    with app_server(
        model_uri=registered_model.model_uri,
        tracking_uri=late_uri,
        log_dir=tmp_path,
        MODEL_LOAD_BACKOFF_MAX_SECONDS=1,
    ) as app:
        assert httpx.get(app.url("/health")).status_code == 200
        # at least two failed attempts, so the retry loop is really exercised
        wait_until(
            lambda: _sample(httpx.get(app.url("/metrics")).text,
                            "mlservice_model_load_failures_total") >= 2,
            60, "two failed load attempts", 0.2, app.log_tail,
        )  # fmt: skip
        metrics = httpx.get(app.url("/metrics")).text
        ready = httpx.get(app.url("/ready"))
        assert ready.status_code == 503
        assert ready.headers["retry-after"].isdigit()
        assert ready.json()["status"] == "loading"
        predict = httpx.post(app.url("/predict"), json={"instances": [{"x": 1}]})
        assert predict.status_code == 503
        assert "retry-after" in predict.headers
        assert _sample(metrics, "mlservice_model_loaded") == 0

        # a second server on the session's store: same models, now reachable at the late URI
        with start_mlflow_server(mlflow_server_data, port=port):
            app.wait_ready(timeout=120)
        info = httpx.get(app.url("/model")).json()
        assert info["version"] == registered_model.version
        metrics = httpx.get(app.url("/metrics")).text
        assert _sample(metrics, "mlservice_model_loaded") == 1
        assert _sample(metrics, "mlservice_model_load_duration_seconds") > 0


@pytest.fixture
def mlflow_server_data(mlflow_server: MlflowServer) -> Path:
    return mlflow_server.data_dir


def _sample(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " ") or line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not exported")


# ---------------------------------------------------------------- bad input over HTTP

LIMIT_BYTES = 8192
LIMIT_ROWS = 5


@pytest.fixture(scope="module")
def strict_app(local_model_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    """The model from a local directory (what an image carries), with small limits."""
    with app_server(
        model_uri=str(local_model_dir),
        wait_ready=True,
        log_dir=tmp_path_factory.mktemp("strict-app"),
        MAX_REQUEST_BYTES=LIMIT_BYTES,
        MAX_BATCH_ROWS=LIMIT_ROWS,
        MODEL_NAME="ml-service",
        MODEL_VERSION="local",
    ) as app:
        yield app


SENTINEL = "never-echo-0xC0FFEE"


def _bad_cases(row: dict[str, float]) -> dict[str, tuple[dict, int]]:
    first = next(iter(row))
    missing = dict(list(row.items())[1:])

    def literal(text: str) -> str:  # a JSON body whose first feature is `text` verbatim
        return json.dumps({"instances": [{**row, first: "__X__"}]}).replace('"__X__"', text)

    return {
        "missing": ({"json": {"instances": [missing]}}, 422),
        "unknown": ({"json": {"instances": [{**row, f"<{SENTINEL}>": 1.0}]}}, 422),
        "non-numeric": ({"json": {"instances": [{**row, first: SENTINEL}]}}, 422),
        "nan": ({"raw": literal("NaN")}, 422),
        "inf": ({"raw": literal("1e999")}, 422),
        "empty-batch": ({"json": {"instances": []}}, 422),
        "broken-json": ({"raw": '{"instances": [' + SENTINEL}, 422),
        "too-many-rows": ({"json": {"instances": [row] * (LIMIT_ROWS + 1)}}, 413),
        "body-too-large": ({"json": {"instances": [row], "pad": SENTINEL * 1000}}, 413),
        "wrong-content-type": ({"content": json.dumps({"instances": [row]}),
                                "headers": {"content-type": "text/csv"}}, 415),
        "form": ({"data": {"instances": SENTINEL}}, 415),
    }  # fmt: skip


CASES = [
    "missing", "unknown", "non-numeric", "nan", "inf", "empty-batch", "broken-json",
    "too-many-rows", "body-too-large", "wrong-content-type", "form",
]  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_bad_input_status(strict_app: AppServer, case: str) -> None:
    row = from_app(strict_app, 1)[0]
    kwargs, status = _bad_cases(row)[case]
    if "raw" in kwargs:
        kwargs = {"content": kwargs["raw"], "headers": {"content-type": "application/json"}}
    r = httpx.post(strict_app.url("/predict"), **kwargs)
    assert r.status_code == status, r.text
    assert SENTINEL not in r.text and "Traceback" not in r.text
    if status == 422:
        assert all(set(e) == {"loc", "msg", "type"} for e in r.json()["detail"])


def test_missing_and_unknown_fields_are_named(strict_app: AppServer) -> None:
    row = from_app(strict_app, 1)[0]
    first = next(iter(row))
    bad = {**{k: v for k, v in row.items() if k != first}, "bogus_feature": 1.0}
    detail = httpx.post(strict_app.url("/predict"), json={"instances": [bad]}).json()["detail"]
    assert {"loc": ["instances", 0, first], "type": "missing"} in _loc_types(detail)
    assert {"loc": ["instances", 0, "bogus_feature"], "type": "extra_forbidden"} in _loc_types(
        detail
    )


def _loc_types(detail: list[dict]) -> list[dict]:
    return [{"loc": d["loc"], "type": d["type"]} for d in detail]


def test_content_length_alone_triggers_413(strict_app: AppServer) -> None:
    """Announced too large: rejected before the body is read (raw socket, body never sent)."""
    with socket.create_connection(("127.0.0.1", strict_app.port), timeout=10) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000\r\n\r\n{"
        )
        head = sock.recv(4096).decode(errors="replace")
    assert head.startswith("HTTP/1.1 413"), head


def test_chunked_body_over_limit_is_413(strict_app: AppServer) -> None:
    def chunks():
        yield b'{"instances": ['
        for _ in range(10):
            yield b" " * 1024
        yield b"]}"

    r = httpx.post(
        strict_app.url("/predict"), content=chunks(), headers={"content-type": "application/json"}
    )
    assert r.status_code == 413, r.text
    assert r.request.headers.get("transfer-encoding") == "chunked"


def test_mlflow_client_payloads(strict_app: AppServer) -> None:
    rows = from_app(strict_app, 2)
    names = list(rows[0])
    expected = httpx.post(strict_app.url("/predict"), json={"instances": rows}).json()
    labels = [p["class"] for p in expected["predictions"]]
    payloads = [
        {"dataframe_split": {"columns": names, "data": [[r[n] for n in names] for r in rows]}},
        {"dataframe_records": rows},
        {"instances": rows},
        {"inputs": {n: [r[n] for r in rows] for n in names}},
    ]
    for payload in payloads:
        r = httpx.post(strict_app.url("/invocations"), json=payload)
        assert r.status_code == 200, (list(payload), r.text)
        assert r.json() == {"predictions": labels}


# ---------------------------------------------------------------- graceful shutdown


def test_sigterm_during_burst_loses_no_request(local_model_dir: Path, tmp_path: Path) -> None:
    """SIGTERM mid-burst: /ready turns 503 at once while the listener stays open for the drain,
    clients (like a load balancer) stop sending when they see it, every request that was sent
    completes with 200, and the process exits 0."""
    with app_server(
        model_uri=str(local_model_dir),
        wait_ready=True,
        log_dir=tmp_path,
        SHUTDOWN_DRAIN_SECONDS=3,
        SHUTDOWN_GRACE_SECONDS=20,
    ) as app:
        rows = from_app(app, 100)
        stop = threading.Event()
        results: list[int | str] = []
        lock = threading.Lock()

        def client() -> None:
            with httpx.Client(timeout=30) as http:
                while not stop.is_set():
                    try:
                        status: int | str = http.post(
                            app.url("/predict"), json={"instances": rows}
                        ).status_code
                    except httpx.HTTPError as exc:
                        status = f"{type(exc).__name__}: {exc}"
                    with lock:
                        results.append(status)

        threads = [threading.Thread(target=client) for _ in range(8)]
        for t in threads:
            t.start()
        while len(results) < 40:  # the burst is well under way
            time.sleep(0.01)
        app.process.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        ready = httpx.get(app.url("/ready"), timeout=5)
        health = httpx.get(app.url("/health"), timeout=5)
        stop.set()  # what a load balancer does when readiness fails
        for t in threads:
            t.join(timeout=60)
        code = app.process.wait(timeout=60)
        took = time.monotonic() - signalled

    assert ready.status_code == 503 and ready.json()["status"] == "shutting_down"
    assert health.status_code == 200
    failures = [r for r in results if r != 200]
    assert not failures, f"{len(failures)} of {len(results)} requests failed: {failures[:5]}"
    assert code == 0, app.log_tail()
    assert took < 3 + 20, "drain + grace bound the shutdown"


# ---------------------------------------------------------------- garbage collector

_GC_PROBE = r"""
import asyncio, gc, json, threading, time
gc.disable()  # what `python -m ml_service` does before its imports
from ml_service.serving.app import create_app
from prometheus_client import CollectorRegistry

async def main():
    app = create_app(registry=CollectorRegistry())
    service = app.state.service
    async with app.router.lifespan_context(app):
        while service.model is None:
            await asyncio.sleep(0.05)
        enabled = gc.isenabled()
        frozen_at_ready = gc.get_freeze_count()
        warm_up = next(t for t in threading.enumerate() if t.name == "mlflow-warmup")
        warm_up.join(60)
        print(json.dumps({"enabled": enabled, "frozen_at_ready": frozen_at_ready,
                          "frozen_after_warm_up": gc.get_freeze_count()}))

asyncio.run(main())
"""


def test_collector_is_back_on_and_startup_objects_are_frozen(local_model_dir: Path) -> None:
    """Imports run with the collector off (faster start); once the model is in, the collector
    is on again and the start-up objects, MLflow's scoring machinery included, are frozen out of
    its full passes (the 22-27 ms pauses that made the p99 at 50 connections)."""
    env = {**os.environ, "MODEL_URI": str(local_model_dir), "MLFLOW_DISABLE_TELEMETRY": "true"}
    out = subprocess.run(
        [sys.executable, "-c", _GC_PROBE], env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr[-3000:]
    probe = json.loads(out.stdout.strip().splitlines()[-1])
    assert probe["enabled"] is True
    assert probe["frozen_at_ready"] > 100_000
    # the warm-up's own imports (mlflow.pyfunc.scoring_server and friends) join the frozen set
    assert probe["frozen_after_warm_up"] > probe["frozen_at_ready"] + 20_000
