"""Overload: more POSTs than the pod can serve are refused early and cheaply (503 with
`Retry-After`, before their bodies are parsed, the connection kept), never queued until their
clients give up. Without admission control, an open-loop load past capacity left ~5 % of the
capacity as goodput, with seconds-long waits and connection resets (docs/benchmarks.md)."""

from __future__ import annotations

import json
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.app_server import AppServer, app_server
from support.attacks import connect, http_request
from support.rows import from_model_dir
from support.tools import tool

from .conftest import closed_count, probes, read_until_close, series_value

JSON = {"Content-Type": "application/json"}


def shed_count(app: AppServer) -> float:
    return series_value(app, 'mlservice_requests_shed_total{reason="concurrency_limit"}')


def rows(model_dir: Path, n: int = 1) -> bytes:
    return json.dumps({"instances": from_model_dir(model_dir, 1) * n}).encode()


def read_responses(sock: socket.socket, n: int = 1, timeout: float = 10.0) -> list[bytes]:
    """`n` responses (headers and a Content-Length body each) from a kept-open connection."""
    sock.settimeout(timeout)
    data, out = b"", []
    while len(out) < n:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                return [*out, data]
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        length = next(
            int(line.split(b":", 1)[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        )
        while len(rest) < length:
            rest += sock.recv(65536)
        out.append(head + b"\r\n\r\n" + rest[:length])
        data = rest[length:]
    return out


def read_response(sock: socket.socket) -> bytes:
    return read_responses(sock)[0]


@pytest.fixture
def one_slot(tiny_model: Path, tmp_path: Path) -> Iterator[AppServer]:
    """A limit of exactly one POST in flight: a request whose body is still arriving holds it."""
    with app_server(
        model_uri=str(tiny_model),
        wait_ready=True,
        log_dir=tmp_path,
        ADMISSION_MIN_CONCURRENCY=1,
        ADMISSION_MAX_CONCURRENCY=1,
    ) as server:
        yield server


def test_a_request_beyond_the_limit_gets_a_503_before_its_body_and_keeps_its_connection(
    one_slot: AppServer, tiny_model: Path
) -> None:
    body = rows(tiny_model)
    head = (
        b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    with connect(one_slot.port) as holder, connect(one_slot.port) as refused:
        holder.sendall(head + body[:5])  # admitted: its body is still on the way
        time.sleep(0.3)
        refused.sendall(http_request("POST", "/predict", body, JSON))
        answer = read_response(refused)
        assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
        assert b"retry-after: 1\r\n" in answer.lower()
        assert b"overloaded" in answer and b"connection: close" not in answer.lower()
        # a large body is refused without being read: 503 and close
        with connect(one_slot.port) as large:
            large.sendall(
                b"POST /predict HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n"
                b"Content-Length: 5000000\r\n\r\n" + b"[" * 1000
            )
            data, closed = read_until_close(large, 10)
            assert data.startswith(b"HTTP/1.1 503 ") and closed, data[:200]
        # GETs are not limited; the refused connection serves its next request
        refused.sendall(http_request("GET", "/model"))
        assert read_response(refused).startswith(b"HTTP/1.1 200 ")
        holder.sendall(body[5:])  # the slot is released once this one is answered
        assert read_response(holder).startswith(b"HTTP/1.1 200 ")
        refused.sendall(http_request("POST", "/predict", body, JSON))
        assert read_response(refused).startswith(b"HTTP/1.1 200 ")
    assert shed_count(one_slot) == 2
    assert closed_count(one_slot, "overloaded") == 1


def test_a_pipelined_request_beyond_the_limit_is_refused_in_order(
    one_slot: AppServer, tiny_model: Path
) -> None:
    body = rows(tiny_model)
    with connect(one_slot.port) as sock:
        # the second request arrives behind the first, which holds the one slot
        sock.sendall(http_request("POST", "/predict", body, JSON) * 2)
        first, second = read_responses(sock, 2)
    assert first.startswith(b"HTTP/1.1 200 "), first[:200]
    assert second.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in second.lower()


def vegeta(exe: Path, url: str, body: Path, work: Path, *args: str) -> list[dict]:
    """One vegeta attack; every request's outcome (code, latency in s, error)."""
    targets = work / "targets.txt"
    targets.write_text(f"POST {url}\nContent-Type: application/json\n@{body}\n")
    out = work / "results.bin"
    subprocess.run(
        [str(exe), "attack", f"-targets={targets}", f"-output={out}", "-timeout=10s", *args],
        check=True,
        capture_output=True,
        timeout=60,
    )
    enc = subprocess.run(
        [str(exe), "encode", "-to=json", str(out)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return [
        {"code": h["code"], "latency": h["latency"] / 1e9, "error": h.get("error") or ""}
        for h in map(json.loads, enc.stdout.splitlines())
    ]


def median(values: list[float]) -> float:
    return sorted(values)[len(values) // 2]


def test_goodput_holds_at_twice_capacity_with_fast_refusals_and_no_resets(
    tiny_model: Path, tmp_path: Path
) -> None:
    """Capacity is measured first (a closed loop of 32 clients), then twice that rate is
    offered open loop: the pod keeps serving most of its capacity, the excess gets 503s faster
    than the served requests get answers, and no connection is reset or timed out. Ratios of
    figures from the same run only: the machine is shared. 100-row requests: the model, not
    HTTP, is what runs out (a refusal costs the event loop a fraction of an answer; with 1-row
    requests to this tiny model the load generator and the HTTP parsing alone fill the cores)."""
    exe = tool("vegeta", "setup-bench")
    body = tmp_path / "body.json"
    body.write_bytes(rows(tiny_model, 100))
    with app_server(model_uri=str(tiny_model), wait_ready=True, log_dir=tmp_path) as app:
        url = app.url("/predict")
        vegeta(exe, url, body, tmp_path, "-rate=0", "-max-workers=32", "-duration=1s")  # warm
        seconds = 3.0
        closed = vegeta(
            exe, url, body, tmp_path, "-rate=0", "-max-workers=32", f"-duration={seconds:g}s"
        )
        capacity = sum(h["code"] == 200 for h in closed) / seconds
        assert capacity > 0
        rate = int(2 * capacity)
        with probes(app).running() as watch:
            hits = vegeta(exe, url, body, tmp_path, f"-rate={rate}/1s", f"-duration={seconds:g}s")
        watch.check()
        # every 503 is counted: a request refused by the limit, or a connection turned away at
        # the connection cap (vegeta opens more as the load grows)
        counted = shed_count(app) + closed_count(app, "over_capacity")
    served = [h for h in hits if h["code"] == 200]
    refused = [h for h in hits if h["code"] == 503]
    failed = [h for h in hits if h["code"] not in (200, 503)]
    goodput = len(served) / seconds
    summary = (
        f"capacity {capacity:.0f}/s, offered {rate}/s: goodput {goodput:.0f}/s, "
        f"{len(refused)} refused, {len(failed)} failed {[h['error'] for h in failed[:3]]}"
    )
    resets = [h for h in failed if "reset" in h["error"]]
    assert not resets, summary
    # no timeouts: all but a few requests got an answer (a client may still write on a
    # connection the server has closed, e.g. one turned away at the connection cap)
    assert len(failed) <= 0.01 * len(hits), summary
    assert refused, summary  # twice the capacity cannot all be served
    assert counted >= len(refused), (counted, summary)
    # A collapse leaves a few percent of the capacity (every request waits until its client
    # gives up); 40 % is a floor that a shared, busy machine still clears (100 % when quiet).
    assert goodput >= 0.4 * capacity, summary
    # refusals are cheap: faster than the answers of the requests that were served
    assert median([h["latency"] for h in refused]) < median([h["latency"] for h in served])
