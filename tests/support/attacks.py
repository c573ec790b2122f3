"""Attacks on a running server over loopback, and the watches that judge them.

Shared by `tests/adversarial` (bounded attacks with assertions) and `benchmarks/attacks.py`
(the same attacks at full size, printing figures). Every attack is bounded in count and time and
sends only to 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import socket
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

LOCALHOST = "127.0.0.1"


def rss_kib(pid: int) -> tuple[int, int]:
    """(current RSS, peak RSS) of a process, in KiB."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines()
    )
    return int(fields["VmRSS"].split()[0]), int(fields["VmHWM"].split()[0])


def lasting_growth_kib(pid: int, rss_before: int, limit_kib: int) -> int:
    """RSS growth over `rss_before` that stays: freed heap pages go back to the system only at
    the server's periodic trim (TRIM_INTERVAL_SECONDS), so the growth is read until it is under
    `limit_kib` or two trims have passed, and the last reading is returned."""
    from ml_service.serving.server import TRIM_INTERVAL_SECONDS

    deadline = time.monotonic() + 2 * TRIM_INTERVAL_SECONDS + 1
    while True:
        growth = rss_kib(pid)[0] - rss_before
        if growth < limit_kib or time.monotonic() > deadline:
            return growth
        time.sleep(0.5)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


# ---------------------------------------------------------------- watches


@contextlib.contextmanager
def _on_a_thread(run: object, stop: threading.Event, join_timeout: float) -> Iterator[None]:
    """`run()` on a daemon thread for the duration of the block, then `stop` is set."""
    thread = threading.Thread(target=run, daemon=True)  # type: ignore[arg-type]
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=join_timeout)


def probe(base_url: str, path: str, timeout: float) -> int:
    """One HTTP probe as the kubelet makes it (a new connection, `Connection: close`, the
    answer read to the end): its status. Raw sockets: an HTTP client library costs the prober
    more CPU than the probe costs the server."""
    host, port = base_url.removeprefix("http://").rsplit(":", 1)
    deadline = time.monotonic() + timeout
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
            sock.settimeout(max(0.001, deadline - time.monotonic()))
    if not answer.startswith(b"HTTP/1.1 "):
        raise ConnectionError(f"no HTTP answer: {answer[:40]!r}")
    return int(answer[9:12])


@dataclass
class ProbeWatch:
    """Polls probe paths from its own thread while an attack runs, a new connection each time
    (as the kubelet does): every answer must be 200 within `timeout`."""

    base_url: str
    paths: tuple[str, ...] = ("/health", "/ready")
    timeout: float = 1.0
    interval: float = 0.2
    latencies: list[float] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            path = self.paths[i % len(self.paths)]
            i += 1
            started = time.monotonic()
            try:
                status = probe(self.base_url, path, self.timeout)
                failure = f"status {status}" if status != 200 else None
            except OSError as exc:
                failure = type(exc).__name__
            took = time.monotonic() - started
            self.latencies.append(took)
            if failure is None and took > self.timeout:
                failure = f"took {took:.2f}s"
            if failure is not None:
                self.failures.append(f"{path}: {failure}")
            self._stop.wait(self.interval)

    @contextlib.contextmanager
    def running(self) -> Iterator[ProbeWatch]:
        with _on_a_thread(self._run, self._stop, self.timeout + 5):
            yield self

    def summary(self) -> dict:
        return {
            "probes": len(self.latencies),
            "failed": len(self.failures),
            "p50_ms": round(percentile(self.latencies, 0.5) * 1000, 1),
            "max_ms": round(max(self.latencies, default=float("nan")) * 1000, 1),
        }

    def check(self) -> None:
        assert self.latencies, "no probe ran"
        assert not self.failures, f"{len(self.failures)} probes failed: {self.failures[:5]}"


@dataclass
class RssWatch:
    """Samples a process's RSS from its own thread: the idle figure before, the peak during,
    and the figure after the attack (once it settled)."""

    pid: int
    interval: float = 0.1
    idle_kib: int = 0
    peak_kib: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(OSError):
                self.peak_kib = max(self.peak_kib, rss_kib(self.pid)[0])
            self._stop.wait(self.interval)

    @contextlib.contextmanager
    def running(self) -> Iterator[RssWatch]:
        self.idle_kib = self.peak_kib = rss_kib(self.pid)[0]
        with _on_a_thread(self._run, self._stop, 5):
            yield self

    def settled_kib(self, within: float = 5.0, tolerance_kib: int = 16 * 1024) -> int:
        """RSS once it is back within `tolerance_kib` of idle, or after `within` seconds."""
        deadline = time.monotonic() + within
        current = rss_kib(self.pid)[0]
        while current - self.idle_kib > tolerance_kib and time.monotonic() < deadline:
            time.sleep(0.2)
            current = rss_kib(self.pid)[0]
        return current

    def summary(self, settled_kib: int) -> dict:
        return {
            "idle_mb": round(self.idle_kib / 1024),
            "peak_mb": round(self.peak_kib / 1024),
            "after_mb": round(settled_kib / 1024),
        }


# ---------------------------------------------------------------- raw sockets


def connect(port: int, *, timeout: float = 5.0, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket()
    if rcvbuf is not None:  # before connect, so the window is small from the handshake on
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(timeout)
    sock.connect((LOCALHOST, port))
    return sock


@contextlib.contextmanager
def open_sockets(port: int, n: int, **kwargs) -> Iterator[list[socket.socket]]:
    """`n` connections (those the server refuses at once are kept too, closed)."""
    socks: list[socket.socket] = []
    try:
        for _ in range(n):
            with contextlib.suppress(OSError):
                socks.append(connect(port, **kwargs))
        yield socks
    finally:
        for s in socks:
            s.close()


def closed_by_server(sock: socket.socket) -> bool:
    """True once the server closed its side (after whatever it wrote)."""
    sock.setblocking(False)
    try:
        while sock.recv(65536):
            pass
        return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def http_request(method: str, path: str, body: bytes = b"", headers: dict | None = None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: x"]
    lines += [f"{k}: {v}" for k, v in (headers or {}).items()]
    if body:
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@contextlib.contextmanager
def trickle(socks: list[socket.socket], data: bytes, interval: float) -> Iterator[None]:
    """Send `data` one byte per `interval` on every socket, from a thread, until the block
    ends (or the data is out)."""
    stop = threading.Event()

    def run() -> None:
        for i in range(len(data)):
            for s in socks:
                with contextlib.suppress(OSError):
                    s.send(data[i : i + 1])
            if stop.wait(interval):
                return

    with _on_a_thread(run, stop, 10):
        yield


# ---------------------------------------------------------------- attacks


def pipeline_flood(port: int, seconds: float, request: bytes | None = None) -> int:
    """One connection streaming pipelined requests without reading a single answer, for
    `seconds` or until the server stops reading (a send blocks) or closes. Returns the number
    of requests the kernel accepted."""
    request = request or http_request("GET", "/health")
    block = request * 2000
    sent = 0
    deadline = time.monotonic() + seconds
    with connect(port, timeout=0.5) as sock:
        with contextlib.suppress(OSError):  # timeout: the server stopped reading; or it closed
            while time.monotonic() < deadline:
                sock.sendall(block)
                sent += len(block)
        # Hold the connection (unread answers and all) until the deadline.
        time.sleep(max(0.0, deadline - time.monotonic()))
    return sent // len(request)


@dataclass
class FloodResult:
    statuses: Counter = field(default_factory=Counter)
    label_statuses: dict[str, Counter] = field(default_factory=dict)
    latencies: dict[str, list[float]] = field(default_factory=dict)
    errors: Counter = field(default_factory=Counter)

    def summary(self, label: str) -> dict:
        lat = self.latencies.get(label, [])
        return {
            "requests": len(lat),
            "p50_ms": round(percentile(lat, 0.5) * 1000, 1),
            "p99_ms": round(percentile(lat, 0.99) * 1000, 1),
            "max_ms": round(max(lat, default=float("nan")) * 1000, 1),
        }


async def _client(
    port: int, request: bytes, label: str, result: FloodResult, stop: asyncio.Event
) -> None:
    """A keep-alive client in a closed loop; reconnects when the server closes."""
    lat = result.latencies.setdefault(label, [])
    reader = writer = None
    while not stop.is_set():
        try:
            if writer is None:
                reader, writer = await asyncio.open_connection(LOCALHOST, port, limit=1 << 22)
            started = time.monotonic()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            length = 0
            close = False
            for line in head.split(b"\r\n")[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"connection" and b"close" in value.lower():
                    close = True
            await reader.readexactly(length)
            lat.append(time.monotonic() - started)
            result.statuses[status] += 1
            result.label_statuses.setdefault(label, Counter())[status] += 1
            if close:
                writer.close()
                reader = writer = None
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            result.errors[type(exc).__name__] += 1
            if writer is not None:
                writer.close()
            reader = writer = None
            await asyncio.sleep(0.05)


def flood(port: int, clients: dict[str, tuple[int, bytes]], seconds: float) -> FloodResult:
    """Closed-loop keep-alive clients, `{label: (connections, request bytes)}`, for `seconds`,
    from a process of their own: in the caller's, they would compete with its watches for the
    interpreter and make the server look slower than it is."""
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1) as pool:
        return pool.apply(_flood, (port, clients, seconds))


def _flood(port: int, clients: dict[str, tuple[int, bytes]], seconds: float) -> FloodResult:
    result = FloodResult()

    async def main() -> None:
        stop = asyncio.Event()
        tasks = [
            asyncio.create_task(_client(port, request, label, result, stop))
            for label, (n, request) in clients.items()
            for _ in range(n)
        ]
        await asyncio.sleep(seconds)
        stop.set()
        await asyncio.wait(tasks, timeout=10)
        for t in tasks:
            t.cancel()

    asyncio.run(main())
    return result
