"""Attacks on `POST /feedback`: forged and mangled prediction IDs, oversized batches, and a flood of
valid labels. Every refusal is a quick 4xx that names items by index and echoes nothing; nothing
refused is counted; no label value comes from the caller; memory stays flat whatever the flood,
and /health keeps answering throughout."""

from __future__ import annotations

import base64
import gzip
import json
import random
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from ml_service.serving.prediction_ids import Signer
from prometheus_client.parser import text_string_to_metric_families
from support.app_server import AppServer, app_server
from support.attacks import lasting_growth_kib, rss_kib

from .conftest import probes

SECRET = "adversarial-test-signing-secret-0123456789"
NAME, VERSION, CLASSES = "tiny", "1", ("benign", "malignant")
TTL = 3600
MIB = 1024 * 1024


def mint(n: int, *, secret: str = SECRET, name: str = NAME, at: float | None = None) -> list[str]:
    """Prediction IDs as a replica with `secret` serving model `name` issues them."""
    signer = Signer(secret.encode(), name, TTL)
    rng = np.random.default_rng(n)
    p = rng.uniform(0, 1, size=n)
    proba = np.column_stack([p, 1 - p])
    labels = [CLASSES[int(i)] for i in np.argmax(proba, axis=1)]
    tails = signer.tail(VERSION, CLASSES)
    assert tails is not None
    return signer.issue(tails, labels, proba.tolist(), time.time() if at is None else at)


@pytest.fixture(scope="module")
def app(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[AppServer]:
    with app_server(
        model_uri=str(tiny_model),
        wait_ready=True,
        log_dir=tmp_path_factory.mktemp("feedback-attacks"),
        MODEL_NAME=NAME,
        MODEL_VERSION=VERSION,
        PREDICTION_SIGNING_SECRET=SECRET,
        PREDICTION_ID_TTL_SECONDS=TTL,
        FEEDBACK_DEDUPE_MAX_IDS=20_000,
        MAX_REQUEST_BYTES=MIB + 1024,
    ) as server:
        yield server


def feedback_series(app: AppServer) -> dict[str, dict[tuple, float]]:
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(httpx.get(app.url("/metrics")).text):
        if family.name.startswith("mlservice_feedback"):
            out[family.name] = {
                (*sorted(s.labels.items()), s.name): s.value for s in family.samples
            }
    return out


def mangled(token: str, rng: random.Random) -> str:
    raw = bytearray(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
    choice = rng.randrange(6)
    if choice == 0:  # one bit flipped anywhere
        raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
    elif choice == 1:  # the claims changed, the MAC kept: another class or a fresher time
        raw[rng.randrange(1, len(raw) - 16)] ^= 0xFF
    elif choice == 2:  # truncated
        return token[: rng.randrange(len(token))]
    elif choice == 3:  # random bytes of the right length
        raw = bytearray(rng.randbytes(len(raw)))
    elif choice == 4:  # a model version of 255 bytes announced, with nothing behind it
        raw[min(16 + raw[15], len(raw) - 1)] = 0xFF
    else:  # garbage text
        return "".join(rng.choices("AZaz09-_=+/.!~ é\x00", k=rng.randrange(1, 300)))
    return base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()


def test_forged_mangled_foreign_and_expired_tokens_are_refused(app: AppServer) -> None:
    rng = random.Random(7)
    valid = mint(50)
    cases = [mangled(rng.choice(valid), rng) for _ in range(600)]
    cases += mint(20, secret="another-deployment-signing-secret-0123")  # foreign deployment
    cases += mint(20, name="another-model")  # another model behind the same key
    cases += mint(20, at=time.time() - TTL - 120)  # expired
    cases += mint(20, at=time.time() + 3600)  # from the future
    cases = [c for c in cases if c not in set(valid)]
    before = feedback_series(app)
    with httpx.Client(timeout=10) as http:
        for start in range(0, len(cases), 50):
            batch = cases[start : start + 50]
            r = http.post(
                app.url("/feedback"),
                json={"feedback": [{"prediction_id": t, "label": "benign"} for t in batch]},
            )
            assert r.status_code == 422, r.text
            detail = r.json()["detail"]
            assert len(detail) == min(20, len(batch))  # every item refused, at most 20 listed
            assert {d["type"] for d in detail} <= {
                "malformed", "invalid_signature", "expired", "not_yet_valid"
            }  # fmt: skip
            for token in batch:
                if len(token) > 6:
                    assert token not in r.text  # nothing echoed
    after = feedback_series(app)
    # nothing counted, no new series: every label value is ours, not the caller's
    assert after["mlservice_feedback"] == before["mlservice_feedback"]
    assert after.keys() == before.keys()
    assert all(len(after[k]) == len(before[k]) for k in after)
    refused = {dict(k[:-1])["reason"]: v for k, v in after["mlservice_feedback_refused"].items()
               if k[-1].endswith("_total")}  # fmt: skip
    assert refused["expired"] >= 20 and refused["not_yet_valid"] >= 20
    assert refused["invalid_signature"] >= 40 and refused["malformed"] > 0


def _items(n: int, pid: str = "x", label: str = "y") -> str:
    return json.dumps({"feedback": [{"prediction_id": pid, "label": label}] * n})


@pytest.mark.parametrize(
    "body, status",
    [
        (lambda: _items(1001), 413),  # more items than FEEDBACK_MAX_ITEMS (1000)
        (lambda: _items(1, label="y" * (MIB - 100)), 422),  # a MiB of one label
        (lambda: _items(1, pid="A" * (MIB - 100)), 422),  # a MiB of one prediction ID
        (lambda: '{"feedback": ' + "[" * 300_000 + "]" * 300_000 + "}", 422),  # deep nesting
        (lambda: _items(12_000, pid="x" * 100), 413),  # over MAX_REQUEST_BYTES
    ],
    ids=["items", "long-label", "long-id", "deep", "over-body-limit"],
)
def test_oversized_batches_are_cheap_refusals(app: AppServer, body, status: int) -> None:
    data = body().encode()
    rss_before, _ = rss_kib(app.process.pid)
    with probes(app).running() as health, httpx.Client(timeout=30) as http:
        for _ in range(3):
            started = time.monotonic()
            r = http.post(app.url("/feedback"), content=data,
                          headers={"content-type": "application/json"})  # fmt: skip
            assert r.status_code == status, r.text[:300]
            assert time.monotonic() - started < 2.0
            assert len(r.content) < 4096  # refusals say what, never repeat the input
    health.check()
    growth = lasting_growth_kib(app.process.pid, rss_before, 16 * 1024)
    assert growth < 16 * 1024, (rss_before, growth)


def test_a_flood_of_valid_feedback_is_counted_once_in_flat_memory(app: AppServer) -> None:
    """100,000 distinct valid labels (the dedupe memory holds 20,000 IDs here), then the last
    batch a hundred times over: each label counts once, RSS stays flat, /health answers."""
    total, batch = 100_000, 1000
    tokens = mint(total)
    samples = []
    with probes(app).running() as health, httpx.Client(timeout=60) as http:
        for start in range(0, total, batch):
            chunk = tokens[start : start + batch]
            items = [{"prediction_id": t, "label": "malignant"} for t in chunk]
            r = http.post(app.url("/feedback"), json={"feedback": items})
            assert r.json() == {"accepted": batch, "duplicates": 0}, r.text[:300]
            if start + batch in (30_000, total):
                samples.append(rss_kib(app.process.pid)[0])
        for _ in range(100):
            r = http.post(app.url("/feedback"), json={"feedback": items})
            assert r.json() == {"accepted": 0, "duplicates": batch}
    health.check()
    counted = sum(
        v for k, v in feedback_series(app)["mlservice_feedback"].items()
        if k[-1] == "mlservice_feedback_total"
    )  # fmt: skip
    assert counted == total  # the attacks before this test counted nothing
    grown = samples[1] - samples[0]
    # 70,000 more labels after the dedupe memory filled: what stays is bounded, not per label
    assert grown < 3 * 1024, f"RSS grew {grown} KiB from 30,000 to 100,000 labels"
    print(f"RSS after 30,000 labels {samples[0]} KiB, after 100,000 {samples[1]} KiB")


def test_the_signing_keys_never_leave_the_process(tiny_model: Path, tmp_path: Path) -> None:
    """Every endpoint, good and bad requests, debug logging and the payload log: neither the
    signing key nor the previous one appears in an answer, a header, the log or the log store."""
    secret = "sentinel-signing-secret-5b1e-0123456789abcdef"
    previous = "sentinel-previous-secret-5b1e-0123456789abcdef"
    log_dir = tmp_path / "payload-log"
    with app_server(
        model_uri=str(tiny_model),
        wait_ready=True,
        log_dir=tmp_path,
        LOG_LEVEL="debug",
        PREDICTION_SIGNING_SECRET=secret,
        PREDICTION_SIGNING_SECRET_PREVIOUS=previous,
        PAYLOAD_LOG_URI=str(log_dir),
        PAYLOAD_LOG_FLUSH_SECONDS=0.2,
    ) as app:
        answers = []
        with httpx.Client(timeout=10) as http:
            schema = http.get(app.url("/openapi.json")).json()
            rows = schema["components"]["schemas"]["Instance"]["examples"]
            answers.append(http.post(app.url("/predict"), json={"instances": rows}))
            pid = answers[0].json()["predictions"][0]["prediction_id"]
            answers.append(http.post(app.url("/invocations"), json={"dataframe_records": rows}))
            for item in ({"prediction_id": pid, "label": "benign"}, {"prediction_id": "x" * 60}):
                answers.append(http.post(app.url("/feedback"), json={"feedback": [item]}))
            for path in ("/model", "/metrics", "/openapi.json", "/ready", "/docs"):
                answers.append(http.get(app.url(path)))
            time.sleep(1)  # the payload log writes
        texts = [f"{r.status_code} {dict(r.headers)} {r.text}" for r in answers]
        texts.append(app.log_tail(1_000_000))
    stored = [gzip.decompress(f.read_bytes()).decode() for f in log_dir.rglob("*.gz")]
    assert any(pid in text for text in stored), "the payload log wrote nothing to search"
    for text in texts + stored:
        assert secret not in text and previous not in text
