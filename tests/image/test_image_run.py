"""Run the real image the way the chart runs it (read-only root FS, UID/GID 10001, /tmp only)
and watch its whole life: /health at once, /ready after the model loads, /predict, the
HEALTHCHECK turning healthy, and `docker stop` under load ending it within the grace period with
exit code 0 and no failed request. Once against the host's MLflow server, once with a baked-in
model and no server."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from support.mlflow import RegisteredModel
from support.poll import wait_until
from support.rows import from_model_dir

from .conftest import SUMMARY, Container, Docker, run_container

# docker stop's grace: more than the app's SHUTDOWN_DRAIN_SECONDS (5) + SHUTDOWN_GRACE_SECONDS (20).
STOP_TIMEOUT = 40
START_TIMEOUT = 240.0  # cold start on 2 shared cores: imports + model download + smoke prediction


def _status(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=3).status_code
    except httpx.HTTPError:
        return None


def _wait(predicate, timeout: float, what: str, container: Container, interval: float = 0.1):
    def running_and():  # type: ignore[no-untyped-def]
        result = predicate()
        if not result and not container.state()["Running"]:
            raise AssertionError(f"container exited while waiting for {what}:\n{container.logs()}")
        return result

    return wait_until(running_and, timeout, what, interval, container.logs)


def _wait_healthy(container: Container) -> None:
    """The image's own HEALTHCHECK command reports healthy."""
    _wait(
        lambda: container.state().get("Health", {}).get("Status") == "healthy",
        60,
        "HEALTHCHECK healthy",
        container,
        interval=0.5,
    )


@dataclass
class LoadResult:
    ok_before_stop: int = 0
    ok_after_stop: int = 0  # answered 200 although SIGTERM had been sent when it was sent/running
    refused: int = 0  # connection refused once the listener closed: never in flight
    failures: list[str] = field(default_factory=list)
    # set by the first 200: the stop waits for it, not for a fixed delay (slow on a busy machine)
    answering: threading.Event = field(default_factory=threading.Event)


def _load_until_closed(
    url: str, payload: dict, stop_sent: threading.Event, result: LoadResult, deadline: float
) -> None:
    lock = threading.Lock()

    def worker() -> None:
        while time.monotonic() < deadline:
            in_flight_at_stop = stop_sent.is_set()
            try:
                # a fresh connection per request: no keep-alive races, each request stands alone
                response = httpx.post(url, json=payload, timeout=60)
            except httpx.ConnectError:
                with lock:
                    result.refused += 1
                if stop_sent.is_set():
                    return
                continue
            except httpx.HTTPError as exc:
                with lock:
                    result.failures.append(f"{type(exc).__name__}: {exc}")
                return
            with lock:
                if response.status_code != 200:
                    result.failures.append(f"HTTP {response.status_code}: {response.text[:200]}")
                elif in_flight_at_stop or stop_sent.is_set():
                    result.ok_after_stop += 1
                else:
                    result.ok_before_stop += 1
                    result.answering.set()
            if response.headers.get("connection") == "close" and stop_sent.is_set():
                return  # the server is draining: a load balancer would now route elsewhere

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=max(1.0, deadline - time.monotonic()))


def exercise(
    docker: Docker, container: Container, model_dir: Path, model: RegisteredModel, label: str
) -> None:
    started = time.monotonic()

    # /health answers while the model is still loading (readiness is separate)
    def health_up():
        if _status(container.url("/health")) == 200:
            return {"ready": _status(container.url("/ready")), "at": time.monotonic()}
        return None

    health = _wait(health_up, START_TIMEOUT, "/health 200", container)
    _wait(lambda: _status(container.url("/ready")) == 200, START_TIMEOUT, "/ready 200", container)
    ready_at = time.monotonic()
    assert health["ready"] != 200 or health["at"] - started < 1.0, (
        "/health only answered once the model was loaded"
    )

    rows = from_model_dir(model_dir, 3, step=0.001)
    response = httpx.post(container.url("/predict"), json={"instances": rows}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["model"] == {"name": model.name, "version": model.version}
    assert len(body["predictions"]) == 3
    for prediction in body["predictions"]:
        assert prediction["class"] in {"benign", "malignant"}
        assert set(prediction["probabilities"]) == {"benign", "malignant"}
        assert abs(sum(prediction["probabilities"].values()) - 1) < 1e-6

    # the image's own HEALTHCHECK command (probed every 2 s here)
    _wait_healthy(container)

    # docker stop while requests are in flight: all of them must be answered
    stop_sent = threading.Event()
    result = LoadResult()
    load = threading.Thread(
        target=_load_until_closed,
        args=(
            container.url("/predict"),
            {"instances": from_model_dir(model_dir, 200, step=0.001)},
            stop_sent,
            result,
            time.monotonic() + STOP_TIMEOUT + 30,
        ),
    )
    load.start()
    assert result.answering.wait(60), f"no request answered before the stop: {result}"
    time.sleep(0.5)  # several requests in flight when SIGTERM lands
    stop_started = time.monotonic()
    stop_sent.set()
    stopped = docker.run(
        "stop", "--time", str(STOP_TIMEOUT), container.name, timeout=STOP_TIMEOUT + 30
    )
    stop_seconds = time.monotonic() - stop_started
    load.join(timeout=60)
    state = container.state()
    logs = container.logs()

    SUMMARY[f"{label}: /health, /ready after"] = (
        f"{health['at'] - started:.1f} s, {ready_at - started:.1f} s"
    )
    SUMMARY[f"{label}: docker stop"] = (
        f"{stop_seconds:.1f} s, exit {state['ExitCode']}, requests ok before/after SIGTERM "
        f"{result.ok_before_stop}/{result.ok_after_stop}, refused after close {result.refused}"
    )
    assert stopped.returncode == 0
    assert not state["Running"] and not state["OOMKilled"]
    assert state["ExitCode"] == 0, f"exit code {state['ExitCode']} (137 = killed):\n{logs}"
    assert stop_seconds < STOP_TIMEOUT, "the container outlived docker stop's grace period"
    assert result.failures == [], f"in-flight requests failed during shutdown:\n{logs}"
    assert result.ok_before_stop > 0 and result.ok_after_stop > 0, result


def test_runs_against_the_mlflow_server(
    docker: Docker, image: str, registered_model, local_model_dir
):
    env = {
        "MODEL_URI": registered_model.alias_uri,
        "MLFLOW_TRACKING_URI": registered_model.tracking_uri,
    }
    with run_container(docker, image, env) as container:
        exercise(docker, container, local_model_dir, registered_model, "from MLflow")


def test_runs_with_a_baked_in_model_and_no_tracking_server(
    docker: Docker, baked_image: str, registered_model, local_model_dir
):
    config = docker.inspect(baked_image)["Config"]
    env = dict(item.split("=", 1) for item in config["Env"])
    assert env["MODEL_URI"] == "/opt/ml-service/model"
    assert "MLFLOW_TRACKING_URI" not in env
    assert config["Labels"]["org.ml-service.model.version"] == registered_model.version
    with run_container(docker, baked_image, {}) as container:
        exercise(docker, container, local_model_dir, registered_model, "baked")


def test_baked_image_needs_no_network(docker: Docker, baked_image: str):
    """Air-gapped: no network at all, yet the model loads and the HEALTHCHECK turns healthy."""
    with run_container(docker, baked_image, {}, network="none") as container:
        ready = (
            "import os, urllib.request as u;"
            "u.urlopen('http://127.0.0.1:%s/ready' % os.environ['PORT'], timeout=3)"
        )

        def is_ready() -> bool:
            proc = docker.run("exec", container.name, "python", "-c", ready, check=False)
            return proc.returncode == 0

        _wait(is_ready, START_TIMEOUT, "/ready 200 without network", container, interval=1.0)
        _wait_healthy(container)
        docker.run("stop", "--time", str(STOP_TIMEOUT), container.name, timeout=STOP_TIMEOUT + 30)
        assert container.state()["ExitCode"] == 0, container.logs()
