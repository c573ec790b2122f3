"""Run the real app (`python -m ml_service`) as a uvicorn subprocess on a free port.

    with app_server(model_uri=..., tracking_uri=...) as app:   # waits for /health
        app.wait_ready()
        httpx.post(app.url("/predict"), json=...)

Used by the serving, monitoring, image and benchmark tiers; `served_model` is a ready server
for the session's registered model; `wait_client_ready` waits for an in-process app (TestClient).
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from .mlflow import QUIET_MLFLOW_ENV, RegisteredModel
from .net import free_port, wait_http
from .poll import wait_until
from .procs import spawn, stop_group, tail


@dataclass
class AppServer:
    base_url: str
    port: int
    log_path: Path
    process: subprocess.Popen = field(repr=False)
    probe_port: int = 0

    def url(self, path: str) -> str:
        return self.base_url + path

    @property
    def probe_base_url(self) -> str:
        return f"http://127.0.0.1:{self.probe_port}"

    def probe_url(self, path: str) -> str:
        """`path` on the probe listener (PROBE_PORT): /health, /ready, /metrics."""
        return self.probe_base_url + path

    def log_tail(self, chars: int = 4000) -> str:
        return tail(self.log_path, chars)

    def wait_ready(self, timeout: float = 120.0) -> None:
        wait_http(self.url("/ready"), timeout=timeout, proc=self.process, log=self.log_path)

    def terminate(self, sig: int = signal.SIGTERM, timeout: float = 60.0) -> int:
        """Send `sig` to the app only (not its group) and return its exit code."""
        with contextlib.suppress(ProcessLookupError):
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


def wait_client_ready(client, timeout: float = 60.0) -> None:  # type: ignore[no-untyped-def]
    """The in-process app behind a TestClient has its model loaded: /ready answers 200."""
    wait_until(lambda: client.get("/ready").status_code == 200, timeout, "/ready answering 200",
               0.05, lambda: client.get("/ready").text)  # fmt: skip


def app_env(
    *,
    model_uri: str,
    tracking_uri: str | None = None,
    port: int,
    probe_port: int,
    **settings: str | int | float,
) -> dict[str, str]:
    env = {**os.environ, **QUIET_MLFLOW_ENV}
    for key in ("MLFLOW_TRACKING_URI", "PROMETHEUS_MULTIPROC_DIR"):
        env.pop(key, None)
    env.update(
        {
            "MODEL_URI": model_uri,
            "HOST": "127.0.0.1",
            "PORT": str(port),
            "PROBE_PORT": str(probe_port),
            "LOG_LEVEL": "info",
            # quick test shutdowns; tests of the drain phase set their own
            "SHUTDOWN_DRAIN_SECONDS": "0",
            "MODEL_LOAD_BACKOFF_MAX_SECONDS": "2",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    env.update({k.upper(): str(v) for k, v in settings.items()})
    return env


@contextlib.contextmanager
def app_server(
    *,
    model_uri: str,
    tracking_uri: str | None = None,
    wait_ready: bool = False,
    timeout: float = 60.0,
    log_dir: Path | None = None,
    max_open_files: int | None = None,
    env_extra: dict[str, str] | None = None,
    **settings: str | int | float,
) -> Iterator[AppServer]:
    """Start the app in its own process group, wait for /health (and /ready if asked).

    `max_open_files` caps the app's file descriptors (soft and hard), as a container runtime
    might; `env_extra` adds variables verbatim (e.g. credentials MLflow reads)."""
    port, probe_port = free_port(), free_port()
    while probe_port == port:
        probe_port = free_port()
    log_dir = Path(log_dir or tempfile.mkdtemp(prefix="ml-service-app-"))
    log_path = log_dir / f"app-{port}.log"
    env = app_env(
        model_uri=model_uri, tracking_uri=tracking_uri, port=port, probe_port=probe_port, **settings
    )
    env.update(env_extra or {})

    def limit_files() -> None:
        if max_open_files is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (max_open_files, max_open_files))

    proc = spawn(
        [sys.executable, "-m", "ml_service"], log_path=log_path, env=env, preexec_fn=limit_files
    )
    server = AppServer(f"http://127.0.0.1:{port}", port, log_path, proc, probe_port)
    try:
        wait_http(server.url("/health"), timeout=timeout, proc=proc, log=log_path)
        if wait_ready:
            server.wait_ready(timeout=max(timeout, 120.0))
        yield server
    finally:
        if proc.poll() is None:
            stop_group(proc, timeout=30)
        else:
            # the app exited (e.g. a SIGTERM test); reap anything left in its group
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="session")
def served_model(
    registered_model: RegisteredModel, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AppServer]:
    """The session's registered model served by exact version, ready."""
    with app_server(
        model_uri=registered_model.model_uri,
        tracking_uri=registered_model.tracking_uri,
        wait_ready=True,
        log_dir=tmp_path_factory.mktemp("served-model"),
    ) as server:
        yield server
