"""Idle and slow clients: a connection that never speaks is not held forever. Held, 1,100 of them
at a 1,024 open-file limit stop the listener, /health times out (the kubelet restarts the pod)
and the log grows 57 MB in 21 s."""

from __future__ import annotations

import contextlib
import signal
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from ml_service.serving.server import fd_budget
from support.app_server import AppServer, app_server
from support.attacks import closed_by_server, open_sockets

from .conftest import main_port_health, read_until_close

HEADER_TIMEOUT = 2.0


@pytest.fixture
def app(tiny_model: Path, tmp_path: Path) -> Iterator[AppServer]:
    with app_server(
        model_uri=str(tiny_model),
        wait_ready=True,
        log_dir=tmp_path,
        max_open_files=1024,  # what many container runtimes give
        REQUEST_HEADER_TIMEOUT_SECONDS=HEADER_TIMEOUT,
        MAX_CONNECTIONS=400,
    ) as server:
        yield server


def test_silent_connections_are_cut_off_and_never_lock_out_health(app: AppServer) -> None:
    with main_port_health(app).running() as health, open_sockets(app.port, 1100) as socks:
        time.sleep(HEADER_TIMEOUT + 2)
        closed = sum(closed_by_server(s) for s in socks)
        # the server must keep answering new clients while the flood is held
        assert httpx.get(app.url("/ready"), timeout=3).status_code == 200
    health.check()
    assert closed == len(socks), f"{len(socks) - closed} silent connections still open"
    log = app.log_path.read_bytes()
    assert len(log) < 64 * 1024, f"log grew to {len(log)} bytes"
    metrics = httpx.get(app.url("/metrics")).text
    assert 'mlservice_connections_closed_total{reason="header_timeout"}' in metrics


def test_at_the_cap_the_longest_idle_connections_give_way(tiny_model: Path, tmp_path: Path) -> None:
    """Silent connections up to the cap, then more: each newcomer is accepted and the longest
    idle one is closed, in order. Asserted apart from the flood above: there, on a loaded
    machine, the client's connects can wait on SYN retries, and the header deadline can close
    the first ones before the cap is ever reached."""
    cap, extra = 40, 10
    with (
        app_server(
            model_uri=str(tiny_model),
            wait_ready=True,
            log_dir=tmp_path,
            REQUEST_HEADER_TIMEOUT_SECONDS=120,  # only eviction closes a silent connection here
            MAX_CONNECTIONS=cap,
        ) as app,
        open_sockets(app.port, cap) as held,
    ):
        time.sleep(0.5)  # all accepted, idle since before the newcomers
        with open_sockets(app.port, extra) as newcomers:
            deadline = time.monotonic() + 10
            while not all(map(closed_by_server, held[:extra])) and time.monotonic() < deadline:
                time.sleep(0.1)
            evicted = [i for i, s in enumerate(held + newcomers) if closed_by_server(s)]
            # (the probe listener: a connection to the main one would evict one more)
            metrics = httpx.get(app.probe_url("/metrics"), timeout=5).text
    assert evicted == list(range(extra)), f"closed: {evicted}"
    assert f'mlservice_connections_closed_total{{reason="idle_evicted"}} {extra}.0' in metrics


def test_slowloris_headers_are_cut_off(app: AppServer) -> None:
    """500 connections sending one header byte a second: the deadline covers the whole
    header, so trickling bytes does not keep a connection alive."""
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 200
    stop = threading.Event()
    with main_port_health(app).running() as health, open_sockets(app.port, 500) as socks:

        def trickle() -> None:
            for i in range(len(request)):
                if stop.is_set():
                    return
                for s in socks:
                    with contextlib.suppress(OSError):
                        s.send(request[i : i + 1])
                stop.wait(1.0)

        thread = threading.Thread(target=trickle, daemon=True)
        thread.start()
        # Polled while the trickle goes on (a deadline that bytes extend would never close them);
        # a loaded machine may need a few seconds past the deadline to close 500 sockets.
        time.sleep(HEADER_TIMEOUT + 3)
        done: set[int] = set()
        deadline = time.monotonic() + 8
        while len(done) < len(socks) and time.monotonic() < deadline:
            done |= {i for i, s in enumerate(socks) if i not in done and closed_by_server(s)}
            time.sleep(0.5)
        stop.set()
        thread.join(timeout=10)
        closed = len(done)
    health.check()
    assert closed == len(socks), f"{len(socks) - closed} slow connections still open"


def test_a_probe_behind_a_slowloris_backlog_is_served(tiny_model: Path, tmp_path: Path) -> None:
    """The event loop is behind (here: the process is stopped) while more slow connections than
    the cap each send the first bytes of a header and a probe sends a whole request. On resume
    every socket holds unread bytes and none has been idle for long; only the probe's bytes are a
    complete request, so it must be a slow connection that makes room (a probe that came in the
    first second of a flood, on a loaded machine, once got the 503 instead). The connections all
    wait in the listen queue, whose length the open-file budget sets: more would never connect."""
    cap, open_files = 100, 1024
    slow_count = fd_budget(cap, open_files).backlog - 4
    assert slow_count > cap, "the listen queue must hold more connections than the cap"
    slow = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: a"
    probe_request = b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    with app_server(
        model_uri=str(tiny_model),
        wait_ready=True,
        log_dir=tmp_path,
        max_open_files=open_files,
        REQUEST_HEADER_TIMEOUT_SECONDS=HEADER_TIMEOUT,
        MAX_CONNECTIONS=cap,
    ) as app:
        app.process.send_signal(signal.SIGSTOP)
        try:
            with open_sockets(app.port, slow_count, timeout=2.0) as socks:
                for s in socks:
                    with contextlib.suppress(OSError):
                        s.sendall(slow)
                probe = socket.create_connection(("127.0.0.1", app.port), timeout=10)
                probe.sendall(probe_request)
                app.process.send_signal(signal.SIGCONT)
                with probe:
                    received, _ = read_until_close(probe, timeout=10)
        finally:
            app.process.send_signal(signal.SIGCONT)
        metrics = httpx.get(app.url("/metrics"), timeout=5).text
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    assert 'mlservice_connections_closed_total{reason="idle_evicted"}' in metrics


def test_oversized_headers_get_431_and_close(app: AppServer) -> None:
    """The parser keeps a header's bytes in memory and joins them as they come, so a client
    streaming one endless header would cost memory and CPU that grow with every byte."""
    head = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: "
    with socket.create_connection(("127.0.0.1", app.port), timeout=10) as sock:
        sock.sendall(head)
        sent = 0
        with contextlib.suppress(OSError):  # the server may close while we are still sending
            while sent < 8 * 1024 * 1024:
                sock.sendall(b"a" * 65536)
                sent += 65536
        received, closed = read_until_close(sock, timeout=5)
    assert received.startswith(b"HTTP/1.1 431"), received[:200]
    assert b"MAX_HEADER_BYTES" in received and b"aaaa" not in received
    assert closed
    metrics = httpx.get(app.url("/metrics"), timeout=5).text
    assert 'mlservice_connections_closed_total{reason="header_too_large"} 1.0' in metrics


def test_large_headers_under_the_cap_are_served_on_one_connection(app: AppServer) -> None:
    """The cap is per request: two 40 KB-header requests on one keep-alive connection."""
    request = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 40_000 + b"\r\n\r\n"
    with socket.create_connection(("127.0.0.1", app.port), timeout=10) as sock:
        answers = b""
        for sent in (1, 2):
            sock.sendall(request)
            deadline = time.monotonic() + 5
            while answers.count(b'{"status":"ok"}') < sent and time.monotonic() < deadline:
                answers += sock.recv(65536)
    assert answers.count(b"HTTP/1.1 200") == 2, answers[:300]


def kept_alive(tiny_model: Path, tmp_path: Path, keepalive: float):  # type: ignore[no-untyped-def]
    return app_server(
        model_uri=str(tiny_model),
        wait_ready=True,
        log_dir=tmp_path,
        REQUEST_HEADER_TIMEOUT_SECONDS=HEADER_TIMEOUT,
        KEEPALIVE_TIMEOUT_SECONDS=keepalive,
    )


HEALTH = b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"


def answer(sock: socket.socket) -> bytes:
    """One whole answer to /health on a kept-alive connection."""
    received = b""
    while not received.endswith(b"}"):
        chunk = sock.recv(65536)
        if not chunk:
            break
        received += chunk
    return received


def test_a_kept_alive_connection_outlives_the_header_deadline(
    tiny_model: Path, tmp_path: Path
) -> None:
    """A pooled client reuses a connection after a pause longer than the header deadline: the
    deadline runs from a request's first byte, so the connection is still open and serves the
    request (closing it at the deadline raced the client's reuse: the request was reset). The
    keep-alive timeout closes it once idle for that long."""
    keepalive = 3 * HEADER_TIMEOUT
    with (
        kept_alive(tiny_model, tmp_path, keepalive) as app,
        socket.create_connection(("127.0.0.1", app.port), timeout=10) as sock,
    ):
        sock.sendall(HEALTH)
        first = answer(sock)
        time.sleep(HEADER_TIMEOUT + 1.5)  # past the header deadline and a sweep
        assert not closed_by_server(sock), "closed at the header deadline while idle"
        sock.setblocking(True)
        sock.settimeout(10)
        sock.sendall(HEALTH)
        second = answer(sock)
        idle_from = time.monotonic()
        received, closed = read_until_close(sock, timeout=keepalive + 5)
        idle_for = time.monotonic() - idle_from
    assert first.startswith(b"HTTP/1.1 200") and second.startswith(b"HTTP/1.1 200"), second[:200]
    assert closed and received == b"", received[:200]
    assert keepalive - 0.5 < idle_for < keepalive + 3, idle_for


def test_a_request_trickled_after_a_response_is_cut_at_the_header_deadline(
    tiny_model: Path, tmp_path: Path
) -> None:
    """The header deadline of a kept-alive connection starts at the next request's first
    byte: a trickle there is cut like one on a new connection, long before the keep-alive
    timeout."""
    with kept_alive(tiny_model, tmp_path, 60) as app:
        with socket.create_connection(("127.0.0.1", app.port), timeout=10) as sock:
            sock.sendall(HEALTH)
            assert answer(sock).startswith(b"HTTP/1.1 200")
            time.sleep(1.0)
            started = time.monotonic()
            closed = False
            for byte in b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100:
                try:
                    sock.sendall(bytes([byte]))
                except OSError:
                    closed = True
                    break
                if closed_by_server(sock):
                    closed = True
                    break
                sock.setblocking(True)
                time.sleep(0.25)
            cut_after = time.monotonic() - started
        metrics = httpx.get(app.probe_url("/metrics"), timeout=5).text
    assert closed and cut_after < HEADER_TIMEOUT + 3, cut_after
    assert 'mlservice_connections_closed_total{reason="header_timeout"} 1.0' in metrics


def test_all_busy_sheds_load_with_503(tiny_model: Path, tmp_path: Path) -> None:
    """Every connection mid-request (bodies arriving slowly) and the cap reached: a new
    connection gets a canned 503 and is closed; nothing is logged per connection."""
    with (
        app_server(
            model_uri=str(tiny_model),
            wait_ready=True,
            log_dir=tmp_path,
            MAX_CONNECTIONS=20,
            REQUEST_BODY_TIMEOUT_SECONDS=30,
        ) as app,
        open_sockets(app.port, 20) as socks,
    ):
        head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        for s in socks:
            s.sendall(head + b"Content-Length: 100\r\n\r\n{")  # busy: body never finished
        time.sleep(0.5)
        with socket.create_connection(("127.0.0.1", app.port), timeout=5) as extra:
            received, closed = read_until_close(extra, timeout=5)
    assert received.startswith(b"HTTP/1.1 503"), received[:200]
    assert b"retry-after" in received.lower()
    assert closed
