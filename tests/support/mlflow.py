"""A real `mlflow server` process and real training runs against it, for tests."""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from .net import free_port, wait_http
from .procs import spawn, stop_group, tail

MODEL_NAME = "ml-service"

# MLflow's background job workers outlive the server and telemetry would try the network.
QUIET_MLFLOW_ENV = {
    "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
}


@dataclass(frozen=True)
class MlflowServer:
    tracking_uri: str
    port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen = field(repr=False, compare=False)

    def log_tail(self) -> str:
        return tail(self.log_path)


@dataclass(frozen=True)
class RegisteredModel:
    name: str
    version: str
    run_id: str
    model_uri: str  # models:/ml-service/<version>
    alias: str | None
    alias_uri: str | None  # models:/ml-service@<alias>
    tracking_uri: str
    metrics: dict = field(default_factory=dict)
    result: dict = field(default_factory=dict)  # the full --output-json document


def mlflow_env(tracking_uri: str | None = None, **extra: str) -> dict[str, str]:
    """Environment for child processes that talk to MLflow (and nothing else)."""
    env = {**os.environ, **QUIET_MLFLOW_ENV, **extra}
    if tracking_uri is not None:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


@contextlib.contextmanager
def mlflow_server(
    data_dir: Path, port: int | None = None, timeout: float = 120.0
) -> Iterator[MlflowServer]:
    """Run `mlflow server` (sqlite + local artifacts under `data_dir`) in its own process group."""
    data_dir = Path(data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    log_path = data_dir / "server.log"
    mlflow_bin = Path(sys.executable).with_name("mlflow")
    cmd = [
        str(mlflow_bin),
        "server",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
        "--backend-store-uri",
        f"sqlite:///{data_dir / 'mlflow.db'}",
        "--artifacts-destination",
        str(data_dir / "artifacts"),
    ]
    proc = spawn(cmd, log_path=log_path, env=mlflow_env(), cwd=data_dir)
    server = MlflowServer(f"http://127.0.0.1:{port}", port, data_dir, log_path, proc)
    try:
        wait_http(f"{server.tracking_uri}/health", timeout=timeout, proc=proc, log=log_path)
        yield server
    finally:
        stop_group(proc)


def run_training(
    tracking_uri: str,
    *args: str,
    output_json: Path,
    timeout: float = 600.0,
    extra_env: dict[str, str] | None = None,
) -> tuple[dict, subprocess.CompletedProcess]:
    """`python -m ml_service.training` as a real subprocess: (--output-json document, process)."""
    cmd = [sys.executable, "-m", "ml_service.training", "--output-json", str(output_json), *args]
    proc = subprocess.run(
        cmd,
        env=mlflow_env(tracking_uri, **(extra_env or {})),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(
            f"training failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
        )
    return json.loads(Path(output_json).read_text()), proc


def train(tracking_uri: str, *args: str, output_json: Path, **kwargs) -> dict:
    """Train and register once; the --output-json document."""
    return run_training(tracking_uri, *args, output_json=output_json, **kwargs)[0]


def as_registered_model(result: dict) -> RegisteredModel:
    return RegisteredModel(
        name=result["name"],
        version=str(result["version"]),
        run_id=result["run_id"],
        model_uri=result["model_uri"],
        alias=result.get("alias"),
        alias_uri=result.get("alias_uri"),
        tracking_uri=result["tracking_uri"],
        metrics=result.get("metrics", {}),
        result=result,
    )


@dataclass(frozen=True)
class ScoringServer:
    """`mlflow models serve` of one model: the reference ml-service's MLflow endpoints match."""

    base_url: str
    port: int
    log_path: Path
    process: subprocess.Popen = field(repr=False, compare=False)

    def url(self, path: str) -> str:
        return self.base_url + path

    def log_tail(self) -> str:
        return tail(self.log_path)


@contextlib.contextmanager
def scoring_server(
    model_dir: Path, log_dir: Path, timeout: float = 120.0, **env: str
) -> Iterator[ScoringServer]:
    """Run MLflow's own scoring server (`mlflow models serve --env-manager local`)."""
    port = free_port()
    log_path = Path(log_dir) / f"mlflow-serve-{port}.log"
    cmd = [str(Path(sys.executable).with_name("mlflow")), "models", "serve", "-m", str(model_dir),
           "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]  # fmt: skip
    # it execs `uvicorn` by name: the virtualenv's bin must be on PATH
    path = f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"
    proc = spawn(cmd, log_path=log_path, env=mlflow_env(PATH=path, **env))
    server = ScoringServer(f"http://127.0.0.1:{port}", port, log_path, proc)
    try:
        wait_http(server.url("/ping"), timeout=timeout, proc=proc, log=log_path)
        yield server
    finally:
        stop_group(proc)
