"""A real Prometheus scrapes the real app (every second) while a short load runs; the dashboard
and rule queries must return data, and a deliberately shifted input stream must push the drift
and class-distribution signals past their thresholds until the matching alerts fire."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import httpx
import numpy as np
import pytest
from support.app_server import app_server

from .lib import (
    DASHBOARDS,
    NAMESPACE,
    RELEASE,
    Prometheus,
    dashboard_queries,
    exported_sample_names,
    kps_metrics,
    load_dashboard,
    parse_promql,
    prometheus,
    render_rule_groups,
    rules_of,
    substitute,
    write_rules,
)

pytestmark = pytest.mark.timeout(600)

# Short windows so that minutes of production behaviour fit in seconds; thresholds unchanged.
FAST_RULES = {
    "prometheusRule.drift.window": "15s",
    "prometheusRule.drift.for": "0s",
    "prometheusRule.drift.minRows": 100,
    "prometheusRule.latency.for": "0s",
    "prometheusRule.targetDownFor": "0s",
}
DRIFT_ALERTS = (
    "MLServiceFeatureDrift",
    "MLServiceClassDistributionShift",
    "MLServiceInputsOutOfRange",
)
# Queries that may rightly be empty on a healthy app, with the reason.
MAY_BE_EMPTY = {
    # training and serving share one virtualenv here, so no package differs
    'mlservice_dependency_mismatch{namespace="ml", job="ml-service"} == 1': "no mismatch",
}
NORMAL_SECONDS = 8
NORMAL_MIN_ROWS = 1500
SHIFT_TIMEOUT = 60


@dataclass
class Run:
    prom: Prometheus
    exposition: str
    after_normal: dict = field(default_factory=dict)
    after_shift: dict = field(default_factory=dict)
    rule_groups: list = field(default_factory=list)


def dataset() -> tuple[list[str], np.ndarray, np.ndarray]:
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    names = [n.replace(" ", "_") for n in data.feature_names]
    return names, data.data, data.target_names[data.target]


def send(client: httpx.Client, url: str, names: list[str], rows: np.ndarray) -> list[str]:
    """Predict `rows`; their prediction IDs."""
    payload = {"instances": [dict(zip(names, map(float, r), strict=True)) for r in rows]}
    resp = client.post(url, json=payload)
    assert resp.status_code == 200, resp.text[:500]
    return [p["prediction_id"] for p in resp.json()["predictions"]]


def firing(prom: Prometheus) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for alert in prom.alerts():
        if alert["state"] == "firing":
            out.setdefault(alert["labels"]["alertname"], []).append(alert)
    return out


@pytest.fixture(scope="module")
def run(registered_model, tmp_path_factory) -> Run:
    work = tmp_path_factory.mktemp("prometheus")
    groups = render_rule_groups(FAST_RULES)
    rules_file = write_rules(groups, work / "rules.yaml")
    names, x, y = dataset()
    rng = np.random.default_rng(7)
    labels = {"job": RELEASE, "namespace": NAMESPACE, "pod": f"{RELEASE}-test-pod"}
    with (
        app_server(
            model_uri=registered_model.model_uri,
            tracking_uri=registered_model.tracking_uri,
            wait_ready=True,
            log_dir=work,
            # the ground-truth features on too: their panels and rules need data
            PREDICTION_SIGNING_SECRET="monitoring-test-signing-secret-0123456789",
            PAYLOAD_LOG_URI=str(work / "payload-log"),
            PAYLOAD_LOG_FLUSH_SECONDS=1,
        ) as app,
        prometheus(work, [f"127.0.0.1:{app.port}"], [rules_file], labels) as prom,
        httpx.Client(timeout=10) as client,
    ):
        prom.wait_for("the app target to be up", lambda: prom.query(f'up{{job="{RELEASE}"}} == 1'))
        predict, feedback = app.url("/predict"), app.url("/feedback")
        # 1) a stream drawn from the training distribution, long enough in time (rates need
        # several scrapes) and in rows (PSI of an unchanged population is about bins / rows)
        start, sent = time.monotonic(), 0
        while time.monotonic() - start < NORMAL_SECONDS or sent < NORMAL_MIN_ROWS:
            assert time.monotonic() - start < 120, f"only {sent} rows sent in 120 s"
            pick = rng.integers(0, len(x), size=rng.integers(1, 21))
            ids = send(client, predict, names, x[pick])
            sent += len(pick)
            client.post(predict, json={"instances": [{"mean_radius": "not a number"}]})  # a 4xx
            # the truth of every other row comes back, the first twice; a forged ID is refused
            items = [
                {"prediction_id": i, "label": str(c)} for i, c in zip(ids, y[pick], strict=True)
            ]
            client.post(feedback, json={"feedback": items[::2] + items[:1]})
            client.post(
                feedback, json={"feedback": [{"prediction_id": "forged", "label": "benign"}]}
            )
        time.sleep(3)  # a few scrapes and rule evaluations after the last request
        result = Run(prom=prom, exposition=client.get(app.url("/metrics")).text, rule_groups=groups)
        result.after_normal = {
            "firing": firing(prom),
            "psi": prom.query("namespace_job_feature:mlservice_feature_psi:max"),
            "share": prom.query("namespace_job_class:mlservice_prediction_share:ratio"),
            "prior": prom.query("namespace_job_class:mlservice_training_class_prior:avg"),
        }
        # 2) the same rows, every feature tripled (a unit change upstream, say)
        deadline = time.monotonic() + SHIFT_TIMEOUT
        fired: dict[str, list[dict]] = {}
        next_check = time.monotonic() + 2
        while time.monotonic() < deadline:
            send(client, predict, names, 3 * x[rng.integers(0, len(x), size=20)])
            if time.monotonic() >= next_check:
                fired = firing(prom)
                if all(a in fired for a in DRIFT_ALERTS):
                    break
                next_check = time.monotonic() + 1
        result.after_shift = {
            "firing": fired,
            "alert_exprs": {
                r["alert"]: prom.query(r["expr"])
                for r in rules_of(groups)
                if r.get("alert") in DRIFT_ALERTS
            },
            "queries": {},
        }
        # every dashboard and recording-rule query, evaluated while the app is still up
        queries = result.after_shift["queries"]
        for path in DASHBOARDS:
            for where, expr in dashboard_queries(load_dashboard(path)):
                queries[(path.name, where, expr)] = prom.query(substitute(expr))
        result.after_shift["records"] = {
            r["record"]: prom.query(r["record"]) for r in rules_of(groups) if "record" in r
        }
        result.after_shift["rule_health"] = [
            (r["name"], r["health"], r.get("lastError", ""))
            for g in prom.rules()
            for r in g["rules"]
        ]
        yield result


def test_every_metric_named_is_exported_or_listed(run):
    exported = exported_sample_names(run.exposition)
    recorded = {r["record"] for r in rules_of(run.rule_groups) if "record" in r}
    known = exported | recorded | kps_metrics() | {"ALERTS", "ALERTS_FOR_STATE"}
    # Grafana variables in the dashboards; rules are plain PromQL (`$1` is label_replace's)
    exprs = [substitute(e) for p in DASHBOARDS for _, e in dashboard_queries(load_dashboard(p))]
    exprs += [r["expr"] for r in rules_of(run.rule_groups)]
    unknown = {}
    for parsed in parse_promql(exprs):
        for metric in parsed.metrics:
            if metric not in known:
                unknown.setdefault(metric, parsed.expr)
    assert not unknown, f"metrics neither exported by the app nor in the reviewed list: {unknown}"
    # and the reviewed list holds nothing the app exports itself
    assert not kps_metrics() & exported


def test_normal_traffic_keeps_drift_alerts_silent(run):
    snap = run.after_normal
    assert not set(snap["firing"]) & set(DRIFT_ALERTS), snap["firing"]
    psi = {s["metric"]["feature"]: float(s["value"][1]) for s in snap["psi"]}
    assert len(psi) == 30 and max(psi.values()) < 0.25, psi
    share = {s["metric"]["class"]: float(s["value"][1]) for s in snap["share"]}
    prior = {s["metric"]["class"]: float(s["value"][1]) for s in snap["prior"]}
    assert set(prior) == {"benign", "malignant"}, prior
    assert all(abs(share[c] - prior[c]) < 0.15 for c in prior), (share, prior)


def test_no_availability_or_latency_alert_under_normal_load(run):
    noisy = {
        "MLServiceErrorBudgetBurn",
        "MLServiceHighLatencyP95",
        "MLServiceModelNotLoaded",
        "MLServiceTargetDown",
        "MLServiceUnavailable",
    }
    assert not noisy & set(run.after_shift["firing"]), run.after_shift["firing"]


def test_shifted_stream_fires_the_drift_alerts(run):
    fired = run.after_shift["firing"]
    missing = [a for a in DRIFT_ALERTS if a not in fired]
    assert not missing, f"not firing within {SHIFT_TIMEOUT}s: {missing}; firing: {sorted(fired)}"
    for name in DRIFT_ALERTS:
        assert run.after_shift["alert_exprs"][name], f"{name} expression is empty"
        for alert in fired[name]:
            assert alert["labels"]["namespace"] == NAMESPACE and alert["labels"]["job"] == RELEASE
            for key, text in alert["annotations"].items():
                assert "<no value>" not in text and "<error" not in text, (key, text)
    classes = {a["labels"]["class"] for a in fired["MLServiceClassDistributionShift"]}
    assert "malignant" in classes


def test_dashboard_queries_return_data(run):
    kps = kps_metrics()
    queries = run.after_shift["queries"]
    named = dict(zip(queries, parse_promql([substitute(e) for *_, e in queries]), strict=True))
    empty, cluster_only = [], []
    for key, result in queries.items():
        _, where, expr = key
        if set(named[key].metrics) & kps:
            cluster_only.append(where)  # cAdvisor / kube-state-metrics: no cluster here
            continue
        if not result and substitute(expr) not in MAY_BE_EMPTY:
            empty.append(f"{key[0]} {where}: {expr}")
    assert not empty, "queries without data:\n" + "\n".join(empty)
    # the exemption covers exactly the pod resource panels, nothing the app could answer
    assert all(
        "replicas" in w
        or "CPU per pod" in w
        or "Memory working set" in w
        or "restarts" in w.lower()
        for w in cluster_only
    ), cluster_only


def test_recording_rules_have_data_and_rules_evaluate(run):
    empty = [name for name, result in run.after_shift["records"].items() if not result]
    assert not empty, f"recording rules without data: {empty}"
    broken = [r for r in run.after_shift["rule_health"] if r[1] != "ok"]
    assert not broken, broken
