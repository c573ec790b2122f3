"""The quality gate through the real `scripts/gitops.py release` / `promote` against the real
MLflow server of the session: models trained by `python -m ml_service.training`, evaluated by
`mlflow.models.evaluate`, rules checked by `mlflow.validate_evaluation_results`. Only `gh` is fake
(tests/gitops/fake_gh.py: the GitHub API cannot be reached from here); the PR bodies it records
are checked for the metrics table.

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

GOOD = ()  # the default hyper-parameters
# One boosting round with a tiny learning rate: it predicts the majority class (benign) for
# every row, so recall of the malignant class falls to 0 and macro F1 below 0.4.
CRIPPLED = ("--max-iter", "1", "--learning-rate", "0.01")
OVERRIDE = "hotfix INC-42: accepted by the on-call lead"


@pytest.fixture(scope="module")
def models(mlflow_server, tmp_path_factory):
    """Three versions of a fresh registered model: v1 good, v2 the same training (equal), v3
    crippled."""
    from support.mlflow import train

    name = f"gate-{uuid.uuid4().hex[:8]}"
    out = tmp_path_factory.mktemp("gate-train")
    runs = {}
    for label, args in (("good", GOOD), ("equal", GOOD), ("crippled", CRIPPLED)):
        result = train(
            mlflow_server.tracking_uri,
            "--model-name",
            name,
            *args,
            output_json=out / f"{label}.json",
        )
        runs[label] = result
    assert [runs[k]["version"] for k in ("good", "equal", "crippled")] == ["1", "2", "3"]
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
    assert rows["recall_score"][0] == "—", "nothing leaves dev on its first release"
    assert rows["recall_score"][3] == "≥ 0.85" and rows["recall_score"][4] == "pass"
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
    assert "recall_score ≥ 0.85: candidate 0.0000" in err
    assert "--override-quality-gate" in err
    assert flow.head("gitops/dev") == main_before, "nothing pushed"
    assert len(flow.prs()) == prs_before
    assert "Traceback" not in err
    data = run_tags(mlflow_server.tracking_uri, runs["crippled"]["run_id"])
    assert data.tags["quality_gate.dev.verdict"] == "failed"
    assert "recall_score:min" in data.tags["quality_gate.dev.failed"]
    # Both models' evaluations and the difference are in the candidate's run.
    assert data.metrics["gate_dev_candidate_recall_score"] == 0.0
    assert data.metrics["gate_dev_baseline_recall_score"] > 0.85
    assert data.metrics["gate_dev_delta_recall_score"] < -0.85


def test_equal_model_passes_with_the_table_in_the_pr(flow, models, mlflow_server):
    name, runs = models
    ok(release(flow, name, "2", digest=DIGEST_B))
    body = flow.prs()[-1]["body"]
    assert "### Quality gate: ✅ passed" in body
    assert f"| metric | leaving (dev: {name} v1) | arriving ({name} v2) | difference" in body
    rows = table_rows(body)
    for metric in ("f1_score_macro", "roc_auc", "recall_score"):
        leaving, arriving, diff, threshold, result = rows[metric]
        assert leaving == arriving and diff == "+0.0000" and result == "pass", rows[metric]
        assert threshold
    assert rows["f1_score_macro"][3].startswith("drop ≤ 0.02 (≥ ")
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
    config = (ROOT / "environments/quality-gate.yaml").read_text()
    assert "    max_drop: 0.02\n" in config
    flow.commit_on_main(
        "typo",
        **{"environments/quality-gate.yaml": config.replace("max_drop: 0.02", "max_dorp: 0.02")},
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
    """`config` with the dotted key `where` set to `value` (None: deleted)."""
    *parents, last = where.split(".")
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
    ],
)
def test_threshold_file_is_validated(gate, tmp_path: Path, where: str, value, message: str):
    config = yaml.safe_load((ROOT / "environments/quality-gate.yaml").read_text())
    path = tmp_path / "quality-gate.yaml"
    path.write_text(yaml.safe_dump(edited(config, where, value)))
    with pytest.raises(gate.GateError) as exc:
        gate.load_config(path, "environments/quality-gate.yaml")
    assert str(exc.value).startswith("environments/quality-gate.yaml: ")
    assert message in str(exc.value)


def test_the_committed_thresholds_are_valid_and_known_to_mlflow(gate):
    config = gate.load_config(ROOT / "environments/quality-gate.yaml")
    assert {"f1_score_macro", "roc_auc", "recall_score"} <= set(config.thresholds)
    assert config.thresholds["recall_score"].min is not None
    assert config.evaluation.positive_class == "malignant"


def test_every_known_metric_comes_out_of_mlflow_evaluate(gate, models, mlflow_server, monkeypatch):
    """The gate's metric catalogue is what mlflow.models.evaluate really reports; the Python API
    gives the same verdict as the CLI."""
    name, _ = models
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server.tracking_uri)
    result = gate.run_gate(
        "dev", (name, "2"), (name, "1"), config_path=ROOT / "environments/quality-gate.yaml"
    )
    assert result.error is None and result.verdict == "passed"
    assert set(result.candidate.metrics) == set(gate.METRICS)
    assert result.candidate.metrics == result.baseline.metrics, "same training, same scores"


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
    served = [c for c in good.checks if c.metric.startswith("served_")]
    assert {c.metric for c in served} == {
        "served_f1_score_macro",
        "served_roc_auc",
        "served_recall_score",
    }
    assert good.served == {"source": str(tmp_path / "good"), "rows": 200}
    assert "| served_recall_score |" in good.markdown()

    wrong = run(served_log(tmp_path / "wrong", 200, flip=True))
    assert wrong.verdict == "failed"
    assert [c.metric for c in wrong.failed_checks] == ["served_recall_score"]  # below the floor
    assert "served_recall_score" in wrong.failure_text()

    few = run(served_log(tmp_path / "few", 20))
    assert few.verdict == "passed"
    assert [c.rule for c in few.checks if c.rule == "served"] == ["served"]
    assert "skipped: 20 labelled rows" in few.markdown()
