"""Models a canary should stop, trained and registered exactly like `python -m ml_service.training`
(its code, its metadata, its held-out split, the registry of MLFLOW_TRACKING_URI) with one change:

    python tests/cluster/canary_models.py class-shift [training flags...]
        trained on a resampled data set: every malignant training row eight times (the held-out
        split untouched). With few boosting rounds (--max-iter 20) it labels only 4 of the 143
        held-out rows unlike version 2 (macro F1 no lower; the gate's paired interval of the
        difference is [-0.029, ...], just inside its 0.03), so the quality gate passes it; on the
        stream's noisy rows it calls about 0.075 more of them malignant than version 2, with far
        less extreme probabilities (score PSI about 2.6). More resampling or fewer rounds shift
        more, and the gate refuses them: a model that labels many held-out rows differently has
        a wide F1 interval.
    python tests/cluster/canary_models.py slow [training flags...]
        the same classifier behind SLOW_STEPS identity steps (scikit-learn's FunctionTransformer,
        validating its input): the same predictions, bit for bit, and each request pays for the
        steps (about 0.13 ms each on a quiet core: ~100 ms, several times the stable p95, yet one
        canary pod keeps up with its share of the test's stream).

The training flags are ml_service.training's (e.g. --learning-rate 0.05 --output-json PATH).
"""

from __future__ import annotations

import sys

import numpy as np
from ml_service.training import train

RESAMPLE = {"malignant": 8}
SLOW_STEPS = 800


def resampled_split(x, y, test_size, seed):
    data = ORIGINAL_SPLIT(x, y, test_size, seed)
    take = np.concatenate(
        [np.repeat(np.flatnonzero(data.y_train == c), RESAMPLE.get(c, 1)) for c in sorted(set(y))]
    )
    # The held-out split (and its fingerprint) stays: the gate scores on the same rows.
    return train.Dataset(data.x_train.iloc[take], data.x_test, data.y_train.iloc[take],
                         data.y_test, data.fingerprint)  # fmt: skip


def slow_pipeline(args):
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    steps = [(f"identity{i}", FunctionTransformer(validate=True)) for i in range(SLOW_STEPS)]
    return Pipeline([*steps, *ORIGINAL_PIPELINE(args).steps])


ORIGINAL_SPLIT, ORIGINAL_PIPELINE = train.split, train.build_pipeline

if __name__ == "__main__":
    kind, flags = sys.argv[1], sys.argv[2:]
    if kind == "class-shift":
        train.split = resampled_split
    elif kind == "slow":
        train.build_pipeline = slow_pipeline
    else:
        sys.exit(f"unknown kind {kind!r}: class-shift or slow")
    sys.exit(train.main(flags))
