"""No client can starve the kubelet's probes or Prometheus' scrapes.

The probes used to share the main listener, its connection cap and its event loop with every
client. At the cap, a flood of predictions, slow bodies or slow readers made `/health` answer
503 "too many connections" or time out: 38 of 46 probes failed under a 512-connection flood, 50
of 65 under 540 slow bodies (a kubelet restart loop). The probe listener (PROBE_PORT) has its
own thread, loop and connection budget: under each attack at the connection cap, every probe
answers 200 within a second, and the process's memory stays near idle and returns to it.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from support.app_server import AppServer, app_server
from support.attacks import (
    RssWatch,
    flood,
    http_request,
    open_sockets,
    trickle,
)

from .conftest import closed_count, probes, warm_up

pytestmark = pytest.mark.adversarial

CAP = 200
ATTACKERS = CAP + 50
SECONDS = 6.0
WRITE_TIMEOUT = 2.0
# "Within a few tens of MB of idle": what one attack may add to the process at its peak, and
# what may stay once it is over.
PEAK_MIB, LEFT_MIB = 48, 16


@pytest.fixture(scope="module")
def app(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    with app_server(
        model_uri=str(tiny_model),
        wait_ready=True,
        log_dir=tmp_path_factory.mktemp("probes"),
        MAX_CONNECTIONS=CAP,
        RESPONSE_WRITE_TIMEOUT_SECONDS=WRITE_TIMEOUT,
    ) as server:
        warm_up(server, tiny_model)
        yield server


def one_row(tiny_model: Path) -> bytes:
    example = json.loads((tiny_model / "input_example.json").read_text())
    row = dict(zip(example["columns"], example["data"][0], strict=True))
    body = json.dumps({"instances": [row]}).encode()
    return http_request("POST", "/predict", body, {"Content-Type": "application/json"})


def prediction_flood(app: AppServer, tiny_model: Path) -> None:
    """ATTACKERS keep-alive clients sending one-row predictions as fast as answered."""
    flood(app.port, {"flood": (ATTACKERS, one_row(tiny_model))}, SECONDS)


def slowloris(app: AppServer, _: Path) -> None:
    """Request headers, one byte a second on every connection."""
    header = b"GET /health HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100
    with open_sockets(app.port, ATTACKERS) as socks, trickle(socks, header, interval=1.0):
        time.sleep(SECONDS)


def slow_readers(app: AppServer, _: Path) -> None:
    """Four pipelined requests for the OpenAPI document per connection, never read."""
    request = http_request("GET", "/openapi.json") * 4
    with open_sockets(app.port, ATTACKERS, rcvbuf=4096) as socks:
        for s in socks:
            with contextlib.suppress(OSError):
                s.sendall(request)
        time.sleep(SECONDS)


def slow_bodies(app: AppServer, _: Path) -> None:
    """Prediction bodies, one byte every 2 s on every connection."""
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
    with open_sockets(app.port, ATTACKERS) as socks:
        for s in socks:
            with contextlib.suppress(OSError):
                s.sendall(head + b"Content-Length: 1000\r\n\r\n")
        with trickle(socks, b"{" + b" " * 999, interval=2.0):
            time.sleep(SECONDS)


ATTACKS: dict[str, Callable[[AppServer, Path], None]] = {
    "prediction-flood": prediction_flood,
    "slowloris": slowloris,
    "slow-read": slow_readers,
    "slow-body": slow_bodies,
}


@pytest.mark.parametrize("attack", list(ATTACKS))
def test_probes_answer_within_a_second_at_the_connection_cap(
    app: AppServer, tiny_model: Path, attack: str
) -> None:
    with RssWatch(app.process.pid).running() as rss, probes(app).running() as watch:
        ATTACKS[attack](app, tiny_model)
    watch.check()
    settled = rss.settled_kib(within=10, tolerance_kib=LEFT_MIB * 1024)
    figures = rss.summary(settled) | watch.summary()
    assert rss.peak_kib - rss.idle_kib < PEAK_MIB * 1024, figures
    assert settled - rss.idle_kib < LEFT_MIB * 1024, figures


def test_slow_readers_lose_their_slots_at_the_write_deadline(app: AppServer) -> None:
    """A client that does not take its answers used to keep its connection (and its unsent
    answer) until it left: 600 of them locked every new client out. Past
    RESPONSE_WRITE_TIMEOUT_SECONDS the connection is aborted and its slot freed."""
    before = closed_count(app, "write_timeout")
    request = http_request("GET", "/openapi.json") * 8
    with open_sockets(app.port, CAP, rcvbuf=4096) as socks:
        for s in socks:
            with contextlib.suppress(OSError):
                s.sendall(request)
        time.sleep(WRITE_TIMEOUT + 2 * 0.5 + 1)  # the deadline, two sweeps, a margin
        aborted = closed_count(app, "write_timeout") - before
        # every slot is free again: a new client is served, not turned away
        assert httpx.get(app.url("/health"), timeout=5).status_code == 200
    assert aborted >= CAP // 2, aborted
