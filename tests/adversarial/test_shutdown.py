"""SIGTERM under keep-alive load: no client may lose a request it sent.

A keep-alive client reuses its pooled connection until told otherwise: were the connection kept
alive during the drain, every such client would lose the request it sent as the listener closes
(50 resets with 50 clients). Every response after SIGTERM says `Connection: close`: the signal a
client (or a load balancer's connection pool) needs to stop reusing this pod, as the clients
below do.
Uploads still running when the grace period ends get a JSON 503 with Retry-After instead of a
plain-text 500.
"""

from __future__ import annotations

import json
import random
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from support.app_server import app_server
from support.attacks import http_request

from .conftest import read_until_close

CLIENTS = 50
DRAIN = 3.0


def test_keepalive_clients_lose_nothing(tiny_model: Path, tmp_path: Path) -> None:
    row = json.loads((tiny_model / "input_example.json").read_text())
    split = row.get("dataframe_split", row)
    instance = dict(zip(split["columns"], split["data"][0], strict=True))
    results: list[tuple[float, int, str]] = []  # (time, status, connection header)
    failures: list[str] = []
    told_to_go: list[float] = []
    lock = threading.Lock()
    stop = threading.Event()
    with app_server(
        model_uri=str(tiny_model),
        wait_ready=True,
        log_dir=tmp_path,
        SHUTDOWN_DRAIN_SECONDS=DRAIN,
        SHUTDOWN_GRACE_SECONDS=10,
    ) as app:

        def client() -> None:
            with httpx.Client(timeout=30) as http:  # one pooled keep-alive connection
                while not stop.is_set():
                    try:
                        r = http.post(app.url("/predict"), json={"instances": [instance]})
                    except httpx.ConnectError:
                        return  # the listener is gone: refused before anything was sent
                    except httpx.HTTPError as exc:
                        with lock:
                            failures.append(f"{type(exc).__name__}: {exc}")
                        return
                    with lock:
                        results.append((time.monotonic(), r.status_code,
                                        r.headers.get("connection", "")))  # fmt: skip
                    if r.headers.get("connection") == "close":
                        with lock:
                            told_to_go.append(time.monotonic())
                        return  # told to go: a pool reconnects elsewhere (here: stops)
                    time.sleep(0.005)

        threads = [threading.Thread(target=client) for _ in range(CLIENTS)]
        for t in threads:
            t.start()
        while len(results) < 200:
            time.sleep(0.01)
        signalled = time.monotonic()
        app.process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=60)
        stop.set()
        code = app.process.wait(timeout=60)
    assert not failures, f"{len(failures)} requests lost: {failures[:5]}"
    assert all(status == 200 for _, status, _ in results), {s for _, s, _ in results}
    # Half a second for the loop to handle SIGTERM and for 50 client threads to record what they
    # got (under load that jitter passed 50 ms); the drain lasts DRAIN s, so a server that kept
    # connections open would still show hundreds of keep-alive answers after this point.
    after = [conn for at, _, conn in results if at > signalled + 0.5]
    assert all(conn == "close" for conn in after), set(after)
    # every client was answered, and told to go, before the listener closed
    assert len(told_to_go) == CLIENTS, len(told_to_go)
    assert max(told_to_go) < signalled + DRAIN
    assert code == 0, app.log_tail()


@pytest.mark.parametrize("pause", [0.05, 0.005], ids=["pause-50ms", "pause-5ms"])
def test_reconnecting_clients_get_an_answer_to_every_request_they_sent(
    tiny_model: Path, tmp_path: Path, pause: float
) -> None:
    """Clients that open a connection per request (and wait for it to end) keep sending
    through SIGTERM until the listener refuses them; like a busy client process, each takes a
    moment (up to `pause`) between its connection opening and its request going out. Such a
    connection used to be closed under its client when the drain ended, and connections still
    in the listen queue were reset: 35 of their requests got an EOF or a reset instead of an
    answer. Clients quick to reconnect (5 ms) meet the close of the listener most often: one in
    seven shutdowns reset a request queued after the last accept() until the listener refused
    SYNs first."""
    row = json.loads((tiny_model / "input_example.json").read_text())
    body = json.dumps({"instances": [dict(zip(row["columns"], row["data"][0], strict=True))]})
    request = http_request("POST", "/predict", body.encode(), {"Content-Type": "application/json"})
    answered: list[bytes] = []
    failures: list[str] = []
    lock = threading.Lock()
    with app_server(
        model_uri=str(tiny_model),
        wait_ready=True,
        log_dir=tmp_path,
        SHUTDOWN_DRAIN_SECONDS=DRAIN,
        SHUTDOWN_GRACE_SECONDS=10,
        KEEPALIVE_TIMEOUT_SECONDS=0.5,
    ) as app:

        def client(seed: int) -> None:
            rng = random.Random(seed)
            while True:
                try:
                    sock = socket.create_connection(("127.0.0.1", app.port), timeout=10)
                except OSError:
                    return  # refused: the listener is gone, nothing was sent
                with sock:
                    time.sleep(rng.uniform(0, pause))
                    try:
                        sock.sendall(request)
                        answer, _ = read_until_close(sock, timeout=10)
                    except OSError as exc:
                        answer = f"{type(exc).__name__}".encode()
                with lock:
                    if answer.startswith(b"HTTP/1.1 "):
                        answered.append(answer[9:12])
                    else:
                        failures.append(answer[:80].decode(errors="replace") or "EOF")

        threads = [threading.Thread(target=client, args=(i,)) for i in range(CLIENTS)]
        for t in threads:
            t.start()
        while len(answered) < 200:
            time.sleep(0.01)
        app.process.send_signal(signal.SIGTERM)
        for t in threads:
            t.join(timeout=60)
        code = app.process.wait(timeout=60)
    assert not failures, f"{len(failures)} requests without an answer: {failures[:5]}"
    assert set(answered) == {b"200"}, set(answered)
    assert code == 0


def test_upload_cut_by_the_grace_period_gets_json_503(tiny_model: Path, tmp_path: Path) -> None:
    with app_server(
        model_uri=str(tiny_model),
        wait_ready=True,
        log_dir=tmp_path,
        SHUTDOWN_DRAIN_SECONDS=0,
        SHUTDOWN_GRACE_SECONDS=1,
        REQUEST_BODY_TIMEOUT_SECONDS=60,
    ) as app:
        with socket.create_connection(("127.0.0.1", app.port), timeout=10) as sock:
            sock.sendall(
                b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b'Content-Length: 1000\r\n\r\n{"instances": ['
            )
            time.sleep(0.3)
            app.process.send_signal(signal.SIGTERM)
            received, _ = read_until_close(sock, timeout=15)
        code = app.process.wait(timeout=30)
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 503"), received[:300]
    assert b"retry-after" in head.lower()
    assert b"application/json" in head.lower()
    assert json.loads(body) == {"detail": "shutting down"}
    assert code == 0
