"""Training that fits the real pipeline (seconds each): reproducible whatever the thread count,
and accurate with its default hyper-parameters."""

from __future__ import annotations

import pytest
from ml_service.training import train
from threadpoolctl import threadpool_limits


@pytest.fixture(scope="module")
def dataset():
    return train.load_dataset()


@pytest.fixture(scope="module")
def args():
    return train.parse_args([])


def test_fit_is_reproducible_whatever_the_thread_count(dataset) -> None:
    x, y = dataset
    args = train.parse_args(["--max-iter", "30"])  # small: two OpenMP threads on a busy box
    data = train.split(x, y, args.test_size, args.seed)
    results = []
    for limit in (1, 2, 1):
        with threadpool_limits(limits=limit):
            pipe = train.build_pipeline(args).fit(data.x_train, data.y_train)
            metrics, pred, proba = train.evaluate(pipe, data)
        results.append((metrics, train.predictions_digest(pred, proba)))
    assert results[0] == results[1] == results[2]


def test_default_model_is_accurate(dataset, args) -> None:
    x, y = dataset
    data = train.split(x, y, args.test_size, args.seed)
    with threadpool_limits(limits=1):
        pipe = train.build_pipeline(args).fit(data.x_train, data.y_train)
        metrics, _, _ = train.evaluate(pipe, data)
    assert list(pipe.classes_) == ["benign", "malignant"]
    assert metrics["accuracy"] > 0.93 and metrics["roc_auc"] > 0.98
    expected = {"accuracy", "f1_macro", "roc_auc"} | {
        f"{k}_{c}" for k in ("precision", "recall", "test_support") for c in pipe.classes_
    }
    assert set(metrics) == expected
