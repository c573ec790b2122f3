"""How often does the quality gate refuse a model it should pass, and pass one it should refuse?

    python -m ml_service.release.error_rates [--models 100] [--flip 0.05 0.1 0.2] [--json PATH]

Retrains the default configuration of ml_service.training (on the gate's held-out split) with
many model seeds and runs the gate's own comparison and decision code (quality_gate.compare /
decide, the bootstrap of `environments/quality-gate.yaml`) on pairs of models:

- equivalent: the serving model has model seed i, the arriving one seed i+1 (the same
  configuration and data, only the seed differs); every refusal is a false refusal;
- degraded: the serving model has model seed i, the arriving one the same seed trained with a
  share of its training labels flipped (rows drawn by seed i); every pass is a false pass.

Each pair is decided three ways: every rule on its point value, every rule on its interval, and
each rule as the file says. Models are fitted in this process (one thread, the training code's
own pipeline); scoring them through the MLflow registry gives the same numbers, which
tests/gitops/test_gitops_quality_gate.py checks. Prints a markdown report.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ml_service.release.intervals import Scores
from ml_service.release.quality_gate import (
    DEFAULT_CONFIG,
    GateConfig,
    GateError,
    compare,
    decide,
    held_out,
    load_config,
)

MODES = ("point", "interval", "as configured")


@dataclass
class Family:
    """Pairs of one kind and how often each way of deciding refused them."""

    name: str
    should_refuse: bool
    pairs: int = 0
    refused: Counter = field(default_factory=Counter)  # mode -> pairs refused
    by_rule: dict[str, Counter] = field(default_factory=dict)  # mode -> "metric rule" -> count
    disagreements: list[int] = field(default_factory=list)  # rows the two models label apart
    differences: dict[str, list[float]] = field(default_factory=dict)  # metric -> per pair

    def add(self, comparisons, config: GateConfig, disagree: int) -> None:
        self.pairs += 1
        self.disagreements.append(disagree)
        for c in comparisons:
            if c.slice is None and c.estimate is not None:
                self.differences.setdefault(c.metric, []).append(c.estimate.difference)
        for mode in MODES:
            checks = decide(config, comparisons, None if mode == "as configured" else mode)
            failed = [c for c in checks if not c.passed]
            if failed:
                self.refused[mode] += 1
            rules = self.by_rule.setdefault(mode, Counter())
            rules.update({f"{c.label} {c.rule}" for c in failed})

    def rate(self, mode: str) -> float:
        return self.refused[mode] / self.pairs if self.pairs else float("nan")


def training_args(config: GateConfig):
    """The training defaults, on the gate's split."""
    from ml_service.training.train import parse_args

    ev = config.evaluation
    return parse_args(["--seed", str(ev.seed), "--test-size", str(ev.test_size)])


def flip_labels(y, share: float, seed: int):
    """`y` (a two-class pandas Series) with `share` of its rows, drawn by `seed`, given the
    other class."""
    import pandas as pd

    if share <= 0:
        return y
    rng = np.random.default_rng([seed, 7919])
    values = y.to_numpy().copy()
    first, second = np.unique(values)
    rows = rng.choice(values.size, size=round(share * values.size), replace=False)
    values[rows] = np.where(values[rows] == first, second, first)
    return pd.Series(values, index=y.index, name=y.name)


def fitted_scores(args, model_seed: int, data, evaluation, positive: str, flip: float = 0.0):
    """The training pipeline of `args` with `model_seed`, fitted on `data` (its training labels
    flipped by `flip`), scored on the evaluation rows."""
    from threadpoolctl import threadpool_limits

    from ml_service.training.train import build_pipeline

    seeded = argparse.Namespace(**{**vars(args), "model_seed": model_seed})
    with threadpool_limits(limits=1):
        pipe = build_pipeline(seeded).fit(data.x_train, flip_labels(data.y_train, flip, model_seed))
        return Scores.of(pipe, evaluation.frame[list(evaluation.features)], positive)


def measure(config: GateConfig, models: int, flips: list[float], first_seed: int = 1, log=None):
    from ml_service.training.train import load_dataset, split

    args = training_args(config)
    x, y = load_dataset()
    data = split(x, y, args.test_size, args.seed)
    evaluation = held_out(config)
    positive = config.evaluation.positive_class
    seeds = list(range(first_seed, first_seed + models))
    serving = {s: fitted_scores(args, s, data, evaluation, positive) for s in seeds}
    families = [Family("equivalent (another model seed)", should_refuse=False)]
    families += [Family(f"degraded ({share:.0%} of labels flipped)", True) for share in flips]
    timings = []
    for i, seed in enumerate(seeds):
        arriving = [serving[seeds[(i + 1) % len(seeds)]]]
        arriving += [
            fitted_scores(args, seed, data, evaluation, positive, share) for share in flips
        ]
        for family, cand in zip(families, arriving, strict=True):
            started = time.perf_counter()
            comparisons = compare(config, evaluation, cand, serving[seed])
            timings.append(time.perf_counter() - started)
            family.add(comparisons, config, int((cand.predicted != serving[seed].predicted).sum()))
        if log:
            log(f"{i + 1}/{len(seeds)} serving seeds done")
    return families, timings


def report(families: list[Family], config: GateConfig, timings: list[float]) -> str:
    b = config.bootstrap
    lines = [
        f"Refusals of the quality gate, {families[0].pairs} pairs per row "
        f"({b.resamples} resamples, {b.confidence:g} intervals):",
        "",
        "| arriving model | rows labelled apart (mean) | point rules | interval rules "
        "| rules as configured |",
        "| --- | ---: | ---: | ---: | ---: |",
    ]
    for f in families:
        cells = [f"{f.rate(m):.1%} ({f.refused[m]}/{f.pairs})" for m in MODES]
        lines.append(
            f"| {f.name}: should be {'refused' if f.should_refuse else 'passed'} "
            f"| {np.mean(f.disagreements):.1f} | " + " | ".join(cells) + " |"
        )
    lines += ["", "Mean difference arriving - serving on all rows:", ""]
    for f in families:
        means = ", ".join(f"{m} {np.mean(v):+.4f}" for m, v in f.differences.items())
        lines.append(f"- {f.name}: {means}")
    lines += ["", "Refusals by rule (pairs whose check failed):", ""]
    for f in families:
        for mode in MODES:
            top = ", ".join(f"{k} {v}" for k, v in f.by_rule.get(mode, Counter()).most_common())
            lines.append(f"- {f.name}, {mode}: {top or 'none'}")
    lines += [
        "",
        f"One comparison (bootstrap of every rule, both models): median "
        f"{np.median(timings):.2f} s, max {np.max(timings):.2f} s.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m ml_service.release.error_rates", description=__doc__.split("\n")[0]
    )
    p.add_argument("--config", type=Path, default=Path(DEFAULT_CONFIG), help="%(default)s")
    p.add_argument("--models", type=int, default=100, help="serving models (%(default)s)")
    p.add_argument(
        "--flip",
        type=float,
        nargs="*",
        default=[0.05, 0.1, 0.2],
        help="shares of training labels flipped for the degraded models (%(default)s)",
    )
    p.add_argument("--first-seed", type=int, default=1, help="first model seed (%(default)s)")
    p.add_argument("--json", type=Path, help="also write the figures here")
    a = p.parse_args(argv)
    if a.models < 2:
        p.error("--models must be at least 2")
    if any(not 0 < share < 0.5 for share in a.flip):
        p.error("--flip shares must be in (0, 0.5)")
    import mlflow  # noqa: F401 - configures its loggers on import; then quiet them

    logging.getLogger("mlflow").setLevel(logging.WARNING)  # a line per validated rule
    try:
        config = load_config(a.config)
    except GateError as exc:
        print(f"error-rates: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    families, timings = measure(
        config, a.models, a.flip, a.first_seed, log=lambda m: print(m, file=sys.stderr)
    )
    print(report(families, config, timings))
    print(f"\nWall time: {time.perf_counter() - started:.0f} s.")
    if a.json:
        doc = {
            "config": str(a.config),
            "bootstrap": config.bootstrap.model_dump(),
            "families": [
                {
                    "name": f.name,
                    "should_refuse": f.should_refuse,
                    "pairs": f.pairs,
                    "refused": {m: f.refused[m] for m in MODES},
                    "by_rule": {m: dict(f.by_rule.get(m, {})) for m in MODES},
                    "mean_rows_labelled_apart": float(np.mean(f.disagreements)),
                    "mean_difference": {m: float(np.mean(v)) for m, v in f.differences.items()},
                }
                for f in families
            ],
            "comparison_seconds": {"median": float(np.median(timings)), "max": max(timings)},
        }
        a.json.write_text(json.dumps(doc, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
