"""HTTP framing and redirects: what a smuggling attempt, an oversized upload, a lying
Content-Length or a forged Host header can make the server do."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.app_server import AppServer, app_server

from .conftest import raw_request, read_until_close

BODY_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def app(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    with app_server(
        model_uri=str(tiny_model),
        wait_ready=True,
        log_dir=tmp_path_factory.mktemp("framing"),
        MAX_REQUEST_BYTES=65536,
        REQUEST_BODY_TIMEOUT_SECONDS=BODY_TIMEOUT,
    ) as server:
        yield server


def test_413_closes_the_connection(app: AppServer) -> None:
    """The server answers and hangs up instead of reading gigabytes it already refused."""
    with socket.create_connection(("127.0.0.1", app.port), timeout=10) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Content-Length: 10000000000\r\n\r\n"
        )
        sent, started = 0, time.monotonic()
        try:
            while time.monotonic() - started < 5:
                sent += sock.send(b" " * 65536)
        except OSError:
            pass  # the server closed: writing fails
        received, closed = read_until_close(sock, timeout=2)
    assert received.startswith(b"HTTP/1.1 413") or closed, received[:200]
    assert sent < 512 * 1024 * 1024, f"the server kept reading: {sent} bytes accepted"


@pytest.mark.parametrize(
    "framing",
    [
        b"Content-Length: 2\r\nTransfer-Encoding: chunked\r\n",
        b"Transfer-Encoding: chunked\r\nContent-Length: 2\r\n",
        b"Content-Length: 2\r\nContent-Length: 3\r\n",
    ],
    ids=["cl-then-te", "te-then-cl", "two-lengths"],
)
def test_ambiguous_framing_is_refused_and_closed(app: AppServer, framing: bytes) -> None:
    request = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        + framing
        + b"\r\n2\r\n{}\r\n0\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    received, closed = raw_request(app.port, request, read_timeout=5)
    assert received.startswith(b"HTTP/1.1 400"), received[:200]
    assert closed, "the connection must be closed after ambiguous framing"
    assert received.count(b"HTTP/1.1") == 1, "the smuggled second request was served"


@pytest.mark.parametrize("coding", [b"identity, chunked", b"gzip, chunked"])
def test_transfer_codings_other_than_chunked_are_refused(app: AppServer, coding: bytes) -> None:
    """`identity, chunked` used to be read as chunked: a front proxy that honours `identity`
    (or rejects it) would frame the body differently. Only a lone `chunked` is read."""
    request = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Transfer-Encoding: " + coding + b"\r\n\r\n2\r\n{}\r\n0\r\n\r\n"
        b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n"
    )
    received, closed = raw_request(app.port, request, read_timeout=5)
    assert received.startswith(b"HTTP/1.1 501"), received[:200]
    assert closed and received.count(b"HTTP/1.1") == 1


def test_short_body_times_out_with_408(app: AppServer) -> None:
    body = json.dumps({"instances": []}).encode()
    request = (
        b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(body) + 100, body)
    )
    started = time.monotonic()
    received, closed = raw_request(app.port, request, read_timeout=BODY_TIMEOUT + 10)
    took = time.monotonic() - started
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert closed
    assert took < BODY_TIMEOUT + 5, took


@pytest.mark.parametrize("path", ["/predict/", "/docs/", "/ready/", "//evil.example/x"])
def test_no_redirect_echoes_the_host_header(app: AppServer, path: str) -> None:
    request = f"GET {path} HTTP/1.1\r\nHost: evil.example\r\nConnection: close\r\n\r\n".encode()
    received, _ = raw_request(app.port, request)
    head = received.split(b"\r\n\r\n", 1)[0].lower()
    assert not head.startswith(b"http/1.1 3"), head
    assert b"evil.example" not in received.lower()
