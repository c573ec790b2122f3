"""The payload log on the platform's own S3 (MinIO): the rows in the bucket are exactly the rows
the app served and counted as written, MinIO stopped in the middle of the traffic costs no
request (the rows it could not take are counted as dropped), and a retraining run reads the
logged rows back, joined with the labels `/feedback` took."""

from __future__ import annotations

import gzip
import json
import secrets
from pathlib import Path

import httpx
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from support.app_server import AppServer, app_server
from support.mlflow import RegisteredModel
from support.mlflow_platform import BUCKET, Minio, PlatformServer
from support.poll import wait_until
from support.rows import from_app

from .conftest import train_on

pytestmark = [pytest.mark.platform, pytest.mark.timeout(900)]

SECRET = "platform-test-signing-secret-0123456789"


def counters(app: AppServer, http: httpx.Client) -> dict[tuple[str, ...], float]:
    """(sample name, label values...) -> value of every payload-log sample."""
    out = {}
    for family in text_string_to_metric_families(http.get(app.url("/metrics")).text):
        if family.name.startswith("mlservice_payload_log"):
            for s in family.samples:
                out[(s.name, *s.labels.values())] = s.value
    return out


def dropped(c: dict, kind: str) -> dict[str, float]:
    """reason -> rows of `kind` dropped for it."""
    name = "mlservice_payload_log_dropped_rows_total"
    return {k[-1]: v for k, v in c.items() if k[:2] == (name, kind) and v}


def accounted(app: AppServer, http: httpx.Client, kind: str) -> float:
    """Rows of `kind` the log has settled: written or dropped (queued ones are neither)."""
    c = counters(app, http)
    written = c.get(("mlservice_payload_log_rows_total", kind), 0.0)
    return written + sum(dropped(c, kind).values())


def bucket_records(minio: Minio, prefix: str, kind: str) -> list[dict]:
    client = minio.client()
    keys = []
    for page in client.get_paginator("list_objects_v2").paginate(
        Bucket=BUCKET, Prefix=f"{prefix}/{kind}/"
    ):
        keys += [o["Key"] for o in page.get("Contents", [])]
    records = []
    for key in sorted(keys):
        body = gzip.decompress(client.get_object(Bucket=BUCKET, Key=key)["Body"].read())
        records += [json.loads(line) for line in body.splitlines() if line.strip()]
    return records


def test_the_bucket_holds_exactly_the_rows_served_through_an_outage(
    minio: Minio,
    direct_server: PlatformServer,
    direct_model: RegisteredModel,
    http: httpx.Client,
    logs_dir: Path,
):
    prefix = f"payload-log-{secrets.token_hex(4)}"
    uri = f"s3://{BUCKET}/{prefix}"
    rng = np.random.default_rng(1)
    served: dict[str, dict] = {}  # prediction ID -> what the client sent and got
    labels: dict[str, str] = {}

    def traffic(app: AppServer, requests: int) -> None:
        base = from_app(app, 1, http)[0]
        for i in range(requests):
            rows = [{k: v * float(rng.uniform(0.9, 1.1)) for k, v in base.items()}
                    for _ in range(int(rng.integers(1, 8)))]  # fmt: skip
            rid = f"req-{len(served)}-{i}"
            r = http.post(app.url("/predict"), json={"instances": rows},
                          headers={"x-request-id": rid})  # fmt: skip
            assert r.status_code == 200, r.text  # never a failed request, whatever S3 does
            for row, p in zip(rows, r.json()["predictions"], strict=True):
                served[p["prediction_id"]] = {"request_id": rid, "features": row, **p}

    with app_server(
        model_uri=direct_model.model_uri,
        tracking_uri=direct_server.tracking_uri,
        wait_ready=True,
        log_dir=logs_dir,
        PREDICTION_SIGNING_SECRET=SECRET,
        PAYLOAD_LOG_URI=uri,
        PAYLOAD_LOG_FLUSH_SECONDS=0.5,
        PAYLOAD_LOG_BATCH_ROWS=100,
        PAYLOAD_LOG_QUEUE_ROWS=400,
        **direct_server.client_env,
    ) as app:

        def rows_accounted(timeout: float, what: str) -> None:
            """Every row served so far is written or counted as dropped."""
            wait_until(lambda: accounted(app, http, "predictions") == len(served), timeout, what,
                       interval=0.5)  # fmt: skip

        traffic(app, 60)
        rows_accounted(60, "the first rows written")
        minio.stop()
        try:
            traffic(app, 150)  # the store is gone: requests go on, rows are dropped and counted
            rows_accounted(120, "every row written or dropped")
        finally:
            minio.start()
        traffic(app, 60)
        rows_accounted(60, "the rest written")
        # labels for a third of the rows, the ones of the outage included, 50 at a time (the
        # small queue of this test holds 400 rows)
        for pid in list(served)[::3]:
            labels[pid] = "malignant" if served[pid]["class"] == "benign" else "benign"
        items = [{"prediction_id": pid, "label": label} for pid, label in labels.items()]
        for start in range(0, len(items), 50):
            r = http.post(app.url("/feedback"), json={"feedback": items[start : start + 50]})
            assert r.json() == {"accepted": len(items[start : start + 50]), "duplicates": 0}
        wait_until(
            lambda: accounted(app, http, "labels") == len(labels),
            60,
            "the labels written",
            interval=0.5,
        )
        final = counters(app, http)
        log_text = app.log_tail(1_000_000)

    written = final[("mlservice_payload_log_rows_total", "predictions")]
    lost = dropped(final, "predictions")
    assert lost, "the outage dropped nothing: MinIO was not really down"
    assert written + sum(lost.values()) == len(served)
    rows = bucket_records(minio, prefix, "predictions")
    assert len(rows) == written == len({r["prediction_id"] for r in rows})  # counter = objects
    for row in rows:
        sent = served[row["prediction_id"]]  # only rows that were served, each exactly as served
        assert row["request_id"] == sent["request_id"] and row["prediction"] == sent["class"]
        assert row["features"] == sent["features"] and row["probabilities"] == sent["probabilities"]
        assert row["model"] == {"name": direct_model.name, "version": direct_model.version}
    assert final[("mlservice_payload_log_rows_total", "labels")] == len(labels)
    logged_labels = bucket_records(minio, prefix, "labels")
    assert {r["prediction_id"]: r["label"] for r in logged_labels} == labels
    # what the payload log holds never reaches the app's log
    assert next(iter(served)) not in log_text and "req-0-0" not in log_text
    assert "payload log:" in log_text  # the failed writes were logged, by type

    # a retraining run on the platform reads the logged rows back, joined with their labels
    joined = sum(1 for r in rows if r["prediction_id"] in labels)
    assert 0 < joined < len(labels)  # some labelled rows were lost in the outage
    print(f"served {len(served)} rows: {written:.0f} written, dropped {lost}; "
          f"{len(labels)} labels, {joined} joined with a logged row")  # fmt: skip
    model = train_on(direct_server, logs_dir, "--served-data", uri)
    assert model.result["served"]["rows"] == joined
    assert model.result["served"]["logged_predictions"] == written
    assert model.result["metrics"]["served_rows"] == joined
