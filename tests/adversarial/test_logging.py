"""Every line the process writes passes the redaction and the rate limit; expected client
events log no traceback; signals that are not SIGTERM do not stop the pod.

Extra column names and `params` keys on `/invocations` made MLflow log what the client sent in
its own format, past both: ~1 MB requests wrote 305 MB of log in 20 s, a credential-shaped URL
sent as a key verbatim. The access log wrote 10 lines a minute (the limit keyed on uvicorn's
one template); every 408 logged a RuntimeError traceback; SIGHUP killed the process at once.
"""

from __future__ import annotations

import json
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.app_server import AppServer, app_server
from support.attacks import flood, http_request

from .conftest import read_until_close, warm_up

pytestmark = pytest.mark.adversarial

SECRET = "sentinel-password-7f3a"
BODY_TIMEOUT = 1.0


@pytest.fixture(scope="module")
def app(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    with app_server(
        model_uri=str(tiny_model),
        wait_ready=True,
        log_dir=tmp_path_factory.mktemp("logging"),
        ACCESS_LOG="true",
        REQUEST_BODY_TIMEOUT_SECONDS=BODY_TIMEOUT,
    ) as server:
        warm_up(server, tiny_model)
        yield server


def new_log(app: AppServer, since: int) -> bytes:
    return app.log_path.read_bytes()[since:]


def test_what_mlflow_would_log_of_a_request_is_bounded_and_redacted(
    app: AppServer, tiny_model: Path
) -> None:
    example = json.loads((tiny_model / "input_example.json").read_text())
    url = f"http://user{{}}:{SECRET}@host.example/" + "x" * 7000
    extra = [url.format(i) for i in range(60)]
    split = {
        "columns": example["columns"] + extra,
        "data": [example["data"][0] + [1.0] * len(extra)],
    }
    params = {url.format(i): 1 for i in range(60, 140)}
    body = json.dumps({"dataframe_split": split, "params": params}).encode()
    request = http_request("POST", "/invocations", body, {"Content-Type": "application/json"})
    since = app.log_path.stat().st_size
    result = flood(app.port, {"keys": (4, request)}, seconds=4)
    time.sleep(1)
    log = new_log(app, since)
    assert result.statuses.keys() == {200}, result.statuses
    assert sum(result.statuses.values()) >= 20
    assert SECRET.encode() not in log
    # the access log's lines, not ~1 MB per request
    assert len(log) < 2 * 1024 * 1024, len(log)


def test_the_access_log_is_limited_by_content_not_by_template(app: AppServer) -> None:
    """Distinct requests each get their line; one request repeated is summarised."""
    since = app.log_path.stat().st_size
    with httpx.Client() as http:  # one keep-alive connection: the same client address
        for i in range(40):
            http.get(app.url(f"/nowhere/{i}"))
        for _ in range(40):
            http.get(app.url("/health"))
        time.sleep(0.5)
    lines = new_log(app, since).decode().splitlines()
    access = [line for line in lines if "uvicorn.access" in line]
    assert sum("/nowhere/" in line for line in access) == 40, access[:5]
    assert 1 <= sum("GET /health" in line for line in access) <= 10


def test_a_late_body_gets_408_and_logs_no_traceback(app: AppServer) -> None:
    since = app.log_path.stat().st_size
    with socket.create_connection(("127.0.0.1", app.port), timeout=10) as sock:
        sock.sendall(
            b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"instances": ['
        )
        received, _ = read_until_close(sock, timeout=BODY_TIMEOUT + 5)
    time.sleep(0.5)
    assert received.startswith(b"HTTP/1.1 408"), received[:200]
    assert b"Traceback" not in new_log(app, since)


def test_sighup_is_logged_and_ignored(app: AppServer) -> None:
    since = app.log_path.stat().st_size
    app.process.send_signal(signal.SIGHUP)
    time.sleep(0.5)
    assert app.process.poll() is None, "SIGHUP stopped the server"
    assert httpx.get(app.url("/health"), timeout=5).status_code == 200
    assert b"SIGHUP ignored" in new_log(app, since)
