"""No work that grows with a body runs on the event loop, and every CSV row is checked.

A 30-column CSV header with one row of 10,000 fields froze the event loop for 11.8 s (100,000
fields: no answer in a minute, 1.7 GB): only the header's width was checked, and the CSV was
parsed on the loop. A wave of 1,000-row requests pushed `/health` to 4.2 s and one-row
requests to 9.4 s; scrapers of `/metrics` pushed one-row p50 from 2 to 250 ms. Now CSV and
MLflow's parsing, large bodies, large answers and `/metrics` run on a thread of their own,
every CSV record is checked before pandas sees it, and large requests take turns with small
ones on the inference thread.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from support.app_server import AppServer, app_server
from support.attacks import flood, http_request
from support.sklearn_model import save_model

from .conftest import probes, warm_up

pytestmark = pytest.mark.adversarial

FEATURES = 30  # as wide as the demo model: a 1,000-row body is ~700 KB


@pytest.fixture(scope="module")
def wide_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("bodies") / "model"
    return save_model(path, n_features=FEATURES, estimator="hgb")


@pytest.fixture(scope="module")
def app(wide_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    with app_server(
        model_uri=str(wide_model),
        wait_ready=True,
        log_dir=tmp_path_factory.mktemp("bodies-app"),
    ) as server:
        warm_up(server, wide_model)
        yield server


def columns_and_row(model_dir: Path) -> tuple[list[str], list[float]]:
    example = json.loads((model_dir / "input_example.json").read_text())
    return example["columns"], example["data"][0]


def post_csv(app: AppServer, text: str) -> httpx.Response:
    return httpx.post(
        app.url("/invocations"), content=text, headers={"content-type": "text/csv"}, timeout=60
    )


@pytest.mark.parametrize("fields", [10_000, 100_000])
def test_a_wide_csv_row_is_refused_at_once(app: AppServer, wide_model: Path, fields: int) -> None:
    columns, _ = columns_and_row(wide_model)
    text = ",".join(columns) + "\n" + ",".join(["1.0"] * fields) + "\n"
    with probes(app).running() as watch:
        r = post_csv(app, text)
    assert r.status_code == 400, r.text[:300]
    assert r.elapsed.total_seconds() < 2.0, r.elapsed
    watch.check()


def test_a_quoted_newline_is_not_a_row(app: AppServer, wide_model: Path) -> None:
    """600 rows whose ignored `note` column holds a line break: 1,201 lines, 600 rows, under
    MAX_BATCH_ROWS (1,000). Counting lines answered 413."""
    columns, row = columns_and_row(wide_model)
    line = ",".join(map(str, row)) + ',"two\nlines"\n'
    r = post_csv(app, ",".join(columns) + ",note\n" + line * 600)
    assert r.status_code == 200, r.text[:300]
    assert len(r.json()["predictions"]) == 600


def test_one_row_requests_and_probes_ride_out_a_flood_of_large_ones(
    app: AppServer, wide_model: Path
) -> None:
    """100 clients sending 1,000-row predictions, 4 scraping the main port's `/metrics`, 5
    sending one row: one-row requests wait for at most one large request on the inference
    thread, not for the whole queue; the probes do not wait at all. More concurrent work than
    the admission limit is refused at once (503), never queued."""
    columns, row = columns_and_row(wide_model)
    json_type = {"Content-Type": "application/json"}

    def predict(rows: int) -> bytes:
        body = json.dumps({"instances": [dict(zip(columns, row, strict=True))] * rows})
        return http_request("POST", "/predict", body.encode(), json_type)

    clients = {
        "large": (100, predict(1000)),
        "scrape": (4, http_request("GET", "/metrics")),
        "small": (5, predict(1)),
    }
    with probes(app).running() as watch:
        result = flood(app.port, clients, seconds=10)
    watch.check()
    small = result.summary("small")
    assert result.statuses.keys() <= {200, 503}, result.statuses
    assert result.label_statuses["scrape"].keys() == {200}, result.label_statuses
    assert result.label_statuses["small"][200] >= 50, (small, result.label_statuses)
    # Before: one-row p50 11 s, /health 1.2 s (the probe timeout) with 500 large clients.
    assert small["p99_ms"] < 2000, (small, result.summary("large"), watch.summary())
    assert watch.summary()["p50_ms"] < 100, watch.summary()
