"""The quality gate through the real `scripts/gitops.py release` / `promote` against the real
MLflow server of the session: models trained by `python -m ml_service.training`, evaluated by
`mlflow.models.evaluate`, bootstrapped (ml_service.release.intervals), rules checked by
`mlflow.validate_evaluation_results`. Only `gh` is fake (tests/gitops/fake_gh.py: the GitHub API
cannot be reached from here); the PR bodies it records are checked for the metrics table.

The models live under their own registered name, so the session's `ml-service` is untouched.
"""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT
from .test_gitops_release import DIGEST_A, DIGEST_B, REPOSITORY, Sandbox, make_sandbox, ok

pytestmark = pytest.mark.server

CONFIG = ROOT / "environments/quality-gate.yaml"

GOOD = ()  # the default hyper-parameters
# One boosting round with a tiny learning rate: it predicts the majority class (benign) for
# every row, so recall of the malignant class falls to 0 and macro F1 below 0.4.
CRIPPLED = ("--max-iter", "1", "--learning-rate", "0.01")
RESEEDED = ("--model-seed", "7")  # the same configuration and split, another model seed
OVERRIDE = "hotfix INC-42: accepted by the on-call lead"


@pytest.fixture(scope="module")
def models(mlflow_server, tmp_path_factory):
    """Four versions of a fresh registered model: v1 good, v2 the same training (equal), v3
    crippled, v4 the good configuration with another model seed."""
    from support.mlflow import train

    name = f"gate-{uuid.uuid4().hex[:8]}"
    out = tmp_path_factory.mktemp("gate-train")
    runs = {}
    trainings = (("good", GOOD), ("equal", GOOD), ("crippled", CRIPPLED), ("reseeded", RESEEDED))
    for label, args in trainings:
        result = train(
            mlflow_server.tracking_uri,
            "--model-name",
            name,
            *args,
            output_json=out / f"{label}.json",
        )
        runs[label] = result
    assert [runs[label]["version"] for label, _ in trainings] == ["1", "2", "3", "4"]
    assert runs["crippled"]["metrics"]["recall_malignant"] < 0.5
    return name, runs


@pytest.fixture(scope="module")
def flow(models, mlflow_server, tmp_path_factory):
    """One sandbox repository for the whole release story of this module (tests run in order)."""
    from support.mlflow import mlflow_env

    sb = make_sandbox(tmp_path_factory.mktemp("gate-sandbox"))
    sb.env = {**mlflow_env(mlflow_server.tracking_uri), **{k: sb.env[k] for k in sb.env}}
    sb.env["MLFLOW_TRACKING_URI"] = mlflow_server.tracking_uri
    sb.env.pop("MLFLOW_UI_URL", None)
    return sb


def release(sb: Sandbox, name: str, version: str, *extra: str, digest: str = DIGEST_A):
    return sb.gitops(
        "release",
        "--image-repository",
        REPOSITORY,
        "--tag",
        sb.head("main"),
        "--digest",
        digest,
        "--model-name",
        name,
        "--model-version",
        version,
        *extra,
        override=False,
    )


def run_tags(tracking_uri: str, run_id: str) -> dict:
    from mlflow import MlflowClient

    return MlflowClient(tracking_uri=tracking_uri).get_run(run_id).data


def table_rows(body: str) -> dict[str, list[str]]:
    rows = {}
    for line in body.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and len(cells) == 6:
            rows[cells[0]] = cells[1:]
    return rows


def test_first_release_has_no_baseline_and_checks_absolute_floors(flow, models, mlflow_server):
    name, runs = models
    ok(release(flow, name, "1"))
    body = flow.prs()[-1]["body"]
    assert "### Quality gate: ✅ passed" in body
    rows = table_rows(body)
    leaving, arriving, diff, rule, result = rows["recall_score"]
    assert leaving == diff == "—", "nothing leaves dev on its first release"
    # the estimate and its interval
    assert re.fullmatch(r"0\.\d{4} \[0\.\d{4}, [01]\.\d{4}\]", arriving), arriving
    assert rule == "≥ 0.85 · point" and result == "pass"
    # A tolerated drop needs a leaving model: listed, not applied.
    assert (
        rows["roc_auc"][3] == "drop ≤ 0.01 · interval" and rows["roc_auc"][4] == "n/a: no baseline"
    )
    sliced = [k for k in rows if k.startswith("recall_score · mean_radius ")]
    assert len(sliced) == 3, rows
    assert f"runs/{runs['good']['run_id']}" in body
    data = run_tags(mlflow_server.tracking_uri, runs["good"]["run_id"])
    assert data.tags["quality_gate.dev.verdict"] == "passed"
    assert data.tags["quality_gate.dev.baseline"] == "none"
    flow.merge("gitops/dev")


def test_crippled_model_is_refused_and_nothing_is_pushed(flow, models, mlflow_server):
    name, runs = models
    main_before, prs_before = flow.head("main"), len(flow.prs())
    proc = release(flow, name, "3", digest=DIGEST_B)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    err = proc.stderr
    assert f"quality gate failed for {name} v3 against dev ({name} v1)" in err
    # Each failed threshold with both models' numbers and the difference.
    for metric in ("f1_score_macro", "recall_score"):
        line = next(x for x in err.splitlines() if x.strip().startswith(f"- {metric}"))
        assert re.search(r"candidate \d\.\d{4}, dev \d\.\d{4}, difference -\d\.\d{4}", line), line
    assert "recall_score ≥ 0.85 · point: candidate 0.0000" in err
    # an interval rule: the difference's interval, wholly below the tolerated drop
    f1 = next(x for x in err.splitlines() if x.strip().startswith("- f1_score_macro"))
    assert re.search(r"interval: lower bound ≥ -0\.\d{4}: .* \[-0\.\d{4}, -0\.\d{4}\]$", f1), f1
    assert "--override-quality-gate" in err
    assert flow.head("gitops/dev") == main_before, "nothing pushed"
    assert len(flow.prs()) == prs_before
    assert "Traceback" not in err
    data = run_tags(mlflow_server.tracking_uri, runs["crippled"]["run_id"])
    assert data.tags["quality_gate.dev.verdict"] == "failed"
    assert "recall_score:min" in data.tags["quality_gate.dev.failed"]
    assert "recall_score[mean_radius 3/3 " in data.tags["quality_gate.dev.failed"]
    # Both models' evaluations and the difference are in the candidate's run.
    assert data.metrics["gate_dev_candidate_recall_score"] == 0.0
    assert data.metrics["gate_dev_baseline_recall_score"] > 0.85
    assert data.metrics["gate_dev_delta_recall_score"] < -0.85
    # ...and the intervals: the whole interval of the F1 difference below zero
    assert data.metrics["gate_dev_delta_f1_score_macro_ci_high"] < 0
    assert data.metrics["gate_dev_candidate_recall_score_ci_high"] == 0.0
    largest = "gate_dev_slice_mean_radius_3of3"
    assert data.metrics[f"{largest}_candidate_recall_score"] == 0.0
    assert data.metrics[f"{largest}_delta_recall_score"] == pytest.approx(
        -data.metrics[f"{largest}_baseline_recall_score"]
    )


def test_equal_model_passes_with_the_table_in_the_pr(flow, models, mlflow_server):
    name, runs = models
    ok(release(flow, name, "2", digest=DIGEST_B))
    body = flow.prs()[-1]["body"]
    assert "### Quality gate: ✅ passed" in body
    assert (
        f"| metric | leaving (dev: {name} v1) | arriving ({name} v2) | difference [95% interval] "
        "| rule · decided on | result |"
    ) in body
    rows = table_rows(body)
    for metric in ("f1_score_macro", "roc_auc"):
        leaving, arriving, diff, _, result = rows[metric]
        assert leaving == arriving and result == "pass", rows[metric]
        assert diff == "+0.0000 [+0.0000, +0.0000]", "the same model: no difference in any resample"
    assert rows["f1_score_macro"][3] == "drop ≤ 0.03 · interval: lower bound ≥ -0.0300"
    assert rows["recall_score"][3] == "≥ 0.85 · point"
    middle = next(k for k in rows if k.startswith("recall_score · mean_radius 2/3 "))
    assert rows[middle][3].startswith("drop ≤ 0.2 · point: arriving ≥ 0.")
    assert "Intervals: paired bootstrap of the same rows, 1000 resamples" in body
    # Links to both runs.
    assert f"runs/{runs['good']['run_id']}" in body and f"runs/{runs['equal']['run_id']}" in body
    assert "environments/quality-gate.yaml" in body
    data = run_tags(mlflow_server.tracking_uri, runs["equal"]["run_id"])
    assert data.tags["quality_gate.dev.verdict"] == "passed"
    assert data.tags["quality_gate.dev.baseline"] == f"{name} v1"
    flow.merge("gitops/dev")
    ok(flow.gitops("promote", "dev", "staging", override=False))
    assert "### Quality gate: ✅ passed" in flow.prs()[-1]["body"]
    flow.merge("gitops/staging")


def test_override_ships_and_records_the_reason(flow, models, mlflow_server):
    name, runs = models
    ok(release(flow, name, "3", "--override-quality-gate", OVERRIDE))
    body = flow.prs()[-1]["body"]
    assert "### Quality gate: ⚠️ overridden" in body
    assert f"**Override** (`--override-quality-gate`): {OVERRIDE}" in body
    assert table_rows(body)["recall_score"][4] == "**fail**"
    data = run_tags(mlflow_server.tracking_uri, runs["crippled"]["run_id"])
    assert data.tags["quality_gate.dev.verdict"] == "overridden"
    assert data.tags["quality_gate.dev.override_reason"] == OVERRIDE
    flow.merge("gitops/dev")


def test_promotion_repeats_the_check_against_the_next_environment(flow, models, mlflow_server):
    """dev now runs the crippled v3 (overridden); staging runs v2: promoting is refused."""
    name, runs = models
    proc = flow.gitops("promote", "dev", "staging", override=False)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert f"quality gate failed for {name} v3 against staging ({name} v2)" in proc.stderr
    assert (
        yaml.safe_load(flow.file_on("main", "environments/staging/release.yaml"))["model"][
            "version"
        ]
        == "2"
    )
    data = run_tags(mlflow_server.tracking_uri, runs["crippled"]["run_id"])
    assert data.tags["quality_gate.staging.verdict"] == "failed"


def test_a_typo_in_the_thresholds_fails_naming_the_key(flow, models):
    name, _ = models
    config = CONFIG.read_text()
    assert "    max_drop: 0.03\n" in config
    flow.commit_on_main(
        "typo",
        **{"environments/quality-gate.yaml": config.replace("max_drop: 0.03", "max_dorp: 0.03")},
    )
    proc = release(flow, name, "2", "--force")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert proc.stderr.strip() == (
        "gitops: environments/quality-gate.yaml: thresholds.f1_score_macro.max_dorp: unknown key"
    )


# --------------------------------------------------------------------------- config validation


@pytest.fixture
def gate():
    from ml_service.release import quality_gate

    return quality_gate


def edited(config: dict, where: str, value) -> dict:
    """`config` with the dotted key `where` set to `value` (None: deleted); digits index lists."""
    *parents, last = (int(k) if k.isdigit() else k for k in where.split("."))
    node = config
    for key in parents:
        node = node[key]
    if value is None:
        del node[last]
    else:
        node[last] = value
    return config


@pytest.mark.parametrize(
    ("where", "value", "message"),
    [
        ("thresholds.roc_acu", {"min": 0.9}, "thresholds.roc_acu: unknown metric"),
        ("thresholds.roc_auc.max_dorp", 0.1, "thresholds.roc_auc.max_dorp: unknown key"),
        ("thresholds.log_loss", {"min": 0.1}, "thresholds.log_loss.min: lower is better"),
        ("thresholds.roc_auc.max_drop", -0.1, "thresholds.roc_auc.max_drop: Input should be"),
        ("thresholds.recall_score", {}, "thresholds.recall_score: no rule"),
        ("evaluation.seed", None, "evaluation.seed: Field required"),
        ("threshold", {}, "threshold: unknown key"),
        ("evaluation.test_size", "a quarter", "evaluation.test_size: Input should be a valid"),
        ("thresholds.roc_auc.decision", "bound", "thresholds.roc_auc.decision: Input should be "
         "'point' or 'interval'"),
        ("bootstrap.confidence", 1.5, "bootstrap.confidence: Input should be less than or equal"),
        ("bootstrap.resamples", 10**7, "bootstrap.resamples: Input should be less than or equal"),
        ("bootstrap.sead", 1, "bootstrap.sead: unknown key"),
        ("slices.0.bins", 1, "slices[0].bins: Input should be greater than or equal to 2"),
        ("slices.0.colum", "x", "slices[0].colum: unknown key"),
        ("slices.0.column", None, "slices[0].column: Field required"),
        ("slices.0.thresholds.roc_acu", {"min": 0.9},
         "slices[0].thresholds.roc_acu: unknown metric"),
        ("slices.0.thresholds.recall_score.max_rise", 0.1,
         "slices[0].thresholds.recall_score.max_rise: higher is better"),
        ("served.min_rows", 0, "served.min_rows: Input should be greater than or equal to 1"),
        ("served.min_row", 100, "served.min_row: unknown key"),
    ],
)  # fmt: skip
def test_threshold_file_is_validated(gate, tmp_path: Path, where: str, value, message: str):
    config = yaml.safe_load(CONFIG.read_text())
    path = tmp_path / "quality-gate.yaml"
    path.write_text(yaml.safe_dump(edited(config, where, value)))
    with pytest.raises(gate.GateError) as exc:
        gate.load_config(path, "environments/quality-gate.yaml")
    assert str(exc.value).startswith("environments/quality-gate.yaml: ")
    assert message in str(exc.value)


def test_the_committed_thresholds_are_valid_and_known_to_mlflow(gate):
    config = gate.load_config(CONFIG)
    assert {"f1_score_macro", "roc_auc", "recall_score"} <= set(config.thresholds)
    assert config.thresholds["recall_score"].min is not None
    assert config.evaluation.positive_class == "malignant"
    # Deliberate: every rule says what it decides on, and the file states its confidence level.
    raw = yaml.safe_load(CONFIG.read_text())
    rules = [*raw["thresholds"].values()]
    rules += [r for s in raw.get("slices", []) for r in s["thresholds"].values()]
    assert rules and all(r.get("decision") in ("point", "interval") for r in rules), rules
    assert 0 < raw["bootstrap"]["confidence"] < 1 and raw["bootstrap"]["resamples"] >= 1000
    assert config.slices, "at least one rule per slice of the held-out rows"


def test_every_known_metric_comes_out_of_mlflow_evaluate(gate, models, mlflow_server, monkeypatch):
    """The gate's metric catalogue is what mlflow.models.evaluate really reports; the Python API
    gives the same verdict as the CLI."""
    name, _ = models
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    result = gate.run_gate("dev", (name, "2"), (name, "1"), config_path=CONFIG)
    assert result.error is None and result.verdict == "passed"
    assert set(result.candidate.metrics) == set(gate.METRICS)
    assert result.candidate.metrics == result.baseline.metrics, "same training, same scores"


@pytest.fixture(scope="module")
def reseeded(models, mlflow_server):
    """The gate on v4 (model seed 7) against v1 (the default model seed), through the Python API."""
    from ml_service.release import quality_gate

    name, _ = models
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
        return quality_gate.run_gate("dev", (name, "4"), (name, "1"), config_path=CONFIG)


def test_a_retrain_with_another_model_seed_is_compared_not_refused(reseeded):
    """--model-seed changes the model, not the held-out rows: no split refusal, and an equivalent
    model passes."""
    result = reseeded
    assert result.error is None, result.error
    assert result.candidate.split_ok and result.baseline.split_ok
    assert result.verdict == "passed", result.failure_text()
    assert result.candidate.metrics["log_loss"] != result.baseline.metrics["log_loss"], (
        "another model seed, another model"
    )


def test_the_run_records_every_interval_and_decision(reseeded, models, mlflow_server):
    _, runs = models
    data = run_tags(mlflow_server.tracking_uri, runs["reseeded"]["run_id"])
    config = yaml.safe_load(CONFIG.read_text())
    for metric in config["thresholds"]:
        low = data.metrics[f"gate_dev_delta_{metric}_ci_low"]
        high = data.metrics[f"gate_dev_delta_{metric}_ci_high"]
        assert low <= high and low < 0.5 and high > -0.5, (metric, low, high)
        assert (
            data.metrics[f"gate_dev_candidate_{metric}_ci_low"]
            <= data.metrics[f"gate_dev_candidate_{metric}"]
            <= data.metrics[f"gate_dev_candidate_{metric}_ci_high"]
        )
    # every slice with both classes: values, difference, intervals
    middle = {k for k in data.metrics if k.startswith("gate_dev_slice_mean_radius_2of3_")}
    assert {
        "gate_dev_slice_mean_radius_2of3_candidate_recall_score",
        "gate_dev_slice_mean_radius_2of3_baseline_recall_score",
        "gate_dev_slice_mean_radius_2of3_delta_recall_score",
        "gate_dev_slice_mean_radius_2of3_delta_recall_score_ci_low",
        "gate_dev_slice_mean_radius_2of3_delta_recall_score_ci_high",
    } <= middle
    assert data.tags["quality_gate.dev.intervals"] == (
        "paired bootstrap, 1000 resamples stratified by class, seed 0, 0.95 percentile interval"
    )
    decisions = data.tags["quality_gate.dev.decisions"].split(", ")
    assert "roc_auc:max_drop:interval" in decisions and "recall_score:min:point" in decisions
    assert data.tags["quality_gate.dev.verdict"] == "passed"


def test_the_error_rate_script_measures_the_real_gate(reseeded, gate):
    """ml_service.release.error_rates fits its models in-process; fitted from the same arguments
    as v1 and v4, they get the very comparisons the gate made from the registered versions."""
    from ml_service.release import error_rates
    from ml_service.training.train import load_dataset, split

    config = gate.load_config(CONFIG)
    args = error_rates.training_args(config)
    data = split(*load_dataset(), args.test_size, args.seed)
    rows = gate.held_out(config)
    fit = [
        error_rates.fitted_scores(args, seed, data, rows, config.evaluation.positive_class)
        for seed in (7, 42)
    ]
    ours = gate.compare(config, rows, *fit)
    theirs = reseeded.comparisons
    assert [(c.metric, c.slice) for c in ours] == [(c.metric, c.slice) for c in theirs]
    for a, b in zip(ours, theirs, strict=True):
        if b.estimate is None:
            assert a.estimate is None and a.note == b.note
            continue
        for part in ("candidate", "baseline", "candidate_interval", "difference_interval"):
            assert getattr(a.estimate, part) == pytest.approx(getattr(b.estimate, part), abs=1e-12)
    verdicts = [c.passed for c in gate.decide(config, ours)]
    assert verdicts == [c.passed for c in reseeded.checks if c.rule != "split"]


def test_public_links_never_carry_credentials(gate, monkeypatch):
    monkeypatch.delenv("MLFLOW_UI_URL", raising=False)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "https://user:s3cret@mlflow.example.com:8443/ml/")
    assert gate.public_base_url() == "https://mlflow.example.com:8443/ml"
    monkeypatch.setenv("MLFLOW_UI_URL", "https://mlflow.example.com")
    assert gate.public_base_url() == "https://mlflow.example.com"


def served_log(root: Path, n: int, *, flip: bool = False) -> str:
    """A payload log (ml_service.payload_format, as serving writes it) of the data set's first
    `n` rows with their labels (`flip`: every label the wrong class)."""
    from ml_service.payload_format import DirStore, encode, object_key
    from ml_service.training.train import load_dataset

    x, y = load_dataset()
    store = DirStore(root)
    rows, labels = [], []
    for i in range(n):
        pid = f"pid-{i}"
        label = str(y.iloc[i])
        if flip:
            label = "benign" if label == "malignant" else "malignant"
        rows.append({"prediction_id": pid, "features": dict(x.iloc[i].items())})
        labels.append({"prediction_id": pid, "label": label})
    store.put(object_key("", "predictions", 1.7e9, "test", 1), encode(rows))
    store.put(object_key("", "labels", 1.7e9, "test", 2), encode(labels))
    return str(root)


def test_the_gate_also_scores_recent_labelled_traffic(
    gate, models, mlflow_server, monkeypatch, tmp_path
):
    """With --served-data the rules hold on served rows too: an equal model passes on traffic
    that agrees with it, and is refused on traffic whose truth says it is wrong; too few
    labelled rows skip the served checks, saying so."""
    name, _ = models
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    config = ROOT / "environments/quality-gate.yaml"

    def run(log: str):
        return gate.run_gate("dev", (name, "2"), (name, "1"), config_path=config, served_data=log)

    good = run(served_log(tmp_path / "good", 200))
    assert good.error is None and good.verdict == "passed", good.failure_text()
    served = [c for c in good.checks if c.slice == gate.SERVED]
    assert {c.metric for c in served} == {"f1_score_macro", "roc_auc", "recall_score"}
    assert all(c.applied for c in served)
    assert good.served == {"source": str(tmp_path / "good"), "rows": 200}
    assert "| recall_score · served traffic |" in good.markdown()
    assert {"served_recall_score", "recall_score"} <= set(good.candidate.metrics)

    wrong = run(served_log(tmp_path / "wrong", 200, flip=True))
    assert wrong.verdict == "failed"
    # both models are equally wrong there (differences pass), but recall is below the floor
    assert [c.label for c in wrong.failed_checks] == ["recall_score · served traffic"]
    assert "recall_score · served traffic" in wrong.failure_text()

    few = run(served_log(tmp_path / "few", 20))
    assert few.verdict == "passed"
    assert [c.rule for c in few.checks if c.rule == "served"] == ["served"]
    assert "skipped: 20 labelled rows" in few.markdown()
