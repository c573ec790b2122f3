"""In-process floor: how long the model itself takes, without HTTP, JSON or validation.

Run by benchmarks/run.py as `python benchmarks/floor.py MODEL_DIR ROWS...`;
prints one JSON document.
OMP_NUM_THREADS comes from the caller (ml-service caps numeric threads at 1 by default), and so
does BENCH_FLOOR_SECONDS, the time budget of each timing (5 s; the smoke test gives less).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
import warnings

import mlflow.pyfunc
import pandas as pd
from ml_service.serving.flat_trees import MAX_ROWS, flatten
from payloads import load_rows

# ml-service passes a float matrix in the estimator's column order, as measured here
warnings.filterwarnings(
    "ignore", message="X does not have valid feature names", category=UserWarning
)

CALLS = 300
BUDGET_S = float(os.environ.get("BENCH_FLOOR_SECONDS", "5"))


def _time(fn) -> dict:
    fn()  # first call pays lazy imports and allocations
    samples: list[float] = []
    deadline = time.perf_counter() + BUDGET_S
    # at least one timed call, so a zero budget (`--floor-seconds 0`) still reports
    while not samples or (len(samples) < CALLS and time.perf_counter() < deadline):
        t0 = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - t0) * 1000)
    samples.sort()
    return {
        "calls": len(samples),
        "median_ms": statistics.median(samples),
        "p95_ms": samples[min(len(samples) - 1, int(len(samples) * 0.95))],
    }


def main(model_dir: str, sizes: list[int]) -> dict:
    pyfunc = mlflow.pyfunc.load_model(model_dir)
    sk = pyfunc.get_raw_model()
    columns, example = load_rows(model_dir, 1)
    flat = flatten(sk, pd.DataFrame(example, columns=columns).to_numpy(dtype="float64"))
    out = {}
    # and around flat_trees.MAX_ROWS, where the walk hands batches back to scikit-learn
    for n in sorted({*sizes, MAX_ROWS, 2 * MAX_ROWS}):
        _, rows = load_rows(model_dir, n)
        frame = pd.DataFrame(rows, columns=columns)
        matrix = frame.to_numpy(dtype="float64")
        out[str(n)] = {
            # class probabilities from a float matrix: scikit-learn's own loop over the trees ...
            "sklearn_predict_proba": _time(lambda m=matrix: sk.predict_proba(m)),
            # ... and ml-service's path (flat_trees.py), the walk itself even above MAX_ROWS
            "flat_walk": _time(lambda m=matrix: flat.walk(m)) if flat else None,
            # what mlflow serve / MLServer / BentoML do: pyfunc with schema enforcement
            "pyfunc_predict": _time(lambda f=frame: pyfunc.predict(f)),
        }
    return out


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], [int(a) for a in sys.argv[2:]])))
