"""The adversarial tier: the real app over loopback HTTP, attacked the way a hostile or broken
client would. Every attack is bounded in count and time; traffic stays on 127.0.0.1. The
attacks and watches themselves live in tests/support/attacks.py (benchmarks/attacks.py runs
them at full size for figures)."""

from __future__ import annotations

import json
import resource
import socket
from pathlib import Path

import httpx
import pytest
from support.app_server import AppServer
from support.attacks import ProbeWatch
from support.sklearn_model import save_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small HistGradientBoosting model in a local directory: starts in seconds, no MLflow."""
    return save_model(tmp_path_factory.mktemp("adversarial") / "model", estimator="hgb")


@pytest.fixture(scope="session", autouse=True)
def enough_client_sockets() -> None:
    """Attacks hold a thousand connections from the test process."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 4096:
        pytest.skip(f"the attacks need 4096 open files, the hard limit here is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, 4096), hard))


def warm_up(app: AppServer, model_dir: Path) -> None:
    """One CSV prediction: it waits for MLflow's scoring machinery, which loads in the
    background after `/ready` (~30 MB), so memory figures start from the warm process."""
    example = json.loads((model_dir / "input_example.json").read_text())
    csv = ",".join(example["columns"]) + "\n" + ",".join(map(str, example["data"][0])) + "\n"
    r = httpx.post(app.url("/invocations"), content=csv, headers={"content-type": "text/csv"})
    assert r.status_code == 200, r.text


def series_value(app: AppServer, series: str) -> float:
    """One series' value (`name{labels}` as exposed), read on the probe listener; 0 if absent."""
    text = httpx.get(app.probe_url("/metrics"), timeout=5).text
    lines = [line for line in text.splitlines() if line.startswith(series + " ")]
    return float(lines[0].split()[-1]) if lines else 0.0


def closed_count(app: AppServer, reason: str) -> float:
    """`mlservice_connections_closed_total{reason}`."""
    return series_value(app, f'mlservice_connections_closed_total{{reason="{reason}"}}')


def main_port_health(app: AppServer) -> ProbeWatch:
    """`/health` on the main port, as a client sees it: answered within 3 s."""
    return ProbeWatch(app.base_url, paths=("/health",), timeout=3.0, interval=0.25)


def probes(app: AppServer) -> ProbeWatch:
    """What the kubelet and Prometheus ask the probe listener: every answer 200 within 1 s."""
    return ProbeWatch(app.probe_base_url, paths=("/health", "/ready", "/metrics"), timeout=1.0)


def raw_request(port: int, data: bytes, *, read_timeout: float = 10.0) -> tuple[bytes, bool]:
    """Send raw bytes; return (everything the server sent, whether it closed the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=read_timeout) as sock:
        sock.sendall(data)
        return read_until_close(sock, read_timeout)


def read_until_close(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    sock.settimeout(timeout)
    received = b""
    try:
        while chunk := sock.recv(65536):
            received += chunk
        return received, True
    except TimeoutError:
        return received, False
    except ConnectionResetError:
        return received, True
