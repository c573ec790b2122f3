"""Quality gate: a model reaches an environment only if it is as good as the one it replaces.

    python -m ml_service.quality_gate --env dev --model-version 7 [--override REASON]

Both models (the candidate and the version the environment pins in
`environments/<env>/release.yaml`, read from the MLflow registry) are scored on the fixed held-out
split with MLflow's own evaluation (`mlflow.models.evaluate`, default classifier evaluator, plus a
macro-F1 metric), and each rule of `environments/quality-gate.yaml` becomes an
`mlflow.models.MetricThreshold` checked by `mlflow.validate_evaluation_results`. The result (both
models' metrics, the difference, pass/fail per rule, an override reason) is logged to the
candidate's MLflow run. `scripts/gitops.py release` and `promote` call `run_gate` and refuse a
failing candidate; their pull requests carry `GateResult.markdown()`.

Exit codes of the CLI: 0 passed (or overridden), 3 failed, 2 bad input or the gate could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ml_service.redact import redact, without_userinfo

DEFAULT_CONFIG = "environments/quality-gate.yaml"
EXIT_FAILED = 3
EXIT_ERROR = 2
TAG_PREFIX = "quality_gate"
MAX_REASON = 500

# Metrics the gate may use: name as `mlflow.models.evaluate` reports it -> (higher is better, what).
# The default classifier evaluator computes all but f1_score_macro (an extra metric, below).
METRICS: dict[str, tuple[bool, str]] = {
    "f1_score_macro": (True, "macro F1 (both classes count equally)"),
    "roc_auc": (True, "ROC AUC (positive class)"),
    "recall_score": (True, "recall of the positive class"),
    "precision_score": (True, "precision of the positive class"),
    "f1_score": (True, "F1 of the positive class"),
    "accuracy_score": (True, "accuracy"),
    "precision_recall_auc": (True, "precision-recall AUC (positive class)"),
    "log_loss": (False, "log loss"),
}
# Shown in the table for context even without a rule.
CONTEXT_METRICS = ("accuracy_score", "precision_score")


class GateError(Exception):
    """The gate could not run (bad configuration, registry unreachable, unknown version...)."""


# --------------------------------------------------------------------------- configuration


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Evaluation(_Strict):
    # The fixed held-out split: ml_service.train's --seed and --test-size.
    seed: int = Field(ge=0)
    test_size: float = Field(gt=0.0, lt=1.0)
    positive_class: str = Field(min_length=1)


class Rule(_Strict):
    min: float | None = None
    max: float | None = None
    max_drop: float | None = Field(default=None, ge=0.0)
    max_rise: float | None = Field(default=None, ge=0.0)

    @field_validator("min", "max", "max_drop", "max_rise")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v


class Served(_Strict):
    # Recent labelled traffic (--served-data): the rules hold there too once this many rows
    # carry a label; fewer, and the served checks are skipped (the table says so).
    min_rows: int = Field(default=100, ge=1)


class GateConfig(_Strict):
    evaluation: Evaluation
    thresholds: dict[str, Rule] = Field(min_length=1)
    served: Served = Served()

    @model_validator(mode="after")
    def _rules_fit_metrics(self) -> GateConfig:
        for name, rule in self.thresholds.items():
            if name not in METRICS:
                raise ValueError(
                    f"thresholds.{name}: unknown metric (known: {', '.join(sorted(METRICS))})"
                )
            greater = METRICS[name][0]
            set_keys = {k for k, v in rule.model_dump().items() if v is not None}
            if not set_keys:
                raise ValueError(f"thresholds.{name}: no rule (min, max, max_drop or max_rise)")
            wrong = set_keys & ({"max", "max_rise"} if greater else {"min", "max_drop"})
            if wrong:
                direction = "higher" if greater else "lower"
                fits = "min / max_drop" if greater else "max / max_rise"
                raise ValueError(
                    f"thresholds.{name}.{sorted(wrong)[0]}: {direction} is better for {name}, "
                    f"use {fits}"
                )
        return self


def load_config(path: Path, name: str | None = None) -> GateConfig:
    """The gate configuration; any mistake is a GateError naming the file and the key."""
    shown = name or str(path)
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise GateError(f"{shown}: cannot read it ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise GateError(f"{shown}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise GateError(f"{shown}: expected a mapping with `evaluation` and `thresholds`")
    try:
        return GateConfig.model_validate(raw)
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            where = ".".join(str(p) for p in err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"{where}: {msg}" if where else msg)
        raise GateError(f"{shown}: " + "; ".join(problems)) from None


# --------------------------------------------------------------------------- result


@dataclass
class ModelInfo:
    name: str
    version: str
    run_id: str = ""
    run_url: str = ""
    metrics: dict[str, float] = field(default_factory=dict)
    split_ok: bool | None = None  # trained on the complement of the gate's held-out split?

    @property
    def label(self) -> str:
        return f"{self.name} v{self.version}"


@dataclass
class Check:
    metric: str
    rule: str  # min / max / max_drop / max_rise / split / served
    limit: float | None  # the MetricThreshold value the candidate was held to
    setting: float | None  # the number in the configuration
    passed: bool
    message: str = ""  # MLflow's validation message when it failed

    def describe(self) -> str:
        if self.rule == "split":
            return "neither model trained on the held-out rows"
        if self.rule == "served":
            return self.message
        words = {
            "min": f"≥ {self.setting:g}",
            "max": f"≤ {self.setting:g}",
            "max_drop": f"drop ≤ {self.setting:g}",
            "max_rise": f"rise ≤ {self.setting:g}",
        }[self.rule]
        if self.rule in ("max_drop", "max_rise") and self.limit is not None:
            words += f" ({'≥' if self.rule == 'max_drop' else '≤'} {self.limit:.4f})"
        return words


@dataclass
class GateResult:
    env: str
    candidate: ModelInfo
    baseline: ModelInfo | None  # None: nothing is released to env yet
    checks: list[Check] = field(default_factory=list)
    override_reason: str | None = None
    error: str | None = None  # the gate could not run
    served: dict[str, Any] | None = None  # {"source", "rows"} of --served-data

    @property
    def failed_checks(self) -> list[Check]:
        return [c for c in self.checks if not c.passed]

    @property
    def verdict(self) -> str:
        if self.error is None and not self.failed_checks:
            return "passed"
        return "overridden" if self.override_reason else "failed"

    @property
    def passed(self) -> bool:
        return self.verdict != "failed"

    def failure_text(self) -> str:
        if self.error:
            return f"quality gate could not run: {self.error}"
        against = self.baseline.label if self.baseline else "no baseline"
        lines = [f"quality gate failed for {self.candidate.label} against {self.env} ({against}):"]
        for c in self.failed_checks:
            if c.rule == "split":
                lines.append(f"  - held-out split: {c.message}")
                continue
            cand = self.candidate.metrics.get(c.metric)
            base = self.baseline.metrics.get(c.metric) if self.baseline else None
            nums = f"candidate {_fmt(cand)}"
            if base is not None:
                nums += f", {self.env} {_fmt(base)}, difference {_delta(cand, base)}"
            lines.append(f"  - {c.metric} {c.describe()}: {nums}")
        return "\n".join(lines)

    def markdown(self) -> str:
        head = {
            "passed": "✅ passed",
            "failed": "❌ failed",
            "overridden": "⚠️ overridden",
        }[self.verdict]
        leaving = f"{self.env}: {self.baseline.label}" if self.baseline else f"{self.env}: none"
        out = [f"### Quality gate: {head}", ""]
        if self.error:
            out += [f"The gate could not run: {self.error}", ""]
        out += [
            f"| metric | leaving ({leaving}) | arriving ({self.candidate.label}) | difference "
            "| threshold | result |",
            "| --- | ---: | ---: | ---: | --- | --- |",
        ]
        rows = {c.metric for c in self.checks if c.rule != "split"}
        for c in self.checks:
            cand = self.candidate.metrics.get(c.metric)
            base = self.baseline.metrics.get(c.metric) if self.baseline else None
            if c.rule == "served":
                out.append(f"| served traffic | | | | {c.describe()} | skipped |")
                continue
            if c.rule == "split":
                base_ok = self.baseline.split_ok if self.baseline else None
                out.append(
                    f"| held-out split | {_mark(base_ok)} "
                    f"| {_mark(self.candidate.split_ok)} | | {c.describe()} "
                    f"| {'pass' if c.passed else '**fail**'} |"
                )
                continue
            out.append(
                f"| {c.metric} | {_fmt(base)} | {_fmt(cand)} | {_delta(cand, base)} "
                f"| {c.describe()} | {'pass' if c.passed else '**fail**'} |"
            )
        for name in CONTEXT_METRICS:
            if name in rows:
                continue
            cand = self.candidate.metrics.get(name)
            base = self.baseline.metrics.get(name) if self.baseline else None
            if cand is not None or base is not None:
                out.append(f"| {name} | {_fmt(base)} | {_fmt(cand)} | {_delta(cand, base)} | | |")
        out.append("")
        runs = [f"arriving: {_run_link(self.candidate)}"]
        if self.baseline:
            runs.insert(0, f"leaving: {_run_link(self.baseline)}")
        out.append("MLflow runs — " + " · ".join(runs))
        if self.override_reason:
            out += ["", f"**Override** (`--override-quality-gate`): {self.override_reason}"]
        out += [
            "",
            "Thresholds: `environments/quality-gate.yaml`; evaluation: `mlflow.models.evaluate` on "
            "the fixed held-out split, rules checked by `mlflow.validate_evaluation_results`.",
        ]
        if self.served:
            out[-1] += (
                f" `served_*`: the same rules on {self.served['rows']} labelled rows of served "
                f"traffic ({self.served['source']})."
            )
        return "\n".join(out)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["verdict"] = self.verdict
        return doc


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


def _delta(cand: float | None, base: float | None) -> str:
    return "—" if cand is None or base is None else f"{cand - base:+.4f}"


def _mark(ok: bool | None) -> str:
    return {True: "yes", False: "**no**", None: "—"}[ok]


def _run_link(m: ModelInfo) -> str:
    if not m.run_id:
        return f"{m.label} (no run)"
    return (
        f"[{m.label}, run {m.run_id[:8]}]({m.run_url})"
        if m.run_url
        else f"{m.label} run {m.run_id}"
    )


# --------------------------------------------------------------------------- evaluation


def public_base_url() -> str:
    """Where people open MLflow: MLFLOW_UI_URL, else the tracking URI without credentials."""
    raw = os.environ.get("MLFLOW_UI_URL") or os.environ.get("MLFLOW_TRACKING_URI", "")
    parts = urlsplit(without_userinfo(raw))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ""
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


def held_out(config: GateConfig):
    """The fixed held-out split as a DataFrame with a `label` column, and its fingerprint."""
    from ml_service.training.train import fingerprint, load_dataset, split

    x, y = load_dataset()
    data = split(x, y, config.evaluation.test_size, config.evaluation.seed)
    frame = data.x_test.copy()
    frame["label"] = data.y_test.to_numpy()
    return frame, fingerprint(data.x_test, data.y_test)


def _load(client, name: str, version: str, tmp: Path):
    """A registered version as a pyfunc model, its run id and its training metadata.

    skops must not trust the type list a model file carries about itself: the file is checked
    with the rule serving loads by (model_format.trusted_types) before MLflow loads it."""
    import mlflow
    from mlflow.exceptions import MlflowException

    from ml_service.model_format import TRAINING_KEY, ForeignTypesError, trusted_types

    try:
        mv = client.get_model_version(name, version)
    except MlflowException:
        raise GateError(f"model {name} version {version} is not in the registry") from None
    dst = tmp / f"{name}-{version}"
    dst.mkdir(parents=True)
    local = Path(
        mlflow.artifacts.download_artifacts(
            artifact_uri=f"models:/{name}/{version}", dst_path=str(dst)
        )
    )
    for skops_file in local.rglob("*.skops"):
        try:
            trusted_types(skops_file)
        except ForeignTypesError as exc:
            raise GateError(f"{name} v{version}: {exc}") from None
    previous = os.environ.get("MLFLOW_ALLOW_PICKLE_DESERIALIZATION")
    os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = "true"  # checked just above
    try:
        model = mlflow.pyfunc.load_model(str(local))
    finally:
        if previous is None:
            os.environ.pop("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", None)
        else:
            os.environ["MLFLOW_ALLOW_PICKLE_DESERIALIZATION"] = previous
    training = (model.metadata.metadata or {}).get(TRAINING_KEY) or {}
    return model, mv.run_id or "", training


def _f1_macro():
    import mlflow
    from mlflow.metrics import MetricValue
    from sklearn.metrics import f1_score

    def eval_fn(predictions, targets):
        return MetricValue(
            aggregate_results={
                "f1_score_macro": float(f1_score(targets, predictions, average="macro"))
            }
        )

    return mlflow.models.make_metric(eval_fn=eval_fn, greater_is_better=True, name="f1_score_macro")


def _evaluate(model, frame, config: GateConfig, prefix: str) -> dict[str, float]:
    """mlflow.models.evaluate into the active run; metric names without the prefix."""
    import mlflow

    result = mlflow.models.evaluate(
        model,
        frame,
        targets="label",
        model_type="classifier",
        evaluators="default",
        evaluator_config={
            "pos_label": config.evaluation.positive_class,
            "log_model_explainability": False,
            "metric_prefix": prefix,
            "log_metrics_with_dataset_info": False,
        },
        extra_metrics=[_f1_macro()],
    )
    return {
        k.removeprefix(prefix): float(v)
        for k, v in result.metrics.items()
        if k.removeprefix(prefix) in METRICS
    }


def _thresholds(config: GateConfig, baseline: Mapping[str, float] | None, prefix: str = ""):
    """(metric, rule, setting, MetricThreshold or None when it needs a missing baseline); with a
    prefix, for the metrics of that name (`served_`)."""
    from mlflow.models import MetricThreshold

    for name, rule in config.thresholds.items():
        greater, metric = METRICS[name][0], prefix + name
        for key, setting in rule.model_dump().items():
            if setting is None:
                continue
            if key in ("min", "max"):
                yield (
                    metric,
                    key,
                    setting,
                    MetricThreshold(threshold=float(setting), greater_is_better=greater),
                )
                continue
            # MetricThreshold's baseline comparisons (min_absolute_change / min_relative_change)
            # demand an improvement; a tolerated drop is a value threshold derived from the
            # baseline's score on the same split.
            if baseline is None or metric not in baseline:
                yield metric, key, setting, None
                continue
            limit = baseline[metric] - setting if greater else baseline[metric] + setting
            yield (
                metric,
                key,
                setting,
                MetricThreshold(threshold=float(limit), greater_is_better=greater),
            )


def _validate(
    config: GateConfig, candidate: ModelInfo, baseline: ModelInfo | None, prefix: str = ""
) -> list[Check]:
    import mlflow
    from mlflow.models.evaluation import EvaluationResult
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    checks = []
    cand_result = EvaluationResult(metrics=candidate.metrics, artifacts={})
    base_result = EvaluationResult(metrics=baseline.metrics, artifacts={}) if baseline else None
    for metric, key, setting, threshold in _thresholds(
        config, baseline.metrics if baseline else None, prefix
    ):
        if threshold is None:
            # Nothing released to the environment yet: only absolute bounds can apply.
            checks.append(Check(metric, key, None, setting, True, "no baseline"))
            continue
        try:
            mlflow.validate_evaluation_results({metric: threshold}, cand_result, base_result)
        except ModelValidationFailedException as exc:
            checks.append(Check(metric, key, threshold.threshold, setting, False, exc.message))
        else:
            checks.append(Check(metric, key, threshold.threshold, setting, True))
    if prefix:
        return checks
    split_ok = candidate.split_ok and (baseline is None or baseline.split_ok)
    why = []
    for m in (candidate, baseline):
        if m is not None and not m.split_ok:
            why.append(f"{m.label} was not trained with this split (seed/test_size differ)")
    checks.append(Check("held-out split", "split", None, None, bool(split_ok), "; ".join(why)))
    return checks


def _log(result: GateResult, config_path: str) -> None:
    import mlflow

    env = result.env
    tags = {
        f"{TAG_PREFIX}.{env}.verdict": result.verdict,
        f"{TAG_PREFIX}.{env}.baseline": result.baseline.label if result.baseline else "none",
        f"{TAG_PREFIX}.{env}.checked_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        f"{TAG_PREFIX}.{env}.config": config_path,
    }
    if result.override_reason:
        tags[f"{TAG_PREFIX}.{env}.override_reason"] = result.override_reason
    failed = ", ".join(f"{c.metric}:{c.rule}" for c in result.failed_checks)
    tags[f"{TAG_PREFIX}.{env}.failed"] = failed or "none"
    mlflow.set_tags(tags)
    if result.baseline:
        deltas = {
            f"gate_{env}_delta_{k}": v - result.baseline.metrics[k]
            for k, v in result.candidate.metrics.items()
            if k in result.baseline.metrics
        }
        mlflow.log_metrics(deltas)
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / f"{env}.json").write_text(json.dumps(result.to_json(), indent=1))
        (Path(tmp) / f"{env}.md").write_text(result.markdown() + "\n")
        mlflow.log_artifacts(tmp, artifact_path=TAG_PREFIX)


def run_gate(
    env: str,
    candidate: tuple[str, str],
    baseline: tuple[str, str] | None,
    *,
    config_path: Path,
    config_name: str | None = None,
    override_reason: str | None = None,
    served_data: str | None = None,
    served_since: str | None = None,
) -> GateResult:
    """Evaluate `candidate` (name, version) against `baseline` (what env runs, None if nothing)
    on the held-out split (and on the labelled served rows of the payload log at `served_data`,
    from `served_since` on), log everything to the candidate's run, and return the verdict.

    Raises GateError only for a broken configuration; a gate that cannot reach the registry
    returns a result with `error` set (failed unless overridden)."""
    config_name = config_name or str(config_path)
    config = load_config(config_path, config_name)
    reason = clean_reason(override_reason)
    result = GateResult(env, ModelInfo(*candidate), None, override_reason=reason)
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        result.error = "MLFLOW_TRACKING_URI is not set (the gate reads both models from it)"
        return result
    try:
        # MLflow prints run links (with the tracking URI as given) on stdout: not into logs.
        with contextlib.redirect_stdout(io.StringIO()):
            served = (served_data, served_since) if served_data else None
            _run(result, config, baseline, config_name, served)
    except GateError as exc:
        result.error = str(exc)
    except Exception as exc:  # the registry or an artifact store said no: report, never trace
        result.error = f"{type(exc).__name__}: {redact(str(exc))[:500]}"
    return result


def _served_frame(uri: str, since: str | None, columns: list[str]):
    """The labelled served rows as a frame like the held-out one (features + `label`)."""
    import pandas as pd

    from ml_service.payload_format import labelled_rows

    rows, labels, _ids, _counts = labelled_rows(uri, columns, since)
    frame = pd.DataFrame(rows, columns=columns, dtype="float64")
    frame["label"] = labels
    return frame


def _run(result: GateResult, config: GateConfig, baseline, config_path: str, served=None) -> None:
    import logging

    import mlflow

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    client = mlflow.MlflowClient()
    frame, split_fp = held_out(config)
    base_url = public_base_url()
    with tempfile.TemporaryDirectory() as tmp:
        cand_model, cand_run, cand_training = _load(client, *_pair(result.candidate), Path(tmp))
        if not cand_run:
            raise GateError(f"{result.candidate.label} has no MLflow run to log the result to")
        result.candidate.run_id = cand_run
        result.candidate.split_ok = cand_training.get("test_fingerprint") == split_fp
        base_model = None
        if baseline is not None:
            result.baseline = ModelInfo(*baseline)
            try:
                if tuple(baseline) == _pair(result.candidate):
                    base_model, base_run, base_training = cand_model, cand_run, cand_training
                else:
                    base_model, base_run, base_training = _load(client, *baseline, Path(tmp))
            except GateError as exc:
                # Still recorded on the candidate's run (with the override reason, if any).
                result.error = f"{result.env} runs {result.baseline.label}: {exc}"
            else:
                result.baseline.run_id = base_run
                result.baseline.split_ok = base_training.get("test_fingerprint") == split_fp
        for m in (result.candidate, result.baseline):
            if m is not None and m.run_id and base_url:
                exp = client.get_run(m.run_id).info.experiment_id
                m.run_url = f"{base_url}/#/experiments/{exp}/runs/{m.run_id}"
        with mlflow.start_run(run_id=cand_run):
            env = result.env
            result.candidate.metrics = _evaluate(
                cand_model, frame, config, f"gate_{env}_candidate_"
            )
            if base_model is cand_model:
                result.baseline.metrics = dict(result.candidate.metrics)
            elif base_model is not None:
                result.baseline.metrics = _evaluate(
                    base_model, frame, config, f"gate_{env}_baseline_"
                )
            if result.error is None:
                result.checks = _validate(config, result.candidate, result.baseline)
            if served is not None and result.error is None:
                result.checks += _served_checks(
                    result, config, served, list(frame.columns[:-1]), cand_model, base_model
                )
            _log(result, config_path)


def _served_checks(result, config, served, columns, cand_model, base_model) -> list[Check]:  # type: ignore[no-untyped-def]
    """Both models on the labelled served rows (metrics `served_*`), the same rules on them."""
    uri, since = served
    frame = _served_frame(uri, since, columns)
    result.served = {"source": uri, "rows": len(frame)}
    if len(frame) < config.served.min_rows:
        why = f"skipped: {len(frame)} labelled rows, fewer than served.min_rows"
        return [Check("served traffic", "served", None, config.served.min_rows, True, why)]
    env = result.env
    for model, info, who in ((cand_model, result.candidate, "candidate"),
                             (base_model, result.baseline, "baseline")):  # fmt: skip
        if model is not None and info is not None:
            metrics = _evaluate(model, frame, config, f"gate_{env}_served_{who}_")
            info.metrics.update({f"served_{k}": v for k, v in metrics.items()})
    return _validate(config, result.candidate, result.baseline, prefix="served_")


def _pair(m: ModelInfo) -> tuple[str, str]:
    return (m.name, m.version)


def clean_reason(reason: str | None) -> str | None:
    """An override reason as it is recorded: one line, printable, bounded."""
    if reason is None:
        return None
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in reason).split())
    if not text:
        raise GateError("an override needs a reason (--override-quality-gate 'why')")
    return text[:MAX_REASON]


# --------------------------------------------------------------------------- CLI


def _release_state(repo: Path, env: str) -> tuple[str, str] | None:
    path = repo / "environments" / env / "release.yaml"
    if not path.is_file():
        return None
    doc = yaml.safe_load(path.read_text()) or {}
    model = doc.get("model") or {}
    return str(model["name"]), str(model["version"])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ml_service.quality_gate", description=__doc__.split("\n")[0]
    )
    p.add_argument("--env", required=True, choices=["dev", "staging", "prod"])
    p.add_argument("--model-name", default="ml-service")
    p.add_argument("--model-version", required=True)
    p.add_argument("--repo", type=Path, default=Path.cwd(), help="repository root (default: .)")
    p.add_argument("--config", type=Path, help=f"threshold file (default: <repo>/{DEFAULT_CONFIG})")
    p.add_argument("--override-quality-gate", dest="override", metavar="REASON")
    p.add_argument("--markdown", type=Path, help="also write the PR table here")
    p.add_argument(
        "--served-data",
        metavar="URI",
        help="also score both models on the labelled rows of this payload log (PAYLOAD_LOG_URI)",
    )
    p.add_argument("--served-since", metavar="YYYY-MM-DD", help="payload-log objects from then on")
    a = p.parse_args(argv)
    try:
        result = run_gate(
            a.env,
            (a.model_name, str(a.model_version)),
            _release_state(a.repo, a.env),
            config_path=a.config or a.repo / DEFAULT_CONFIG,
            config_name=str(a.config) if a.config else DEFAULT_CONFIG,
            override_reason=a.override,
            served_data=a.served_data,
            served_since=a.served_since,
        )
    except GateError as exc:
        print(f"quality-gate: {exc}", file=sys.stderr)
        return EXIT_ERROR
    if a.markdown:
        a.markdown.write_text(result.markdown() + "\n")
    print(result.markdown())
    if result.verdict == "failed":
        print(result.failure_text(), file=sys.stderr)
        return EXIT_ERROR if result.error else EXIT_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
