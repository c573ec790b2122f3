"""Running out of file descriptors is survivable.

1,100 connections the moment `/ready` turned 200, under a 1,024 open-file limit: asyncio
accepted up to its backlog (2,048) in one go before the 512-connection cap could close any,
`accept()` failed with EMFILE (a traceback each time), and the MLflow warm-up thread died of
the same error; from then on every `/invocations` request off the fast path answered 500 for
good while `/ready` said 200. Now the connection cap, the accept burst and the probe
listener's budget fit under the limit together, accept errors are one log line, and a
background load that keeps failing turns readiness and liveness to 503.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
import pytest
from support.app_server import app_server
from support.attacks import open_sockets

pytestmark = pytest.mark.adversarial


def test_a_connection_flood_at_ready_time_breaks_nothing(tiny_model: Path, tmp_path: Path) -> None:
    example = json.loads((tiny_model / "input_example.json").read_text())
    csv = ",".join(example["columns"]) + "\n" + ",".join(map(str, example["data"][0])) + "\n"
    with app_server(model_uri=str(tiny_model), log_dir=tmp_path, max_open_files=1024) as app:
        deadline = time.monotonic() + 120
        while httpx.get(app.url("/ready"), timeout=5).status_code != 200:
            assert time.monotonic() < deadline, app.log_tail()
            time.sleep(0.05)
        with open_sockets(app.port, 1100, timeout=2):  # while MLflow's machinery loads
            time.sleep(3)
        answers = [
            httpx.post(
                app.url("/invocations"), content=csv, headers={"content-type": "text/csv"}
            ).status_code
            for _ in range(3)
        ]
        ready = httpx.get(app.probe_url("/ready"), timeout=5).status_code
        health = httpx.get(app.probe_url("/health"), timeout=5).status_code
        log = app.log_tail(1_000_000)
    assert answers == [200, 200, 200], (answers, log[-3000:])
    assert (ready, health) == (200, 200)
    assert "Traceback" not in log, log[-3000:]
    assert "Too many open files" not in log and "EMFILE" not in log, log[-3000:]
