"""Error amplification: the work any body can cause is bounded by its size.

Built before it is cut to 20, an error list holds one object per missing field per row: 90 KB of
`{}` rows then take 3.3 s and 1.5 GB, 900 KB never finish. 1 MiB of any shape must be answered
(4xx) in well under a second of work, without the process growing, while /health keeps
answering.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.app_server import AppServer, app_server
from support.attacks import lasting_growth_kib, rss_kib

from .conftest import main_port_health, warm_up

MIB = 1024 * 1024


def _fill(prefix: str, item: str, suffix: str) -> bytes:
    """`prefix item,item,... suffix` just under 1 MiB."""
    n = (MIB - len(prefix) - len(suffix) - 64) // (len(item) + 1)
    return (prefix + ",".join([item] * n) + suffix).encode()


def _wide_row(key: str) -> bytes:
    """One row with as many distinct keys as fit."""
    keys = ",".join(f'"k{i}":1' for i in range(MIB // 11))
    return (f'{{"{key}": [{{' + keys[: MIB - 64].rsplit(",", 1)[0] + "}]}").encode()


BODIES = {
    "empty-rows": lambda key: _fill(f'{{"{key}": [', "{}", "]}"),
    "empty-lists": lambda key: _fill(f'{{"{key}": [', "[]", "]}"),
    "one-wide-row": lambda key: _wide_row(key),
    "deep-nesting": lambda key: f'{{"{key}": {"[" * 500_000}{"]" * 500_000}}}'.encode(),
    "many-numbers": lambda key: _fill(f'{{"{key}": [[', "1", "]]}"),
    "long-strings": lambda key: _fill(f'{{"{key}": [{{"a": "', "x" * 1000, '"}]}'),
}
ENDPOINTS = {"/predict": "instances", "/invocations": "dataframe_records"}


@pytest.fixture(scope="module")
def app(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    with app_server(
        model_uri=str(tiny_model),
        wait_ready=True,
        log_dir=tmp_path_factory.mktemp("amplification"),
        MAX_REQUEST_BYTES=MIB + 1024,
    ) as server:
        warm_up(server, tiny_model)
        yield server


def assert_cheap(app: AppServer, path: str, body: bytes, content_type: str, label: str) -> None:
    """Three posts of `body`: each a quick 4xx, /health answering meanwhile, no lasting growth."""
    rss_before, peak_before = rss_kib(app.process.pid)
    with main_port_health(app).running() as health, httpx.Client(timeout=30) as http:
        for _ in range(3):  # repeated: what grows per request shows up
            started = time.monotonic()
            r = http.post(app.url(path), content=body, headers={"content-type": content_type})
            took = time.monotonic() - started
            assert 400 <= r.status_code < 500, (r.status_code, r.text[:300])
            assert took < 2.0, f"{label} on {path} took {took:.2f}s"
    health.check()
    _, peak_after = rss_kib(app.process.pid)
    # peak: the transient cost of one request; current: what stays
    assert peak_after - peak_before < 64 * 1024, (label, peak_before, peak_after)
    growth = lasting_growth_kib(app.process.pid, rss_before, 16 * 1024)
    assert growth < 16 * 1024, (label, rss_before, growth)
    assert "Traceback" not in app.log_tail(20_000)


@pytest.mark.parametrize("shape", list(BODIES))
@pytest.mark.parametrize("path", list(ENDPOINTS))
def test_one_mib_of_any_json_is_cheap(app: AppServer, path: str, shape: str) -> None:
    body = BODIES[shape](ENDPOINTS[path])
    assert MIB // 2 < len(body) <= MIB
    assert_cheap(app, path, body, "application/json", shape)


CSV_BODIES = {
    "wide-header": lambda: _fill("", "c", "\n1\n"),
    "many-rows": lambda: _fill("a\n", "1\n1", "\n"),
    "one-huge-cell": lambda: _fill('a\n"', "x", '"\n'),
}


@pytest.mark.parametrize("shape", list(CSV_BODIES))
def test_one_mib_of_csv_is_cheap(app: AppServer, shape: str) -> None:
    assert_cheap(app, "/invocations", CSV_BODIES[shape](), "text/csv", shape)
