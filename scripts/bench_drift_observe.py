"""In-process cost of DriftMonitor.observe() next to the model's predict_proba(), per batch size.

    .venv/bin/python scripts/bench_drift_observe.py [--repeat 2000]

No MLflow needed: fits the default pipeline in-process with one OpenMP thread, as serving runs it.
"""

from __future__ import annotations

import argparse
import statistics
import timeit

import numpy as np
from ml_service.model_format import compute_reference
from ml_service.serving.drift import DriftMonitor
from ml_service.training import train
from prometheus_client import CollectorRegistry, generate_latest
from threadpoolctl import threadpool_limits


def per_call(fn, repeat: int) -> float:
    """Median over 7 rounds of the mean seconds per call."""
    rounds = timeit.repeat(fn, number=repeat, repeat=7)
    return statistics.median(rounds) / repeat


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--repeat", type=int, default=2000)
    repeat = p.parse_args().repeat
    args = train.parse_args([])
    x, y = train.load_dataset()
    data = train.split(x, y, args.test_size, args.seed)
    with threadpool_limits(limits=1):
        pipe = train.build_pipeline(args).fit(data.x_train, data.y_train)
        classes = [str(c) for c in pipe.classes_]
        ref = compute_reference(
            data.x_train.to_numpy(), list(x.columns), data.y_train.to_numpy(), classes
        )
        registry = CollectorRegistry()
        monitor = DriftMonitor(ref, registry=registry)
        rows = data.x_test.to_numpy()
        print(f"{'rows':>5} {'predict_proba':>14} {'observe':>10} {'observe/predict':>16}")
        for n in (1, 100):
            frame = data.x_test.iloc[np.arange(n) % len(rows)]
            matrix = frame.to_numpy()
            labels = pipe.predict(frame)
            t_pred = per_call(lambda f=frame: pipe.predict_proba(f), max(repeat // 10, 50))
            t_obs = per_call(lambda m=matrix, lb=labels: monitor.observe(m, lb), repeat)
            print(f"{n:>5} {t_pred * 1e6:>11.1f} us {t_obs * 1e6:>7.1f} us {t_obs / t_pred:>15.1%}")
        t_scrape = per_call(lambda: generate_latest(registry), max(repeat // 20, 20))
        print(f"scrape (collect + PSI + exposition of all drift series): {t_scrape * 1e3:.2f} ms")


if __name__ == "__main__":
    main()
