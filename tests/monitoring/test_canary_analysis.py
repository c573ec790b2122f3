"""The canary analysis (the chart's AnalysisTemplate, delivery.strategy canary) evaluated by
Prometheus's own engine (`promtool test rules`): each check's query, with Argo Rollouts' arguments
filled in as the controller does, gives the expected number for a canary and stable pods that
behave alike, for a canary that differs, nothing while either side has too few samples, and still
sees a class that only one side predicts. The real controller runs them in the cluster tier."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import yaml
from support.kube import load_documents, run_helm, template_args

from .lib import CHART, NAMESPACE, RELEASE, nest, tool

CANARY, STABLE = "c1", "s1"
VALUES = {
    "delivery.strategy": "canary",
    "serviceMonitor.enabled": True,
    "serviceMonitor.interval": "30s",
    "delivery.canary.analysis.window": "2m",
    "delivery.canary.analysis.minRows": 100,
    "delivery.canary.analysis.minRequests": 50,
}
BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0)
# Latency floor of the chart's defaults (delivery.canary.analysis.thresholds.latencyFloorSeconds).
FLOOR = 0.025


def queries(tmp_path: Path) -> dict[str, str]:
    """check name -> PromQL, as the controller runs it for revisions c1 (canary) and s1."""
    values = tmp_path / "values.yaml"
    values.write_text(yaml.safe_dump(nest(VALUES)))
    proc = run_helm(template_args(CHART, release=RELEASE, namespace=NAMESPACE,
                                  value_files=[values]))  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (template,) = [d for d in load_documents(proc.stdout) if d["kind"] == "AnalysisTemplate"]
    return {
        m["name"]: m["provider"]["prometheus"]["query"]
        .replace("{{args.canary-hash}}", CANARY)
        .replace("{{args.stable-hash}}", STABLE)
        for m in template["spec"]["metrics"]
    }


def counter(name: str, revision: str, per_minute: float, **labels: str) -> dict:
    sel = {"job": RELEASE, "namespace": NAMESPACE, "revision": revision, **labels}
    inner = ", ".join(f'{k}="{v}"' for k, v in sel.items())
    return {"series": f"{name}{{{inner}}}", "values": f"0+{per_minute}x10"}


def side(revision: str, classes: dict[str, float], requests: float, status: dict[str, float],
         latency: float, refused: float = 0) -> list[dict]:  # fmt: skip
    """A revision's series: rows per minute by class (each class's probability in the top bin for
    its own rows, the bottom bin otherwise), inference requests by status class, every request
    taking `latency` seconds, and `refused` requests per minute shed by admission control (503
    before the app saw them: not in http_requests_total)."""
    rows = sum(classes.values())
    series = [counter("mlservice_predictions_total", revision, n, model_version="1", **{"class": c})
              for c, n in classes.items()]  # fmt: skip
    for c, n in classes.items():
        for b, count in (("9", n), ("0", rows - n)):
            series.append(counter("mlservice_prediction_score_bin_total", revision, count,
                                  bin=b, **{"class": c}))  # fmt: skip
    predict = {"handler": "/predict", "method": "POST"}
    if refused:
        series.append(counter("mlservice_requests_shed_total", revision, refused,
                              reason="concurrency_limit"))  # fmt: skip
    for s, share in status.items():
        series.append(counter("http_requests_total", revision, requests * share, status=s,
                              **predict))  # fmt: skip
    for le in (*map(str, BUCKETS), "+Inf"):
        n = requests if le == "+Inf" or float(le) >= latency else 0
        series.append(counter("http_request_duration_seconds_bucket", revision, n, le=le,
                              **predict))  # fmt: skip
    return series


def p95(latency: float) -> float:
    """histogram_quantile(0.95) with every request in the bucket of `latency` (interpolated)."""
    upper = next(b for b in BUCKETS if b >= latency)
    lower = max([0.0, *[b for b in BUCKETS if b < upper]])
    return lower + (upper - lower) * 0.95


def psi(a: list[float], b: list[float], eps: float = 1e-4) -> float:
    return sum((max(x, eps) - max(y, eps)) * math.log(max(x, eps) / max(y, eps))
               for x, y in zip(a, b, strict=True))  # fmt: skip


def rounded(value: float) -> float:
    """What PromQL's round(v, 0.0001) gives."""
    return math.floor(value * 10000 + 0.5) / 10000


OK = {"2xx": 1.0, "4xx": 0.0, "5xx": 0.0}
CASES = {
    "alike": (
        side(CANARY, {"benign": 60, "malignant": 40}, 100, OK, 0.004)
        + side(STABLE, {"benign": 60, "malignant": 40}, 100, OK, 0.004),
        {"class-share": 0.0, "score-psi": 0.0, "rejected-share": 0.0, "error-share": 0.0,
         "latency-p95": p95(0.004) / FLOOR},
    ),
    "different": (
        side(CANARY, {"benign": 20, "malignant": 80}, 100,
             {"2xx": 0.85, "4xx": 0.1, "5xx": 0.05}, 0.06, refused=10)
        + side(STABLE, {"benign": 60, "malignant": 40}, 100, OK, 0.004),
        # errors as the SLO counts them: 5 answered 5xx and 10 refused of 110 a minute
        {"class-share": 0.4, "score-psi": psi([0.2, 0.8], [0.6, 0.4]), "rejected-share": 0.1,
         "error-share": 15 / 110, "latency-p95": p95(0.06) / FLOOR},
    ),
    "too few samples on the canary": (
        side(CANARY, {"benign": 1, "malignant": 0}, 1, OK, 0.004)
        + side(STABLE, {"benign": 60, "malignant": 40}, 100, OK, 0.004),
        {name: None for name in ("class-share", "score-psi", "rejected-share", "error-share",
                                 "latency-p95")},
    ),
    # a class the stable version predicts and the canary's model does not know at all
    "a class on one side only": (
        side(CANARY, {"a": 60, "b": 40}, 100, OK, 0.004)
        + side(STABLE, {"a": 30, "b": 30, "c": 40}, 100, OK, 0.004),
        {"class-share": 0.4},
    ),
}  # fmt: skip


def promtool_cases(checks: dict[str, str]) -> list[dict]:
    tests = []
    for name, (series, expected) in CASES.items():
        exprs = []
        for check, value in expected.items():
            samples = [] if value is None else [{"labels": "{}", "value": rounded(value)}]
            exprs.append({"expr": f"round({checks[check]}, 0.0001)", "eval_time": "6m",
                          "exp_samples": samples})  # fmt: skip
        tests.append({"name": name, "interval": "1m", "input_series": series,
                      "promql_expr_test": exprs})  # fmt: skip
    return tests


def run_promtool(tmp_path: Path, tests: list[dict]) -> subprocess.CompletedProcess:
    (tmp_path / "rules.yaml").write_text("groups: []\n")
    path = tmp_path / "canary_test.yaml"
    path.write_text(yaml.safe_dump({"rule_files": ["rules.yaml"], "evaluation_interval": "1m",
                                    "tests": tests}, width=100000))  # fmt: skip
    return subprocess.run([tool("promtool"), "test", "rules", path.name], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300, check=False)  # fmt: skip


def test_every_check_is_covered(tmp_path: Path):
    checks = queries(tmp_path)
    assert set(checks) == {"class-share", "score-psi", "rejected-share", "error-share",
                           "latency-p95"}  # fmt: skip
    for name, (_, expected) in CASES.items():
        assert set(expected) <= set(checks), name
    assert set(CASES["different"][1]) == set(checks)


def test_checks_measure_canary_against_stable(tmp_path: Path):
    proc = run_promtool(tmp_path, promtool_cases(queries(tmp_path)))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_wrong_expectation_fails(tmp_path: Path):
    """The harness can fail: the class share difference of "different" is not 0.3."""
    checks = queries(tmp_path)
    series, _ = CASES["different"]
    bad = {"name": "wrong", "interval": "1m", "input_series": series, "promql_expr_test": [
        {"expr": f"round({checks['class-share']}, 0.0001)", "eval_time": "6m",
         "exp_samples": [{"labels": "{}", "value": 0.3}]}]}  # fmt: skip
    proc = run_promtool(tmp_path, [bad])
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0 and "got: {} 4E-01" in out, out
