"""The metrics contract (docs/metrics.md): names, types, labels, and that requests move them."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from ml_service.serving.app import create_app
from ml_service.serving.metrics import (
    LOOP_ROWS,
    SCORE_BINS,
    ServiceMetrics,
    new_registry,
    recorder,
)
from ml_service.serving.settings import Settings
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Summary, generate_latest
from prometheus_client.parser import text_string_to_metric_families
from support.app_server import wait_client_ready
from support.poll import wait_until
from support.sklearn_model import save_model

ROW = {"feature_0": 0.5, "feature_1": -1.0, "feature_2": 2.0, "feature_3": 0.25}

DOC = Path(__file__).resolve().parents[2] / "docs" / "metrics.md"
_ROW = re.compile(r"^\| `(?P<name>[a-z_]+)` \| (?P<type>counter|gauge|histogram|summary) \| "
                  r"(?P<labels>[^|]*) \|")  # fmt: skip


def documented_contract() -> dict[str, tuple[str, set[str]]]:
    """family name -> (type, label names), read from the tables of docs/metrics.md."""
    contract = {}
    for line in DOC.read_text().splitlines():
        if m := _ROW.match(line):
            name = m["name"].removesuffix("_total") if m["type"] == "counter" else m["name"]
            contract[name] = (m["type"], set(re.findall(r"`([a-z_]+)`", m["labels"])))
    return contract


CONTRACT = documented_contract()
# Exported only once the model carries drift reference statistics or after an event.
EVENT_FAMILIES = {"mlservice_connections_closed", "mlservice_dependency_mismatch"}


def families(text: str) -> dict:
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample_labels(family) -> set[str]:
    names: set[str] = set()
    for s in family.samples:
        names |= set(s.labels) - {"le", "quantile"}
    return names


def value(fams: dict, name: str, sample: str | None = None, **labels: str) -> float:
    for s in fams[name].samples:
        if s.name == (sample or name) and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {sample or name} {labels} in {fams[name].samples}")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # trained with an older numpy minor: compatible, so it loads and reports the mismatch
    training = {"sklearn_version": __import__("sklearn").__version__, "numpy_version": "2.0.0"}
    return save_model(tmp_path_factory.mktemp("model") / "m", training=training)


@pytest.fixture(scope="module")
def client(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    # every optional family on: prediction IDs and feedback, the payload log (to a directory)
    settings = Settings(
        model_uri=str(model_dir),
        model_name="tiny",
        model_version="4",
        prediction_signing_secret="unit-test-signing-secret-0123456789",
        payload_log_uri=str(tmp_path_factory.mktemp("payload-log")),
    )
    with TestClient(create_app(settings, registry=new_registry())) as c:
        wait_client_ready(c)
        yield c


def test_exposition_follows_the_contract(client: TestClient) -> None:
    """Both ways: every documented family is exported as documented, and every exported
    ml-service or HTTP family is documented."""
    assert len(CONTRACT) >= 20, "docs/metrics.md tables were not found"
    assert client.post("/predict", json={"instances": [ROW]}).status_code == 200
    response = client.get("/metrics")
    assert response.headers["content-type"].startswith("text/plain")
    fams = families(response.text)
    for name, (type_, labels) in CONTRACT.items():
        if name.startswith(("process_", "python_")):
            continue
        if name not in fams and name in EVENT_FAMILIES:
            continue
        assert name in fams, f"{name} is documented but missing from /metrics"
        assert fams[name].type == type_, name
        if fams[name].samples:
            assert sample_labels(fams[name]) == labels, name
    ours = {n for n in fams if n.startswith(("mlservice_", "http_"))}
    assert ours <= set(CONTRACT), f"undocumented: {sorted(ours - set(CONTRACT))}"


def test_requests_move_the_metrics(client: TestClient) -> None:
    before = families(client.get("/metrics").text)
    assert client.post("/predict", json={"instances": [ROW] * 7}).status_code == 200
    assert client.post("/predict", json={"instances": []}).status_code == 422
    after = families(client.get("/metrics").text)

    def delta(name: str, sample: str | None = None, **labels: str) -> float:
        try:
            old = value(before, name, sample, **labels)
        except AssertionError:
            old = 0.0
        return value(after, name, sample, **labels) - old

    ok = {"handler": "/predict", "method": "POST"}
    assert delta("http_requests", "http_requests_total", status="2xx", **ok) == 1
    assert delta("http_requests", "http_requests_total", status="4xx", **ok) == 1
    predicted = sum(
        s.value - _old(before, s)
        for s in after["mlservice_predictions"].samples
        if s.name == "mlservice_predictions_total" and s.labels["model_version"] == "4"
    )
    assert predicted == 7
    for cls in {s.labels["class"] for s in after["mlservice_prediction_score_bin"].samples}:
        binned = sum(
            s.value - _old(before, s, "mlservice_prediction_score_bin")
            for s in after["mlservice_prediction_score_bin"].samples
            if s.name.endswith("_total") and s.labels["class"] == cls
        )
        assert binned == 7, cls  # every row once per class
    assert delta("mlservice_request_rows", "mlservice_request_rows_count") == 1
    assert delta("mlservice_request_rows", "mlservice_request_rows_sum") == 7
    assert (
        delta("mlservice_inference_duration_seconds", "mlservice_inference_duration_seconds_count")
        == 1
    )
    # the in-progress gauge went back to zero once the request finished
    assert value(after, "http_requests_inprogress", **ok) == 0


def test_latency_buckets_resolve_milliseconds(client: TestClient) -> None:
    fams = families(client.get("/metrics").text)
    for name in ("http_request_duration_seconds", "http_request_duration_highr_seconds"):
        bounds = {float(s.labels["le"]) for s in fams[name].samples if s.name.endswith("_bucket")}
        assert len([b for b in bounds if b < 0.01]) >= 4, (name, sorted(bounds))


def test_metrics_endpoint_does_not_count_itself(client: TestClient) -> None:
    client.get("/metrics")
    fams = families(client.get("/metrics").text)
    handlers = {s.labels.get("handler") for s in fams["http_requests"].samples}
    assert "/metrics" not in handlers


def test_model_series(client: TestClient) -> None:
    fams = families(client.get("/metrics").text)
    assert value(fams, "mlservice_model_loaded") == 1
    assert value(fams, "mlservice_model_info", model_name="tiny", model_version="4") == 1
    assert value(fams, "mlservice_model_load_duration_seconds") > 0
    assert value(fams, "mlservice_model_load_failures", "mlservice_model_load_failures_total") == 0
    serving = np.__version__
    assert value(fams, "mlservice_dependency_mismatch", package="numpy", trained="2.0.0",
                 serving=serving) == 1  # fmt: skip


def _old(before: dict, sample, family: str = "mlservice_predictions") -> float:
    for s in before[family].samples:
        if s.name == sample.name and s.labels == sample.labels:
            return s.value
    return 0.0


def test_incompatible_model_is_refused_and_counted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model_dir = save_model(tmp_path / "old", training={"sklearn_version": "1.0.2"})
    settings = Settings(
        model_uri=str(model_dir),
        model_load_backoff_initial_seconds=0.05,
        model_load_backoff_max_seconds=0.1,
    )
    with TestClient(create_app(settings, registry=new_registry())) as c:

        def load_failures() -> float:
            fams = families(c.get("/metrics").text)
            return value(
                fams, "mlservice_model_load_failures", "mlservice_model_load_failures_total"
            )

        wait_until(lambda: load_failures() >= 2, 30, "an incompatible model fails, retried", 0.05)
        fams = families(c.get("/metrics").text)
        ready = c.get("/ready")
        assert ready.status_code == 503
        assert ready.json()["reason"] == "model_rejected"
        assert "scikit-learn trained with 1.0.2" in caplog.text  # the why is in the log
        assert value(fams, "mlservice_model_loaded") == 0
        assert c.post("/predict", json={"instances": [ROW]}).status_code == 503


def loaded(registry, classes=("x", "y")) -> ServiceMetrics:
    metrics = ServiceMetrics(registry)
    metrics.mark_loaded("m", "1", "run", 0.1, list(classes))
    return metrics


def test_service_metrics_are_per_registry() -> None:
    # two apps in one process (tests, embedding) must not collide in a global registry
    ra, rb = new_registry(), new_registry()
    a, _ = loaded(ra), ServiceMetrics(rb)
    a.record_predictions(["x", "x", "y"], np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7]]))
    assert ra.get_sample_value(
        "mlservice_predictions_total", {"model_version": "1", "class": "x"}
    ) == 2  # fmt: skip
    assert rb.get_sample_value(
        "mlservice_predictions_total", {"model_version": "1", "class": "x"}
    ) is None  # fmt: skip


def test_multiprocess_mode_merges_worker_files(tmp_path: Path) -> None:
    """Under PROMETHEUS_MULTIPROC_DIR, /metrics reads every worker's files (two processes here)."""
    script = (
        "from ml_service.serving.metrics import ServiceMetrics, new_registry, render\n"
        "import sys\n"
        "import numpy as np\n"
        "r = new_registry()\n"
        "n = int(sys.argv[1])\n"
        "m = ServiceMetrics(r)\n"
        "m.mark_loaded('m', '9', 'run', 0.1, ['benign'])\n"
        "m.record_predictions(['benign'] * n, np.ones((n, 1)))\n"
        "if sys.argv[2] == 'render':\n"
        "    sys.stdout.write(render(r)[0].decode())\n"
    )
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    run = [sys.executable, "-c", script]
    subprocess.run([*run, "3", "quiet"], env=env, check=True, timeout=120)
    out = subprocess.run(
        [*run, "4", "render"], env=env, check=True, timeout=120, capture_output=True, text=True
    ).stdout
    fams = families(out)
    total = value(fams, "mlservice_predictions", "mlservice_predictions_total", model_version="9")
    assert total == 7  # 3 from the first worker + 4 from the second


# Bucket bounds themselves, between them, below the first and above the last (+Inf), zero.
RECORDED = [0.0, 0.0005, 0.001, 0.0011, 0.25, 0.3, 7.0, 10.0, 1e9, -2.0]


@pytest.mark.parametrize("kind", ["counter", "gauge_inc", "gauge_dec", "histogram", "summary"])
def test_recorder_writes_what_the_public_methods_write(kind: str) -> None:
    """`recorder` skips prometheus_client's per-call checks and writes its value objects: the
    exposition must be the one its public `inc`/`dec`/`observe` give, value by value."""

    def make(registry: CollectorRegistry):  # type: ignore[no-untyped-def]
        args = ("m", "help", ["l"])
        if kind == "histogram":
            return Histogram(*args, buckets=(0.001, 0.25, 10.0), registry=registry).labels("x")
        if kind == "summary":
            return Summary(*args, registry=registry).labels("x")
        return (Counter if kind == "counter" else Gauge)(*args, registry=registry).labels("x")

    public_registry, fast_registry = CollectorRegistry(), CollectorRegistry()
    public, fast = make(public_registry), make(fast_registry)
    record = recorder(fast)
    for value in RECORDED if kind != "counter" else [v for v in RECORDED if v >= 0]:
        if kind in ("counter", "gauge_inc"):
            public.inc(value)
        elif kind == "gauge_dec":
            public.dec(value)
        else:
            public.observe(value)
        record(-value if kind == "gauge_dec" else value)
        assert generate_latest(fast_registry) == generate_latest(public_registry), value


def score_bins(registry, cls: str) -> list[float]:
    return [
        registry.get_sample_value(
            "mlservice_prediction_score_bin_total", {"class": cls, "bin": str(b)}
        )
        for b in range(SCORE_BINS)
    ]


def test_every_class_has_its_series_from_load_on() -> None:
    """A class the model never predicted is exported at 0 (a canary compared with the stable
    version class by class needs the series on both sides)."""
    registry = new_registry()
    loaded(registry)
    for cls in ("x", "y"):
        assert registry.get_sample_value(
            "mlservice_predictions_total", {"model_version": "1", "class": cls}
        ) == 0  # fmt: skip
        assert score_bins(registry, cls) == [0.0] * SCORE_BINS


def test_score_bins_edges_and_both_paths_agree() -> None:
    """Bin i holds [i/10, (i+1)/10), 1.0 is in the last bin; a batch binned at once (numpy) and
    the same rows one request at a time (the small-request loop) count the same."""
    edges = np.array([0.0, 0.0999, 0.1, 0.5, 0.9, 0.99999, 1.0])
    probe = new_registry()
    loaded(probe).record_predictions(["y"] * len(edges), np.column_stack([1 - edges, edges]))
    assert score_bins(probe, "y") == [2, 1, 0, 0, 0, 1, 0, 0, 0, 3]
    rng = np.random.default_rng(7)
    proba = rng.dirichlet([0.5, 0.5], size=200)
    labels = ["x" if p[0] >= p[1] else "y" for p in proba]
    assert len(labels) > LOOP_ROWS
    batched, single = new_registry(), new_registry()
    loaded(batched).record_predictions(labels, proba)
    one = loaded(single)
    for label, row in zip(labels, proba, strict=True):
        one.record_predictions([label], row[None, :])
    for cls in ("x", "y"):
        assert score_bins(batched, cls) == score_bins(single, cls)
        assert sum(score_bins(batched, cls)) == len(proba)
