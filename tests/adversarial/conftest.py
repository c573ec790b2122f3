"""The adversarial tier: the real app over loopback HTTP, attacked the way a hostile or broken
client would. Every attack is bounded in count and time; traffic stays on 127.0.0.1."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from support.app_server import AppServer
from support.sklearn_model import save_model


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small HistGradientBoosting model in a local directory: starts in seconds, no MLflow."""
    return save_model(tmp_path_factory.mktemp("adversarial") / "model", estimator="hgb")


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process, in KiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


@dataclass
class HealthWatch:
    """Polls /health from its own thread while an attack runs: every answer must be 200 and
    arrive within the kubelet's probe timeout."""

    app: AppServer
    timeout: float = 3.0
    interval: float = 0.25
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                # a new connection each time, as the kubelet does
                status = httpx.get(self.app.url("/health"), timeout=self.timeout).status_code
                if status != 200:
                    self.failures.append(f"status {status}")
            except httpx.HTTPError as exc:
                self.failures.append(f"{type(exc).__name__}: {exc}")
            self.latencies.append(time.monotonic() - started)
            self._stop.wait(self.interval)

    @contextlib.contextmanager
    def running(self) -> Iterator[HealthWatch]:
        thread = threading.Thread(target=self._run, daemon=True)
        thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            thread.join(timeout=self.timeout + 5)

    def check(self) -> None:
        assert self.latencies, "the health probe never ran"
        assert not self.failures, f"/health failed during the attack: {self.failures[:5]}"
        assert max(self.latencies) < self.timeout, max(self.latencies)


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
