"""Ground truth, end to end: 1,000 held-out rows predicted over HTTP, half by model version A
and half by version B (the switch a rollout makes), their labels sent back late, out of order,
in batches of any size, partly twice, to whichever replica; replica A then stops. The live
recall, precision, F1 and accuracy that a real Prometheus computes from both replicas' /metrics
with the chart's own recording rules equal sklearn.metrics on the same rows, to the last bit,
per model version.

Needs Prometheus (Debian's, `make setup-monitoring`) and helm (the chart's rules, rendered as
`helm template` renders them, `make setup-chart`)."""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from monitoring.lib import (
    NAMESPACE,
    RELEASE,
    Prometheus,
    prometheus,
    render_rule_groups,
    write_rules,
)
from support.app_server import AppServer, app_server
from support.mlflow import RegisteredModel, as_registered_model, train

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

SECRET = "integration-test-signing-secret-0123456789"
ROWS = 1000


@dataclass
class Served:
    """What one replica answered: prediction ID -> (model version, predicted class)."""

    app: AppServer
    version: str
    predictions: dict[str, tuple[str, str]] = field(default_factory=dict)
    labels_sent: int = 0


def held_out(n: int, seed: int = 3) -> tuple[list[str], np.ndarray, np.ndarray]:
    """`n` rows drawn from the gate's fixed held-out split (which no model here trained on),
    each scaled by up to ±3 %, with the true class of the row it came from."""
    from ml_service.training.train import load_dataset, split

    x, y = load_dataset()
    data = split(x, y, 0.25, 42)
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(data.x_test), size=n)
    rows = data.x_test.to_numpy()[pick] * rng.uniform(0.97, 1.03, size=(n, x.shape[1]))
    return list(x.columns), rows, data.y_test.to_numpy()[pick]


def predict(client: httpx.Client, served: Served, names, rows, rng) -> list[str]:
    ids = []
    start = 0
    while start < len(rows):
        batch = rows[start : start + int(rng.integers(1, 40))]
        start += len(batch)
        body = {"instances": [dict(zip(names, map(float, r), strict=True)) for r in batch]}
        r = client.post(served.app.url("/predict"), json=body)
        assert r.status_code == 200, r.text
        answer = r.json()
        assert answer["model"]["version"] == served.version
        for p in answer["predictions"]:
            served.predictions[p["prediction_id"]] = (served.version, p["class"])
            ids.append(p["prediction_id"])
    return ids


def send_labels(client: httpx.Client, app: AppServer, items: list[dict], rng) -> tuple[int, int]:
    accepted = duplicates = 0
    start = 0
    while start < len(items):
        batch = items[start : start + int(rng.integers(1, 120))]
        start += len(batch)
        r = client.post(app.url("/feedback"), json={"feedback": batch})
        assert r.status_code == 200, r.text
        accepted += r.json()["accepted"]
        duplicates += r.json()["duplicates"]
    return accepted, duplicates


def counted(prom: Prometheus, instance: str | None = None) -> float:
    where = f'instance="{instance}"' if instance else f'job="{RELEASE}"'
    result = prom.query(f"sum(mlservice_feedback_total{{{where}}})")
    return float(result[0]["value"][1]) if result else 0.0


@pytest.fixture(scope="module")
def second_version(registered_model: RegisteredModel, tmp_path_factory) -> RegisteredModel:
    """Another version of the model, as a retraining would register it: fewer, shallower trees,
    so it answers some rows differently."""
    out = tmp_path_factory.mktemp("v2") / "result.json"
    args = ("--learning-rate", "0.3", "--max-iter", "8", "--max-leaf-nodes", "3")
    return as_registered_model(train(registered_model.tracking_uri, *args, output_json=out))


@pytest.fixture(scope="module")
def live(registered_model, second_version, tmp_path_factory) -> Iterator[dict]:
    work: Path = tmp_path_factory.mktemp("live-quality")
    groups = render_rule_groups()
    rules = write_rules(groups, work / "rules.yaml")
    names, rows, truth = held_out(ROWS)
    rng = np.random.default_rng(11)
    apps = {}
    with (
        app_server(model_uri=registered_model.model_uri, tracking_uri=registered_model.tracking_uri,
                   wait_ready=True, log_dir=work, PREDICTION_SIGNING_SECRET=SECRET) as a,
        app_server(model_uri=second_version.model_uri, tracking_uri=second_version.tracking_uri,
                   wait_ready=True, log_dir=work, PREDICTION_SIGNING_SECRET=SECRET) as b,
        prometheus(work, [f"127.0.0.1:{a.port}", f"127.0.0.1:{b.port}"], [rules],
                   {"job": RELEASE, "namespace": NAMESPACE, "pod": f"{RELEASE}-pod"}) as prom,
        httpx.Client(timeout=30) as client,
    ):  # fmt: skip
        apps = {"A": Served(a, registered_model.version), "B": Served(b, second_version.version)}
        prom.wait_for("both replicas scraped", lambda: len(prom.query("up == 1")) == 2)
        # the first half of the rows is answered by version A, then traffic moves to B
        ids = predict(client, apps["A"], names, rows[: ROWS // 2], rng)
        ids += predict(client, apps["B"], names, rows[ROWS // 2 :], rng)
        truth_of = dict(zip(ids, truth.tolist(), strict=True))
        items = [{"prediction_id": pid, "label": truth_of[pid]} for pid in ids]
        random.Random(5).shuffle(items)
        # some labels reach replica A (of either version) before it goes away, some twice
        to_a, to_b = items[:300], items[300:]
        assert send_labels(client, a, to_a, rng) == (300, 0)
        assert send_labels(client, a, to_a[:40], rng) == (0, 40)
        prom.wait_for(
            "A's last counts scraped", lambda: counted(prom, f"127.0.0.1:{a.port}") == 300
        )
        a.terminate()
        # the rest, later, to B, which checks A's prediction IDs as well as its own
        assert send_labels(client, b, to_b, rng) == (700, 0)
        assert send_labels(client, b, to_b[::7], rng) == (0, len(to_b[::7]))
        per_version = "namespace_job_model_version:mlservice_feedback:sum"
        prom.wait_for(
            "every label in the recording rules",
            lambda: sorted(float(s["value"][1]) for s in prom.query(per_version)) == [500, 500],
            timeout=60,
        )
        yield {
            "prom": prom,
            "truth": truth_of,
            "predictions": {**apps["A"].predictions, **apps["B"].predictions},
            "versions": (registered_model.version, second_version.version),
        }


def by_version(live: dict) -> dict[str, tuple[list[str], list[str]]]:
    out: dict[str, tuple[list[str], list[str]]] = {}
    for pid, (version, predicted) in live["predictions"].items():
        y_true, y_pred = out.setdefault(version, ([], []))
        y_true.append(live["truth"][pid])
        y_pred.append(predicted)
    return out


def recorded(prom: Prometheus, name: str) -> dict[tuple[str, ...], float]:
    return {
        (s["metric"]["model_version"], *([s["metric"]["class"]] if "class" in s["metric"] else [])):
        float(s["value"][1])
        for s in prom.query(f'{name}{{namespace="{NAMESPACE}", job="{RELEASE}"}}')
    }  # fmt: skip


def test_the_versions_score_differently(live: dict) -> None:
    """Otherwise counting a label under the wrong version would go unnoticed below."""
    from sklearn.metrics import accuracy_score, recall_score

    rows = by_version(live)
    assert set(rows) == set(live["versions"]) and all(len(t) == 500 for t, _ in rows.values())
    recalls = {recall_score(t, p, pos_label="malignant") for t, p in rows.values()}
    accuracies = {accuracy_score(t, p) for t, p in rows.values()}
    assert len(recalls) == 2 and len(accuracies) == 2, (recalls, accuracies)


def test_live_quality_equals_sklearn_exactly(live: dict) -> None:
    from sklearn.metrics import accuracy_score, confusion_matrix, precision_recall_fscore_support

    prom = live["prom"]
    recall = recorded(prom, "namespace_job_model_version_class:mlservice_live_recall:ratio")
    precision = recorded(prom, "namespace_job_model_version_class:mlservice_live_precision:ratio")
    f1 = recorded(prom, "namespace_job_model_version_class:mlservice_live_f1:ratio")
    accuracy = recorded(prom, "namespace_job_model_version:mlservice_live_accuracy:ratio")
    cells = {
        tuple(s["metric"][k] for k in ("model_version", "predicted", "actual")): float(
            s["value"][1]
        )
        for s in prom.query("namespace_job_model_version_predicted_actual:mlservice_feedback:sum")
    }
    classes = ["benign", "malignant"]
    for version, (y_true, y_pred) in by_version(live).items():
        p, r, f, _ = precision_recall_fscore_support(
            y_true, y_pred, labels=classes, zero_division=np.nan
        )
        for i, c in enumerate(classes):
            assert recall[(version, c)] == r[i], (version, c, recall[(version, c)], r[i])
            assert precision[(version, c)] == p[i], (version, c, precision[(version, c)], p[i])
            assert f1[(version, c)] == f[i], (version, c, f1[(version, c)], f[i])
        assert accuracy[(version,)] == accuracy_score(y_true, y_pred), version
        matrix = confusion_matrix(y_true, y_pred, labels=classes)  # rows: actual
        for ai, actual in enumerate(classes):
            for pi, predicted in enumerate(classes):
                assert cells[(version, predicted, actual)] == matrix[ai, pi]
