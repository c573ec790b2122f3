"""The chart's recording and alerting rules: promtool checks them and runs the unit tests of
rules_test.yaml (each alert fires on series that should fire it, stays silent otherwise)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from .lib import HERE, NAMESPACE, RELEASE, render_rule_groups, rules_of, tool, write_rules

UNIT_TESTS = HERE / "rules_test.yaml"
# What delivery.strategy canary changes in the rules, tested on that rendering.
CANARY_UNIT_TESTS = HERE / "rules_canary_test.yaml"
CANARY = {"delivery.strategy": "canary", "serviceMonitor.enabled": True}

# Values that move every window and threshold away from the defaults (rendering must follow).
CUSTOM_VALUES = {
    "prometheusRule.availability.objective": 99.9,
    "prometheusRule.availability.burnRates": [
        {
            "severity": "critical",
            "longWindow": "2h",
            "shortWindow": "10m",
            "factor": 10,
            "for": "5m",
        },
    ],
    "prometheusRule.latency.p95Seconds": 0.25,
    "prometheusRule.drift.window": "30m",
    "prometheusRule.memoryGrowth.bytesPerHour": 1048576,
    "prometheusRule.alertLabels.team": "ml-platform",
    "prometheusRule.runbookBaseUrl": "https://runbooks.example/ml-service",
}


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [tool("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def run_unit_tests(
    tmp_path: Path, set_values: dict | None = None, tests: Path = UNIT_TESTS
) -> subprocess.CompletedProcess:
    write_rules(render_rule_groups(set_values), tmp_path / "rules.yaml")
    shutil.copy(tests, tmp_path / tests.name)
    return promtool("test", "rules", tests.name, cwd=tmp_path)


@pytest.mark.parametrize(
    "values", [{}, CUSTOM_VALUES, CANARY], ids=["defaults", "custom-values", "canary"]
)
def test_promtool_check_rules(tmp_path, values):
    path = write_rules(render_rule_groups(values), tmp_path / "rules.yaml")
    proc = promtool("check", "rules", path.name, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout


def test_promtool_unit_tests(tmp_path):
    proc = run_unit_tests(tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_promtool_unit_tests_of_canary_delivery(tmp_path):
    proc = run_unit_tests(tmp_path, CANARY, CANARY_UNIT_TESTS)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    # and they test what changed: the Deployment's rule does not pass them
    proc = run_unit_tests(tmp_path, {}, CANARY_UNIT_TESTS)
    assert proc.returncode != 0, proc.stdout


# Each breakage must make at least one unit test fail: the tests really pin the thresholds.
@pytest.mark.parametrize(
    "broken",
    [
        {"prometheusRule.availability.objective": 80},
        {"prometheusRule.availability.handlers": "/ready"},
        {"prometheusRule.latency.p95Seconds": 5},
        {"prometheusRule.modelNotLoadedFor": "1h"},
        {"prometheusRule.memoryGrowth.bytesPerHour": 1073741824},
        {"prometheusRule.restarts.max": 20},
        {"prometheusRule.shedding.ratio": 0.5},
        {"prometheusRule.shedding.for": "1h"},
        {"prometheusRule.drift.classShareDeviation": 0.9},
        {"prometheusRule.drift.featurePsi": 0.9},
        {"prometheusRule.drift.minRows": 0},
        {"prometheusRule.drift.outOfRangeRatio": 0.5},
        {"prometheusRule.liveQuality.recallMin": 0.5},
        {"prometheusRule.liveQuality.minLabels": 10},
        {"prometheusRule.liveQuality.window": "1m"},
        {"prometheusRule.liveQuality.positiveClass": "benign"},
    ],
    ids=lambda v: next(iter(v)).rsplit(".", 1)[-1],
)
def test_unit_tests_catch_a_wrong_threshold(tmp_path, broken):
    proc = run_unit_tests(tmp_path, broken)
    assert proc.returncode != 0, f"rules_test.yaml still passes with {broken}:\n{proc.stdout}"


def test_every_alert_is_unit_tested():
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    text = yaml.safe_dump(tests)
    alerts = {r["alert"] for r in rules_of(render_rule_groups()) if "alert" in r}
    untested = sorted(
        a for a in alerts if f'alertname="{a}"' not in text and f"alertname: {a}" not in text
    )
    assert not untested, f"alerts without a promtool unit test: {untested}"


def test_alerts_carry_severity_summary_and_runbook():
    problems = []
    for rule in rules_of(render_rule_groups(CUSTOM_VALUES)):
        if "alert" not in rule:
            continue
        labels, ann = rule.get("labels", {}), rule.get("annotations", {})
        if labels.get("severity") not in {"critical", "warning", "info"}:
            problems.append(f"{rule['alert']}: severity {labels.get('severity')!r}")
        if labels.get("team") != "ml-platform":
            problems.append(f"{rule['alert']}: prometheusRule.alertLabels not applied")
        for key in ("summary", "description", "runbook"):
            if len(ann.get(key, "").strip()) < 20:
                problems.append(f"{rule['alert']}: annotation {key} missing or too short")
        expected = f"https://runbooks.example/ml-service#{rule['alert'].lower()}"
        if ann.get("runbook_url") != expected:
            problems.append(f"{rule['alert']}: runbook_url {ann.get('runbook_url')!r}")
    assert not problems, "\n".join(problems)


def test_runbook_anchors_exist_in_docs():
    docs = (HERE.parents[1] / "docs" / "monitoring.md").read_text()
    headings = {
        line.lstrip("#").strip().lower() for line in docs.splitlines() if line.startswith("#")
    }
    alerts = {r["alert"] for r in rules_of(render_rule_groups()) if "alert" in r}
    missing = sorted(a for a in alerts if a.lower() not in headings)
    assert not missing, f"docs/monitoring.md has no runbook heading for {missing}"


def test_rules_follow_values():
    rules = {
        (r.get("record") or r.get("alert"), r.get("labels", {}).get("long_window")): r
        for r in rules_of(render_rule_groups(CUSTOM_VALUES))
    }
    burn = rules[("MLServiceErrorBudgetBurn", "2h")]
    assert "ratio_rate2h" in burn["expr"] and "ratio_rate10m" in burn["expr"]
    assert "(10 * ((100 - 99.9) / 100))" in burn["expr"]
    assert burn["labels"]["short_window"] == "10m" and burn["for"] == "5m"
    assert (
        sum(
            1
            for r in rules_of(render_rule_groups(CUSTOM_VALUES))
            if r.get("alert") == "MLServiceErrorBudgetBurn"
        )
        == 1
    )
    assert "> 0.25" in rules[("MLServiceHighLatencyP95", None)]["expr"]
    assert "> 1048576" in rules[("MLServiceMemoryGrowing", None)]["expr"]
    assert "[30m]" in rules[("namespace_job_class:mlservice_prediction_share:ratio", None)]["expr"]
    recorded = {r["record"] for r in rules_of(render_rule_groups(CUSTOM_VALUES)) if "record" in r}
    assert {
        "namespace_job:mlservice_slo_errors_per_request:ratio_rate2h",
        "namespace_job:mlservice_slo_errors_per_request:ratio_rate10m",
    } <= recorded


@pytest.mark.parametrize("values", [{}, CANARY], ids=["deployment", "canary"])
def test_rules_are_scoped_to_their_release(values):
    """Two releases must never record the same series: every rule selects its own job/namespace."""
    groups = render_rule_groups(values, namespace="team-a", release="fraud-ml-service")
    for rule in rules_of(groups):
        expr = rule["expr"]
        if expr.startswith("vector("):  # a constant: scoped by its labels
            assert rule["labels"] == {"namespace": "team-a", "job": "fraud-ml-service"}, rule
            continue
        assert 'namespace="team-a"' in expr, rule
        scoped = (
            'job="fraud-ml-service"',
            'deployment="fraud-ml-service"',
            'pod=~"fraud-ml-service-',
        )
        assert any(s in expr for s in scoped), rule
    assert NAMESPACE != "team-a" and RELEASE != "fraud-ml-service"


def test_the_live_recall_alert_holds_the_quality_gates_own_floor():
    """MLServiceLiveRecallLow watches the class and the recall floor the release gate enforces:
    a model the gate would refuse today alerts when it serves that badly."""
    gate = yaml.safe_load((HERE.parents[1] / "environments" / "quality-gate.yaml").read_text())
    (alert,) = [
        r for r in rules_of(render_rule_groups()) if r.get("alert") == "MLServiceLiveRecallLow"
    ]
    positive = gate["evaluation"]["positive_class"]
    floor = gate["thresholds"]["recall_score"]["min"]
    assert f'class="{positive}"}} < {floor}' in alert["expr"], (
        "prometheusRule.liveQuality.positiveClass / recallMin in charts/ml-service/values.yaml "
        f"must be the gate's evaluation.positive_class ({positive}) and "
        f"thresholds.recall_score.min ({floor})"
    )
