"""Prediction IDs, `/feedback` and the payload log, in process: the token's rules, the
endpoint's contract, and that without a signing key nothing of it exists."""

from __future__ import annotations

import base64
import gzip
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pydantic_core
import pytest
from fastapi.testclient import TestClient
from ml_service.payload_format import labelled_rows
from ml_service.serving.app import create_app
from ml_service.serving.feedback import MAX_ID_HEADER_BYTES, RecentIds
from ml_service.serving.metrics import new_registry
from ml_service.serving.prediction_ids import (
    CLOCK_SKEW_SECONDS,
    Refusal,
    Signer,
    TokenError,
    request_id,
)
from ml_service.serving.settings import Settings
from support.sklearn_model import save_model

SECRET = "unit-test-signing-secret-0123456789"
ROWS = [
    {"feature_0": 0.5, "feature_1": -1.0, "feature_2": 2.0, "feature_3": 0.25},
    {"feature_0": -2.0, "feature_1": 1.5, "feature_2": 0.0, "feature_3": -3.0},
    {"feature_0": 1.25, "feature_1": 0.5, "feature_2": -1.0, "feature_3": 4.0},
]
CLASSES = ("benign", "malignant")


def signer(secret: str = SECRET, model: str = "tiny", ttl: int = 3600, previous=None) -> Signer:
    return Signer(secret.encode(), model, ttl, previous.encode() if previous else None)


def tokens(s: Signer, n: int = 3, version: str = "4", at: float | None = None) -> list[str]:
    proba = np.array([[0.2, 0.8], [0.95, 0.05], [0.5, 0.5]] * n)[:n]
    labels = [CLASSES[int(np.argmax(p))] for p in proba]
    tails = s.tail(version, CLASSES)
    assert tails is not None
    return s.issue(tails, labels, proba.tolist(), time.time() if at is None else at)


def refusal(s: Signer, token, now: float | None = None) -> Refusal | None:
    try:
        s.verify(token, time.time() if now is None else now)
    except TokenError as exc:
        return exc.reason
    return None


# ---------------------------------------------------------------- the token


def test_a_token_carries_version_class_score_and_time() -> None:
    s = signer()
    now = time.time()
    ids = tokens(s, 3, at=now)
    claims = [s.verify(t, now + 10) for t in ids]
    assert [c.model_version for c in claims] == ["4"] * 3
    assert [c.predicted for c in claims] == ["malignant", "benign", "benign"]
    assert [c.score for c in claims] == [0.8, 0.95, 0.5]  # on the grid: not rounded past it
    assert all(c.issued_at == int(now) for c in claims)
    assert len({c.nonce for c in claims}) == 3  # every row its own identity
    assert all(len(t) < 80 and t.isascii() and "=" not in t for t in ids), ids


def test_scores_round_up_so_bucket_bounds_hold() -> None:
    s = signer()
    tails = s.tail("4", CLASSES)
    proba = np.array([[0.1, 0.9000001], [0.50001, 0.49999], [0.0, 1.0]])
    ids = s.issue(tails, ["malignant", "benign", "malignant"], proba.tolist(), time.time())
    assert [s.verify(t, time.time()).score for t in ids] == [0.901, 0.501, 1.0]


def test_every_altered_byte_and_every_truncation_is_refused() -> None:
    s = signer()
    (token,) = tokens(s, 1)
    raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
    for i in range(len(raw)):
        for flip in (0x01, 0x80):
            altered = bytearray(raw)
            altered[i] ^= flip
            forged = base64.urlsafe_b64encode(bytes(altered)).rstrip(b"=").decode()
            assert refusal(s, forged) in {Refusal.MALFORMED, Refusal.INVALID_SIGNATURE}, i
    for n in range(len(token)):
        assert refusal(s, token[:n]) is not None, n
    assert refusal(s, token + "A") is not None
    assert refusal(s, token) is None


@pytest.mark.parametrize(
    "other",
    [
        {"secret": "another-deployment-secret-0123456789"},  # a foreign deployment
        {"model": "another-model"},  # another model behind the same secret
    ],
    ids=["other-secret", "other-model"],
)
def test_tokens_of_another_deployment_or_model_are_refused(other: dict) -> None:
    (token,) = tokens(signer(**other), 1)
    assert refusal(signer(), token) is Refusal.INVALID_SIGNATURE


def test_junk_is_malformed_not_an_error() -> None:
    s = signer()
    for junk in ["", "x", "!!!!", "A" * 10_000, "é" * 40, "AAAA" * 20, None, 42]:
        assert refusal(s, junk) in {Refusal.MALFORMED, Refusal.INVALID_SIGNATURE}, junk


def test_lifetime_and_clock_skew() -> None:
    s = signer(ttl=3600)
    now = time.time()
    (token,) = tokens(s, 1, at=now)
    assert refusal(s, token, now + 3599) is None
    assert refusal(s, token, now + 3602) is Refusal.EXPIRED
    assert refusal(s, token, now - CLOCK_SKEW_SECONDS + 2) is None  # a replica running behind
    assert refusal(s, token, now - CLOCK_SKEW_SECONDS - 2) is Refusal.NOT_YET_VALID


def test_a_rotation_keeps_tokens_of_the_previous_secret() -> None:
    old = "the-previous-signing-secret-0123456789"
    (token,) = tokens(signer(secret=old), 1)
    assert refusal(signer(previous=old), token) is None
    assert refusal(signer(), token) is Refusal.INVALID_SIGNATURE


def test_names_too_long_for_a_token_turn_ids_off() -> None:
    s = signer()
    assert s.tail("4", ("x" * 65, "y")) is None
    assert s.tail("v" * 65, CLASSES) is None
    assert s.tail("v" * 64, ("é" * 32, "y")) is not None


def test_request_ids_are_kept_only_when_well_formed() -> None:
    for good in ("abc-1", "0f3c2a9e-8b1d-4c57-9f7e-1f2a3b4c5d6e", "a" * 128, "trace:1@x"):
        assert request_id(good) == good
    for bad in (None, "", "-x", "a" * 129, "a b", "a\r\nX: 1", "<script>", "ä"):
        made = request_id(bad)
        assert made != bad and len(made) == 32 and int(made, 16) >= 0  # 128 random bits


def test_recent_ids_forget_after_the_window_and_stay_bounded() -> None:
    recent = RecentIds(window=10.0, max_ids=100)
    t = recent.started
    assert recent.add(1, t) and not recent.add(1, t + 1)
    assert not recent.add(1, t + 15)  # rotated once: still in the previous generation
    assert recent.add(2, t + 16)
    assert recent.add(1, t + 40)  # two windows later it is forgotten
    for n in range(10_000):
        recent.add(1000 + n, t + 41)
    assert len(recent.current) + len(recent.previous) <= 100


# ---------------------------------------------------------------- the app


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("feedback") / "m")


def start(model_dir: Path, **settings) -> TestClient:
    s = Settings(model_uri=str(model_dir), model_name="tiny", model_version="4", **settings)
    return TestClient(create_app(s, registry=new_registry()))


def ready(client: TestClient) -> TestClient:
    deadline = time.monotonic() + 60
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return client


@pytest.fixture(scope="module")
def on(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    log_dir = tmp_path_factory.mktemp("payload-log")
    with start(
        model_dir,
        prediction_signing_secret=SECRET,
        payload_log_uri=str(log_dir),
        payload_log_flush_seconds=0.1,
        feedback_max_items=50,
    ) as client:
        client.log_dir = log_dir  # type: ignore[attr-defined]
        yield ready(client)


def expected_predict_body(model_dir: Path, rows: list[dict]) -> bytes:
    """Today's `/predict` answer, built from the model itself (same batch, so bit-equal)."""
    import mlflow.sklearn

    est = mlflow.sklearn.load_model(str(model_dir))
    x = np.array([[r[f"feature_{i}"] for i in range(4)] for r in rows])
    proba = est.predict_proba(x)
    classes = [str(c) for c in est.classes_]
    preds = [
        {
            "class": classes[int(np.argmax(p))],
            "probabilities": dict(zip(classes, p.tolist(), strict=True)),
        }
        for p in proba
    ]
    return pydantic_core.to_json({"model": {"name": "tiny", "version": "4"}, "predictions": preds})


def test_without_a_key_every_answer_is_as_before(model_dir: Path) -> None:
    with start(model_dir) as client:
        ready(client)
        r = client.post("/predict", json={"instances": ROWS}, headers={"x-request-id": "abc"})
        assert r.content == expected_predict_body(model_dir, ROWS)
        assert set(r.headers) == {"content-length", "content-type"}, r.headers
        inv = client.post("/invocations", json={"dataframe_records": ROWS})
        assert set(inv.headers) == {"content-length", "content-type"}, inv.headers
        assert inv.json() == {"predictions": [p["class"] for p in r.json()["predictions"]]}
        fb = client.post("/feedback", json={"feedback": [{"prediction_id": "x", "label": "a"}]})
        assert fb.status_code == 404
        metrics = client.get("/metrics").text
        assert "mlservice_feedback" not in metrics and "payload_log" not in metrics
        schema = client.get("/openapi.json").json()
        assert "/feedback" not in schema["paths"]
        assert "request_id" not in json.dumps(schema) and "prediction_id" not in json.dumps(schema)


def test_predict_answers_a_request_id_and_prediction_ids(on: TestClient, model_dir: Path) -> None:
    r = on.post("/predict", json={"instances": ROWS}, headers={"x-request-id": "client-7"})
    body = r.json()
    assert r.headers["x-request-id"] == body["request_id"] == "client-7"
    ids = [p.pop("prediction_id") for p in body["predictions"]]
    assert len(set(ids)) == 3
    # the rest of the answer is today's, key for key and bit for bit
    expected = json.loads(expected_predict_body(model_dir, ROWS))
    assert body.pop("request_id") and body == expected
    made = on.post("/predict", json={"instances": ROWS[:1]}, headers={"x-request-id": "a b"})
    assert made.json()["request_id"] != "a b" and len(made.json()["request_id"]) == 32


def test_invocations_keep_mlflows_body_and_add_headers(on: TestClient) -> None:
    r = on.post("/invocations", json={"dataframe_records": ROWS})
    assert set(r.json()) == {"predictions"} and len(r.json()["predictions"]) == 3
    assert len(r.headers["x-prediction-ids"].split(",")) == 3
    assert r.headers["x-request-id"]
    big = on.post("/invocations", json={"dataframe_records": ROWS * 30})
    assert "x-prediction-ids" not in big.headers  # 90 IDs would not fit a proxy's buffer
    assert len(",".join(["x" * 54] * 90)) > MAX_ID_HEADER_BYTES
    assert big.headers["x-request-id"]


def ids_and_classes(client: TestClient, rows: list[dict]) -> list[tuple[str, str]]:
    r = client.post("/predict", json={"instances": rows})
    return [(p["prediction_id"], p["class"]) for p in r.json()["predictions"]]


def confusion(client: TestClient) -> dict[tuple[str, str], float]:
    from prometheus_client.parser import text_string_to_metric_families

    out = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        if family.name == "mlservice_feedback":
            for s in family.samples:
                if s.labels["model_version"] == "4":
                    out[(s.labels["predicted"], s.labels["actual"])] = s.value
    return out


def test_feedback_counts_each_label_once(on: TestClient) -> None:
    pairs = ids_and_classes(on, ROWS * 4)
    before = confusion(on)
    items = [{"prediction_id": pid, "label": "malignant"} for pid, _ in pairs]
    r = on.post("/feedback", json={"feedback": items})
    assert r.status_code == 200 and r.json() == {"accepted": 12, "duplicates": 0}
    again = on.post("/feedback", json={"feedback": items[:5] + items[:1]})
    assert again.json() == {"accepted": 0, "duplicates": 6}
    after = confusion(on)
    for predicted in CLASSES:
        n = sum(1 for _, c in pairs if c == predicted)
        assert after[(predicted, "malignant")] - before[(predicted, "malignant")] == n
        assert after[(predicted, "benign")] == before[(predicted, "benign")]


def test_a_bad_item_refuses_the_whole_batch_and_echoes_nothing(on: TestClient) -> None:
    pairs = ids_and_classes(on, ROWS)
    forged = pairs[0][0][:-4] + ("AAAA" if not pairs[0][0].endswith("AAAA") else "BBBB")
    secret_ish = "this-value-must-not-come-back-123456"
    items = [
        {"prediction_id": pairs[1][0], "label": "benign"},
        {"prediction_id": forged, "label": "benign"},
        {"prediction_id": secret_ish, "label": "benign"},
        {"prediction_id": pairs[2][0], "label": secret_ish},
    ]
    before = confusion(on)
    r = on.post("/feedback", json={"feedback": items})
    assert r.status_code == 422
    detail = r.json()["detail"]
    assert [(d["loc"], d["type"]) for d in detail] == [
        (["feedback", 1, "prediction_id"], "invalid_signature"),
        (["feedback", 2, "prediction_id"], "malformed"),
        (["feedback", 3, "label"], "unknown_label"),
    ]
    assert forged not in r.text and secret_ish not in r.text
    assert confusion(on) == before  # the valid first item was not counted either
    # the same item alone is fine afterwards
    ok = on.post("/feedback", json={"feedback": items[:1]})
    assert ok.json() == {"accepted": 1, "duplicates": 0}


@pytest.mark.parametrize(
    "body, status",
    [
        (b"{not json", 422),
        (b'{"feedback": []}', 422),
        (b'{"feedback": [{"prediction_id": "x"}]}', 422),
        (b'{"feedback": [{"prediction_id": 1, "label": "benign"}]}', 422),
        (b'{"feedback": [], "extra": 1}', 422),
        (json.dumps({"feedback": [{"prediction_id": "x", "label": "y"}] * 51}).encode(), 413),
    ],
    ids=["not-json", "empty", "missing-label", "number-id", "extra-key", "over-max-items"],
)
def test_feedback_shapes_are_client_errors(on: TestClient, body: bytes, status: int) -> None:
    r = on.post("/feedback", content=body, headers={"content-type": "application/json"})
    assert r.status_code == status, r.text
    assert "Traceback" not in r.text


def test_feedback_needs_json(on: TestClient) -> None:
    r = on.post("/feedback", content=b"a=1", headers={"content-type": "text/plain"})
    assert r.status_code == 415


def log_lines(root: Path) -> list[bytes]:
    objects = sorted(root.rglob("*.jsonl.gz"))
    return [line for p in objects for line in gzip.decompress(p.read_bytes()).splitlines()]


def test_the_payload_log_joins_rows_with_labels(on: TestClient) -> None:
    pairs = ids_and_classes(on, ROWS)
    on.post("/feedback", json={"feedback": [{"prediction_id": pairs[0][0], "label": "benign"}]})
    deadline = time.monotonic() + 10
    while True:
        x, y, ids, counts = labelled_rows(str(on.log_dir), [f"feature_{i}" for i in range(4)])
        if pairs[0][0] in ids or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    row = x[ids.index(pairs[0][0])]
    assert row == [ROWS[0][f"feature_{i}"] for i in range(4)]  # bit for bit
    assert y[ids.index(pairs[0][0])] == "benign"
    assert pairs[1][0] not in ids  # served but never labelled: not joined
    assert counts["predictions"] >= 3 and counts["labels"] >= 1
    records = [json.loads(line) for line in log_lines(on.log_dir)]
    rows = [r for r in records if r.get("prediction_id") == pairs[1][0] and "features" in r]
    assert rows and rows[0]["endpoint"] == "/predict" and rows[0]["model"]["version"] == "4"


def test_a_full_queue_drops_and_counts(model_dir: Path, tmp_path: Path) -> None:
    with start(
        model_dir,
        prediction_signing_secret=SECRET,
        payload_log_uri=str(tmp_path),
        payload_log_queue_rows=5,
        payload_log_flush_seconds=3600,
        payload_log_batch_rows=1000,
    ) as client:
        ready(client)
        for _ in range(4):
            assert client.post("/predict", json={"instances": ROWS}).status_code == 200
        metrics = client.get("/metrics").text
    assert (
        'mlservice_payload_log_dropped_rows_total{kind="predictions",reason="queue_full"} 9.0'
        in metrics
    ), metrics
    # shutdown wrote what was queued: the 3 admitted rows, no more
    assert len(log_lines(tmp_path)) == 3


def test_settings_errors_never_show_a_secret(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    from ml_service.serving.settings import load

    monkeypatch.setenv("PREDICTION_SIGNING_SECRET", "short-secret-value")
    with pytest.raises(SystemExit) as exc:
        load()
    assert "PREDICTION_SIGNING_SECRET" in str(exc.value)
    assert "short-secret-value" not in str(exc.value)
    monkeypatch.setenv("PREDICTION_SIGNING_SECRET", SECRET)
    monkeypatch.setenv("PAYLOAD_LOG_URI", "s3://bucket/prefix")
    assert load().payload_log_uri == "s3://bucket/prefix"
    monkeypatch.setenv("PAYLOAD_LOG_URI", "https://bucket.example/prefix")
    with pytest.raises(SystemExit, match="PAYLOAD_LOG_URI: must be s3://<bucket>/<prefix>"):
        load()
    monkeypatch.setenv("PAYLOAD_LOG_URI", "s3:///prefix")
    with pytest.raises(SystemExit, match="PAYLOAD_LOG_URI: s3://<bucket>/<prefix> has no bucket"):
        load()
    monkeypatch.setenv("PAYLOAD_LOG_URI", "s3://bucket/prefix")
    monkeypatch.delenv("PREDICTION_SIGNING_SECRET")
    with pytest.raises(SystemExit, match="PAYLOAD_LOG_URI needs PREDICTION_SIGNING_SECRET"):
        load()
