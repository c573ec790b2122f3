"""The quality gate's error rates, measured the way users measure them: `python -m
ml_service.release.error_rates` as a real subprocess, with a smaller count than the figures in
docs/gitops.md. It retrains the default configuration in-process (no MLflow server);
test_gitops_quality_gate.py shows that its comparisons are the gate's own."""

from __future__ import annotations

import json
import subprocess
import sys

from .conftest import ROOT

MODELS = 8  # pairs per family; the documented run uses 200
FLIP = 0.2
# docs/gitops.md, "Measured error rates" (200 pairs per family): the committed rules refuse 2 % of
# equivalent models and 100 % of the 20 %-flipped ones; the same tolerances on the point value
# refuse no equivalent model. With 8 pairs the test allows one pair of margin each way: two
# equivalent refusals out of 8 have a chance near 1 % at the documented 2 %.
MOST_EQUIVALENT_REFUSED = 1
LEAST_DEGRADED_REFUSED = MODELS - 1


def test_the_committed_rules_pass_equivalent_models_and_refuse_degraded_ones(tmp_path):
    out = tmp_path / "rates.json"
    proc = subprocess.run(
        [sys.executable, "-m", "ml_service.release.error_rates", "--models", str(MODELS),
         "--flip", str(FLIP), "--json", str(out),
         "--config", str(ROOT / "environments/quality-gate.yaml")],
        capture_output=True, text=True, timeout=600, check=False, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    doc = json.loads(out.read_text())
    equivalent, degraded = doc["families"]
    assert (equivalent["should_refuse"], degraded["should_refuse"]) == (False, True)
    assert equivalent["pairs"] == degraded["pairs"] == MODELS
    # flipped labels change more predictions than another model seed, and cost F1
    assert equivalent["mean_rows_labelled_apart"] < degraded["mean_rows_labelled_apart"]
    assert degraded["mean_difference"]["f1_score_macro"] < 0
    # the rules as committed: equivalent models rarely refused, degraded ones almost always
    assert equivalent["refused"]["as configured"] <= MOST_EQUIVALENT_REFUSED, equivalent
    assert degraded["refused"]["as configured"] >= LEAST_DEGRADED_REFUSED, degraded
    # point and interval decisions side by side: the point rules refuse no more equivalent
    # models than the committed ones, the interval rules no fewer degraded ones
    assert equivalent["refused"]["point"] <= MOST_EQUIVALENT_REFUSED, equivalent
    assert degraded["refused"]["interval"] >= degraded["refused"]["point"], degraded
    assert "| arriving model | rows labelled apart (mean) | point rules | interval rules " in (
        proc.stdout
    )
    assert f"| degraded ({FLIP:.0%} of labels flipped): should be refused |" in proc.stdout
