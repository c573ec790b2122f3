"""Quality gate: a model reaches an environment only if it is as good as the one it replaces.

    python -m ml_service.release.quality_gate --env dev --model-version 7 [--override REASON]

Both models (the candidate and the version the environment pins in
`environments/<env>/release.yaml`, read from the MLflow registry) are scored on the fixed held-out
split with MLflow's own evaluation (`mlflow.models.evaluate`, default classifier evaluator, plus a
macro-F1 metric). Every gated metric also gets a paired bootstrap (intervals.py): its confidence
interval for the candidate and for the difference candidate - serving on the same rows, on all
rows and on each slice the configuration names; with --served-data, also on the labelled rows of
served traffic (the top-level rules). Each rule of `environments/quality-gate.yaml`
decides on the point value or on the interval's bound and becomes an
`mlflow.models.MetricThreshold` checked by `mlflow.validate_evaluation_results`. The result (both
models' metrics, the differences and their intervals, pass/fail per rule, an override reason) is
logged to the candidate's MLflow run. `scripts/gitops.py release` and `promote` call `run_gate`
and refuse a failing candidate; their pull requests carry `GateResult.markdown()`.
`python -m ml_service.release.error_rates` measures how often these rules refuse an equivalent
model and a degraded one.

Exit codes of the CLI: 0 passed (or overridden), 3 failed, 2 bad input or the gate could not run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import math
import os
import re
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ml_service.redact import redact, without_userinfo
from ml_service.release.intervals import Estimate, Scores, paired_bootstrap

DEFAULT_CONFIG = "environments/quality-gate.yaml"
EXIT_FAILED = 3
EXIT_ERROR = 2
TAG_PREFIX = "quality_gate"
MAX_REASON = 500
MAX_CATEGORIES = 20  # slices of one column without `bins`: one per distinct value, at most this
MAX_FAILED_TAG = 4000
SERVED = "served traffic"  # the row group of --served-data's rows
# mlflow.models.evaluate's metrics and the bootstrap's scikit-learn ones are the same functions:
# a larger gap means they measure different things, and the intervals would not be about the
# numbers shown.
AGREEMENT = 1e-9

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
Decision = Literal["point", "interval"]


class GateError(Exception):
    """The gate could not run (bad configuration, registry unreachable, unknown version...)."""


# --------------------------------------------------------------------------- configuration


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Evaluation(_Strict):
    # The fixed held-out split: ml_service.training's --seed and --test-size.
    seed: int = Field(ge=0)
    test_size: float = Field(gt=0.0, lt=1.0)
    positive_class: str = Field(min_length=1)


class Bootstrap(_Strict):
    # Paired, stratified bootstrap of the evaluation rows (intervals.py).
    resamples: int = Field(default=1000, ge=200, le=10_000)
    confidence: float = Field(default=0.95, ge=0.5, le=0.995)
    seed: int = Field(default=0, ge=0)


class Rule(_Strict):
    min: float | None = None
    max: float | None = None
    max_drop: float | None = Field(default=None, ge=0.0)
    max_rise: float | None = Field(default=None, ge=0.0)
    # point: the estimate must satisfy the rule; interval: the whole confidence interval must
    # (its bound that is worst for the arriving model).
    decision: Decision = "point"

    @field_validator("min", "max", "max_drop", "max_rise")
    @classmethod
    def _finite(cls, v: float | None) -> float | None:
        if v is not None and not math.isfinite(v):
            raise ValueError("must be a finite number")
        return v

    def bounds(self) -> dict[str, float]:
        """The rule's settings by key (min, max, max_drop, max_rise), unset ones left out."""
        keys = ("min", "max", "max_drop", "max_rise")
        return {k: getattr(self, k) for k in keys if getattr(self, k) is not None}


class Slice(_Strict):
    # A column of the evaluation data: numeric with `bins` (quantile bins of the evaluation rows:
    # 3 = tertiles), or one slice per distinct value without.
    column: str = Field(min_length=1, max_length=100)
    bins: int | None = Field(default=None, ge=2, le=10)
    thresholds: dict[str, Rule] = Field(min_length=1)


class Served(_Strict):
    # Recent labelled traffic (--served-data): the rules hold there too once this many rows
    # carry a label; fewer, and the served checks are skipped (the table says so).
    min_rows: int = Field(default=100, ge=1)


class GateConfig(_Strict):
    evaluation: Evaluation
    bootstrap: Bootstrap = Bootstrap()
    thresholds: dict[str, Rule] = Field(min_length=1)
    slices: list[Slice] = Field(default_factory=list, max_length=10)
    served: Served = Served()

    @model_validator(mode="after")
    def _rules_fit_metrics(self) -> GateConfig:
        groups = [("thresholds", self.thresholds)] + [
            (f"slices[{i}].thresholds", s.thresholds) for i, s in enumerate(self.slices)
        ]
        for where, thresholds in groups:
            for name, rule in thresholds.items():
                _check_rule(f"{where}.{name}", name, rule)
        return self


def _check_rule(where: str, name: str, rule: Rule) -> None:
    if name not in METRICS:
        raise ValueError(f"{where}: unknown metric (known: {', '.join(sorted(METRICS))})")
    greater = METRICS[name][0]
    set_keys = set(rule.bounds())
    if not set_keys:
        raise ValueError(f"{where}: no rule (min, max, max_drop or max_rise)")
    wrong = set_keys & ({"max", "max_rise"} if greater else {"min", "max_drop"})
    if wrong:
        direction = "higher" if greater else "lower"
        fits = "min / max_drop" if greater else "max / max_rise"
        raise ValueError(
            f"{where}.{sorted(wrong)[0]}: {direction} is better for {name}, use {fits}"
        )


def _where(loc: tuple) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else f".{part}" if out else str(part)
    return out


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
            where = _where(err["loc"])
            msg = err["msg"].removeprefix("Value error, ")
            if err["type"] == "extra_forbidden":
                msg = "unknown key"
            problems.append(f"{where}: {msg}" if where else msg)
        raise GateError(f"{shown}: " + "; ".join(problems)) from None


# --------------------------------------------------------------------------- evaluation data


@dataclass(frozen=True)
class EvaluationSet:
    """Labelled rows both models are scored on. The gate scores the fixed held-out split
    (`held_out`); any other source of labelled rows with the model's feature columns is another
    EvaluationSet (`compare` takes any). Slices may use any column of `frame`."""

    name: str
    frame: Any  # pandas DataFrame: the features, `label`, and any other per-row column
    features: tuple[str, ...]  # the model's input columns
    fingerprint: str | None = None  # the fixed split's: a model trained beside it records it

    @property
    def labels(self) -> np.ndarray:
        return self.frame["label"].astype(str).to_numpy()


def held_out(config: GateConfig) -> EvaluationSet:
    """The fixed held-out split of ml_service.training (its --seed and --test-size)."""
    from ml_service.training.train import fingerprint, load_dataset, split

    x, y = load_dataset()
    data = split(x, y, config.evaluation.test_size, config.evaluation.seed)
    frame = data.x_test.copy()
    frame["label"] = data.y_test.to_numpy()
    return EvaluationSet(
        "held-out split", frame, tuple(data.x_test.columns), fingerprint(data.x_test, data.y_test)
    )


@dataclass(frozen=True)
class RowGroup:
    """All rows of an evaluation set, or one slice of them, with the rules that apply to it."""

    name: str | None  # None: every row; else e.g. "mean_radius 2/3 (12.21, 14.58]"
    key: str  # in MLflow metric names: "" for every row, else e.g. "slice_mean_radius_2of3"
    rows: np.ndarray  # row positions in the evaluation set
    spec: int | None  # which `slices` entry; None: the top-level thresholds


def _safe(text: str, limit: int = 40) -> str:
    """A data value as a short, printable, MLflow-name-safe token."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text)[:limit].strip("_") or "_"


def row_groups(config: GateConfig, data: EvaluationSet) -> list[RowGroup]:
    """Every row (the top-level thresholds), then each slice of each `slices` entry."""
    import pandas as pd

    groups = [RowGroup(None, "", np.arange(len(data.frame)), None)]
    for i, spec in enumerate(config.slices):
        where = f"slices[{i}].column"
        if spec.column not in data.frame.columns or spec.column == "label":
            raise GateError(f"{where}: no column {spec.column!r} in the {data.name}")
        values = data.frame[spec.column]
        if spec.bins is not None:
            if not pd.api.types.is_numeric_dtype(values):
                raise GateError(f"{where}: {spec.column} is not numeric; `bins` needs numbers")
            codes, edges = pd.qcut(values, spec.bins, labels=False, retbins=True, duplicates="drop")
            count = len(edges) - 1
            for b in range(count):
                left = "[" if b == 0 else "("  # qcut's first bin includes its lowest value
                groups.append(
                    RowGroup(
                        f"{spec.column} {b + 1}/{count} {left}{edges[b]:.4g}, {edges[b + 1]:.4g}]",
                        f"slice_{_safe(spec.column)}_{b + 1}of{count}",
                        np.flatnonzero(codes.to_numpy() == b),
                        i,
                    )
                )
            continue
        distinct = sorted(values.dropna().astype(str).unique())
        if len(distinct) > MAX_CATEGORIES:
            raise GateError(
                f"{where}: {spec.column} has {len(distinct)} distinct values (at most "
                f"{MAX_CATEGORIES} slices); give `bins` for a numeric column"
            )
        as_text = values.astype(str).to_numpy()
        for j, value in enumerate(distinct):
            groups.append(
                RowGroup(
                    f"{spec.column}={_safe(value)}",
                    # numbered: two values may read the same once made name-safe
                    f"slice_{_safe(spec.column)}_{j + 1}_{_safe(value)}",
                    np.flatnonzero(as_text == value),
                    i,
                )
            )
    return groups


# --------------------------------------------------------------------------- comparison


@dataclass
class Comparison:
    """One gated metric on one group of rows: both models' values and the intervals."""

    metric: str
    slice: str | None  # RowGroup.name
    key: str  # RowGroup.key
    spec: int | None  # RowGroup.spec
    rows: int
    estimate: Estimate | None  # None: the group lacks a class (note says which)
    note: str = ""


def compare(
    config: GateConfig,
    data: EvaluationSet,
    candidate: Scores,
    baseline: Scores | None,
) -> list[Comparison]:
    """Every gated metric of every row group: point values, the candidate's interval and the
    paired interval of candidate - baseline (bootstrap settings of `config`; the draws of group
    number g come from numpy's generator seeded with (bootstrap.seed, g))."""
    truth = data.labels == config.evaluation.positive_class
    out = []
    for g, group in enumerate(row_groups(config, data)):
        rows, rules = group.rows, _rules(config, group.spec)
        positives = int(truth[rows].sum())
        if not 0 < positives < rows.size:
            what = f"{'no' if positives == 0 else 'only'} {config.evaluation.positive_class} rows"
            if group.name is None:
                raise GateError(f"the {data.name} has {what}: the gate needs both classes")
            note = f"{what} among its {rows.size}"
            out += [
                Comparison(m, group.name, group.key, group.spec, int(rows.size), None, note)
                for m in rules
            ]
            continue
        estimates = paired_bootstrap(
            rules,
            truth[rows],
            _subset(candidate, rows),
            None if baseline is None else _subset(baseline, rows),
            resamples=config.bootstrap.resamples,
            confidence=config.bootstrap.confidence,
            rng=np.random.default_rng([config.bootstrap.seed, g]),
        )
        out += [
            Comparison(m, group.name, group.key, group.spec, int(rows.size), e)
            for m, e in estimates.items()
        ]
    return out


def _rules(config: GateConfig, spec: int | None) -> Mapping[str, Rule]:
    return config.thresholds if spec is None else config.slices[spec].thresholds


def _subset(scores: Scores, rows: np.ndarray) -> Scores:
    return Scores(scores.predicted[rows], scores.probability[rows])


# --------------------------------------------------------------------------- decision


@dataclass
class Check:
    metric: str
    rule: str  # min / max / max_drop / max_rise / split / served (served rows skipped)
    limit: float | None  # the MetricThreshold value the decided-on number was held to
    setting: float | None  # the number in the configuration
    passed: bool
    message: str = ""  # MLflow's validation message when it failed; why a rule did not apply
    decision: str = "point"
    slice: str | None = None
    value: float | None = None  # the number decided on: a point value or an interval's bound
    applied: bool = True  # False: no baseline, or the slice lacks a class

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
        if not self.applied:
            return f"{words} · {self.decision}"
        sign = "≥" if self.rule in ("min", "max_drop") else "≤"
        relative = self.rule in ("max_drop", "max_rise")
        if self.decision == "interval":
            bound = "lower" if sign == "≥" else "upper"
            limit = f"{self.limit:+.4f}" if relative else f"{self.limit:.4f}"
            return f"{words} · interval: {bound} bound {sign} {limit}"
        if relative:
            return f"{words} · point: arriving {sign} {self.limit:.4f}"
        return f"{words} · point"

    @property
    def label(self) -> str:
        return self.metric if self.slice is None else f"{self.metric} · {self.slice}"


def decide(
    config: GateConfig,
    comparisons: list[Comparison],
    decision: Decision | None = None,
) -> list[Check]:
    """Every rule of `config` on its comparison, checked by mlflow.validate_evaluation_results;
    `decision` overrides each rule's own (the error-rate measurement compares both)."""
    checks = []
    for c in comparisons:
        rule = _rules(config, c.spec)[c.metric]
        for key, setting in rule.bounds().items():
            checks.append(_check(c, key, setting, decision or rule.decision))
    return checks


def _check(c: Comparison, key: str, setting: float, decision: str) -> Check:
    import mlflow
    from mlflow.models import MetricThreshold
    from mlflow.models.evaluation import EvaluationResult
    from mlflow.models.evaluation.validation import ModelValidationFailedException

    greater = METRICS[c.metric][0]
    check = Check(c.metric, key, None, setting, True, decision=decision, slice=c.slice)
    e = c.estimate
    if e is None:
        check.applied, check.message = False, c.note
        return check
    if key in ("min", "max"):
        low, high = e.candidate_interval
        value = e.candidate if decision == "point" else (low if key == "min" else high)
        limit, name = setting, c.metric
    elif e.baseline is None:
        # Nothing released to the environment yet: only absolute bounds can apply.
        check.applied, check.message = False, "no baseline"
        return check
    elif decision == "point":
        # MetricThreshold's baseline comparisons (min_absolute_change / min_relative_change)
        # demand an improvement; a tolerated drop is a value threshold derived from the
        # baseline's score on the same rows.
        value = e.candidate
        limit = e.baseline - setting if greater else e.baseline + setting
        name = c.metric
    else:
        low, high = e.difference_interval
        value = low if key == "max_drop" else high
        limit = -setting if key == "max_drop" else setting
        name = f"{c.metric} difference ({'lower' if key == 'max_drop' else 'upper'} bound)"
    check.value, check.limit = float(value), float(limit)
    try:
        mlflow.validate_evaluation_results(
            {name: MetricThreshold(threshold=float(limit), greater_is_better=greater)},
            EvaluationResult(metrics={name: float(value)}, artifacts={}),
            None,
        )
    except ModelValidationFailedException as exc:
        check.passed, check.message = False, exc.message
    return check


def split_check(candidate: ModelInfo, baseline: ModelInfo | None) -> Check:
    ok = candidate.split_ok and (baseline is None or baseline.split_ok)
    why = [
        f"{m.label} was not trained with this split (seed/test_size differ)"
        for m in (candidate, baseline)
        if m is not None and not m.split_ok
    ]
    return Check("held-out split", "split", None, None, bool(ok), "; ".join(why))


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
class GateResult:
    env: str
    candidate: ModelInfo
    baseline: ModelInfo | None  # None: nothing is released to env yet
    checks: list[Check] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    bootstrap: dict[str, Any] = field(default_factory=dict)  # the settings the intervals used
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

    def _comparison(self, check: Check) -> Comparison | None:
        return next(
            (c for c in self.comparisons if (c.metric, c.slice) == (check.metric, check.slice)),
            None,
        )

    def failure_text(self) -> str:
        if self.error:
            return f"quality gate could not run: {self.error}"
        against = self.baseline.label if self.baseline else "no baseline"
        lines = [f"quality gate failed for {self.candidate.label} against {self.env} ({against}):"]
        for c in self.failed_checks:
            if c.rule == "split":
                lines.append(f"  - held-out split: {c.message}")
                continue
            comp = self._comparison(c)
            e = comp.estimate if comp else None
            nums = f"candidate {_fmt(e.candidate if e else None)}"
            if e is not None and e.baseline is not None:
                nums += (
                    f", {self.env} {_fmt(e.baseline)}, difference {_signed(e.difference)} "
                    f"{_interval(e.difference_interval)}"
                )
            lines.append(f"  - {c.label} {c.describe()}: {nums}")
        return "\n".join(lines)

    def markdown(self) -> str:
        head = {
            "passed": "✅ passed",
            "failed": "❌ failed",
            "overridden": "⚠️ overridden",
        }[self.verdict]
        leaving = f"{self.env}: {self.baseline.label}" if self.baseline else f"{self.env}: none"
        confidence = self.bootstrap.get("confidence")
        share = f"{confidence * 100:g}% interval" if confidence else "interval"
        out = [f"### Quality gate: {head}", ""]
        if self.error:
            out += [f"The gate could not run: {self.error}", ""]
        out += [
            f"| metric | leaving ({leaving}) | arriving ({self.candidate.label}) "
            f"| difference [{share}] | rule · decided on | result |",
            "| --- | ---: | ---: | ---: | --- | --- |",
        ]
        for c in self.checks:
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
            comp = self._comparison(c)
            e = comp.estimate if comp else None
            if e is None:
                why = c.message or (comp.note if comp else "")
                out.append(f"| {c.label} | — | — | — | {c.describe()} | n/a: {why} |")
                continue
            arriving = _fmt(e.candidate)
            if c.rule in ("min", "max"):
                arriving += f" {_interval(e.candidate_interval, signed=False)}"
            diff = (
                "—"
                if e.baseline is None
                else f"{_signed(e.difference)} {_interval(e.difference_interval)}"
            )
            result = "pass" if c.passed else "**fail**"
            if not c.applied:
                result = f"n/a: {c.message}"
            out.append(
                f"| {c.label} | {_fmt(e.baseline)} | {arriving} | {diff} | {c.describe()} "
                f"| {result} |"
            )
        gated = {c.metric for c in self.checks if c.slice is None}
        for name in CONTEXT_METRICS:
            if name in gated:
                continue
            cand = self.candidate.metrics.get(name)
            base = self.baseline.metrics.get(name) if self.baseline else None
            if cand is not None or base is not None:
                diff = "—" if cand is None or base is None else _signed(cand - base)
                out.append(f"| {name} | {_fmt(base)} | {_fmt(cand)} | {diff} | | |")
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
        if self.bootstrap:
            out.append(
                f"Intervals: paired bootstrap of the same rows, {self.bootstrap['resamples']} "
                f"resamples stratified by class (seed {self.bootstrap['seed']}), {share}s "
                "(percentile). A `point` rule decides on the estimate, an `interval` rule on the "
                "bound worst for the arriving model."
            )
        if self.served:
            out.append(
                f"Served traffic: the same rules on {self.served['rows']} labelled rows of served "
                f"traffic ({self.served['source']}), rows `· served traffic`."
            )
        return "\n".join(out)

    def to_json(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["verdict"] = self.verdict
        return doc


def _fmt(v: float | None) -> str:
    return "—" if v is None else f"{v:.4f}"


def _signed(v: float | None) -> str:
    return "—" if v is None else f"{v:+.4f}"


def _interval(iv: tuple[float, float] | None, signed: bool = True) -> str:
    if iv is None:
        return ""
    return f"[{iv[0]:+.4f}, {iv[1]:+.4f}]" if signed else f"[{iv[0]:.4f}, {iv[1]:.4f}]"


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


# --------------------------------------------------------------------------- MLflow


def public_base_url() -> str:
    """Where people open MLflow: MLFLOW_UI_URL, else the tracking URI without credentials."""
    raw = os.environ.get("MLFLOW_UI_URL") or os.environ.get("MLFLOW_TRACKING_URI", "")
    parts = urlsplit(without_userinfo(raw))
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return ""
    return urlunsplit((parts.scheme, parts.netloc, parts.path.rstrip("/"), "", ""))


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


def _scores(model, label: str, data: EvaluationSet, config: GateConfig) -> Scores:
    """The classifier inside a pyfunc model, scored on the evaluation rows."""
    try:
        raw = model.get_raw_model()
        return Scores.of(raw, data.frame[list(data.features)], config.evaluation.positive_class)
    except (NotImplementedError, AttributeError):
        raise GateError(
            f"{label}: the gate scores scikit-learn classifiers (predict_proba, classes_)"
        ) from None
    except ValueError as exc:
        raise GateError(f"{label}: {exc}") from None


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


def _evaluate(model, data: EvaluationSet, config: GateConfig, prefix: str) -> dict[str, float]:
    """mlflow.models.evaluate into the active run; metric names without the prefix."""
    import mlflow

    result = mlflow.models.evaluate(
        model,
        data.frame[[*data.features, "label"]],
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


def _agree(reported: Mapping[str, float], comparisons: list[Comparison], which: str) -> None:
    """The bootstrap's point values on every row are mlflow.models.evaluate's numbers."""
    for c in comparisons:
        if c.slice is not None or c.estimate is None:
            continue
        ours = c.estimate.candidate if which == "candidate" else c.estimate.baseline
        theirs = reported.get(c.metric)
        if theirs is None or ours is None or abs(ours - theirs) > AGREEMENT:
            raise GateError(
                f"{c.metric}: mlflow.models.evaluate reports {theirs} for the {which}, the "
                f"bootstrap computes {ours}: they no longer measure the same thing"
            )


def _interval_metrics(result: GateResult) -> dict[str, float]:
    """Both models' values on each slice, the differences and every interval, as run metrics."""
    env, out = result.env, {}
    for c in result.comparisons:
        e = c.estimate
        if e is None:
            continue
        at = f"gate_{env}_{c.key}_" if c.key else f"gate_{env}_"
        low, high = e.candidate_interval
        out[f"{at}candidate_{c.metric}_ci_low"] = low
        out[f"{at}candidate_{c.metric}_ci_high"] = high
        if c.key:
            out[f"{at}candidate_{c.metric}"] = e.candidate
        if e.baseline is None:
            continue
        low, high = e.difference_interval
        out[f"{at}delta_{c.metric}_ci_low"] = low
        out[f"{at}delta_{c.metric}_ci_high"] = high
        if c.key:
            out[f"{at}baseline_{c.metric}"] = e.baseline
            out[f"{at}delta_{c.metric}"] = e.difference
    return out


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
    failed = ", ".join(
        f"{c.metric}:{c.rule}" if c.slice is None else f"{c.metric}[{c.slice}]:{c.rule}"
        for c in result.failed_checks
    )
    tags[f"{TAG_PREFIX}.{env}.failed"] = failed[:MAX_FAILED_TAG] or "none"
    if result.bootstrap:
        b = result.bootstrap
        tags[f"{TAG_PREFIX}.{env}.intervals"] = (
            f"paired bootstrap, {b['resamples']} resamples stratified by class, seed {b['seed']}, "
            f"{b['confidence']:g} percentile interval"
        )
        rules = [c for c in result.checks if c.rule not in ("split", "served")]
        tags[f"{TAG_PREFIX}.{env}.decisions"] = ", ".join(
            sorted({f"{c.label}:{c.rule}:{c.decision}" for c in rules})
        )[:MAX_FAILED_TAG]
    mlflow.set_tags(tags)
    metrics = _interval_metrics(result)
    if result.baseline:
        metrics.update(
            {
                f"gate_{env}_delta_{k}": v - result.baseline.metrics[k]
                for k, v in result.candidate.metrics.items()
                if k in result.baseline.metrics and not k.startswith("served_")
            }
        )
    mlflow.log_metrics(metrics)
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


def served_set(uri: str, since: str | None, features: tuple[str, ...]) -> EvaluationSet:
    """The labelled served rows of a payload log (from `since` on), as an evaluation set."""
    import pandas as pd

    from ml_service.payload_format import labelled_rows

    rows, labels, _ids, _counts = labelled_rows(uri, list(features), since)
    frame = pd.DataFrame(rows, columns=list(features), dtype="float64")
    frame["label"] = labels
    return EvaluationSet(SERVED, frame, features)


def _run(result: GateResult, config: GateConfig, baseline, config_path: str, served=None) -> None:
    import logging

    import mlflow
    from threadpoolctl import threadpool_limits

    logging.getLogger("mlflow").setLevel(logging.WARNING)
    client = mlflow.MlflowClient()
    data = held_out(config)
    base_url = public_base_url()
    with tempfile.TemporaryDirectory() as tmp:
        cand_model, cand_run, cand_training = _load(client, *_pair(result.candidate), Path(tmp))
        if not cand_run:
            raise GateError(f"{result.candidate.label} has no MLflow run to log the result to")
        result.candidate.run_id = cand_run
        result.candidate.split_ok = cand_training.get("test_fingerprint") == data.fingerprint
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
                result.baseline.split_ok = base_training.get("test_fingerprint") == data.fingerprint
        for m in (result.candidate, result.baseline):
            if m is not None and m.run_id and base_url:
                exp = client.get_run(m.run_id).info.experiment_id
                m.run_url = f"{base_url}/#/experiments/{exp}/runs/{m.run_id}"
        # One OpenMP thread for the models' predictions: on small shared machines more threads
        # only contend (a HistGradientBoosting predict_proba of 143 rows took 0.6-2.4 s instead
        # of 0.07-0.1 s here).
        with threadpool_limits(limits=1), mlflow.start_run(run_id=cand_run):
            env = result.env
            result.candidate.metrics = _evaluate(cand_model, data, config, f"gate_{env}_candidate_")
            if base_model is cand_model:
                result.baseline.metrics = dict(result.candidate.metrics)
            elif base_model is not None:
                result.baseline.metrics = _evaluate(
                    base_model, data, config, f"gate_{env}_baseline_"
                )
            if result.error is None:
                cand = _scores(cand_model, result.candidate.label, data, config)
                base = (
                    None
                    if base_model is None
                    else _scores(base_model, result.baseline.label, data, config)
                )
                result.comparisons = compare(config, data, cand, base)
                result.bootstrap = config.bootstrap.model_dump()
                _agree(result.candidate.metrics, result.comparisons, "candidate")
                if result.baseline:
                    _agree(result.baseline.metrics, result.comparisons, "baseline")
                result.checks = decide(config, result.comparisons)
                result.checks.append(split_check(result.candidate, result.baseline))
            if served is not None and result.error is None:
                result.checks += _served_checks(
                    result, config, served, data, cand_model, base_model
                )
            _log(result, config_path)


def _served_checks(result, config, served, held, cand_model, base_model) -> list[Check]:  # type: ignore[no-untyped-def]
    """Both models on the labelled served rows: mlflow.models.evaluate's metrics (`served_*`),
    the paired intervals and the top-level rules, as rows `<metric> · served traffic`. The
    slices stay the held-out split's: their bins are the fixed rows' quantiles."""
    data = served_set(*served, held.features)
    result.served = {"source": served[0], "rows": len(data.frame)}
    positives = int((data.labels == config.evaluation.positive_class).sum())
    why = None
    if len(data.frame) < config.served.min_rows:
        why = f"skipped: {len(data.frame)} labelled rows, fewer than served.min_rows"
    elif not 0 < positives < len(data.frame):
        why = f"skipped: the {len(data.frame)} labelled rows hold only one class"
    if why:
        return [Check(SERVED, "served", None, config.served.min_rows, True, why)]
    env, scores, evaluated = result.env, {}, {}
    for model, info, who in ((cand_model, result.candidate, "candidate"),
                             (base_model, result.baseline, "baseline")):  # fmt: skip
        if model is not None and info is not None:
            evaluated[who] = _evaluate(model, data, config, f"gate_{env}_served_{who}_")
            info.metrics.update({f"served_{k}": v for k, v in evaluated[who].items()})
            scores[who] = _scores(model, info.label, data, config)
    on_all_rows = compare(
        config.model_copy(update={"slices": []}), data, scores["candidate"], scores.get("baseline")
    )
    for who, metrics in evaluated.items():
        _agree(metrics, on_all_rows, who)
    comparisons = [replace(c, slice=SERVED, key="served") for c in on_all_rows]
    result.comparisons += comparisons
    return decide(config, comparisons)


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
        prog="python -m ml_service.release.quality_gate", description=__doc__.split("\n")[0]
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
