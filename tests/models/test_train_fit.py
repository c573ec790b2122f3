"""Training that fits the real pipeline (seconds each): reproducible whatever the thread count,
accurate with its default hyper-parameters, and a model seed apart from the split seed."""

from __future__ import annotations

from ml_service.training import train
from threadpoolctl import threadpool_limits


def split(args):  # type: ignore[no-untyped-def]
    """The training data, split as `args` say."""
    x, y = train.load_dataset()
    return train.split(x, y, args.test_size, args.seed)


def test_fit_is_reproducible_whatever_the_thread_count() -> None:
    args = train.parse_args(["--max-iter", "30"])  # small: two OpenMP threads on a busy box
    data = split(args)
    results = []
    for limit in (1, 2, 1):
        with threadpool_limits(limits=limit):
            pipe = train.build_pipeline(args).fit(data.x_train, data.y_train)
            metrics, pred, proba = train.evaluate(pipe, data)
        results.append((metrics, train.predictions_digest(pred, proba)))
    assert results[0] == results[1] == results[2]


def test_default_model_is_accurate() -> None:
    args = train.parse_args([])
    data = split(args)
    with threadpool_limits(limits=1):
        pipe = train.build_pipeline(args).fit(data.x_train, data.y_train)
        metrics, _, _ = train.evaluate(pipe, data)
    assert list(pipe.classes_) == ["benign", "malignant"]
    assert metrics["accuracy"] > 0.93 and metrics["roc_auc"] > 0.98
    expected = {"accuracy", "f1_macro", "roc_auc"} | {
        f"{k}_{c}" for k in ("precision", "recall", "test_support") for c in pipe.classes_
    }
    assert set(metrics) == expected


def test_the_model_seed_changes_the_model_not_the_held_out_rows() -> None:
    fits = []
    for model_seed in ("1", "2"):
        args = train.parse_args(["--model-seed", model_seed, "--max-iter", "30"])
        data = split(args)
        with threadpool_limits(limits=1):
            pipe = train.build_pipeline(args).fit(data.x_train, data.y_train)
            _, pred, proba = train.evaluate(pipe, data)
        meta = train.training_metadata(data, args)
        fits.append((meta["test_fingerprint"], train.predictions_digest(pred, proba)))
    (rows_1, predictions_1), (rows_2, predictions_2) = fits
    assert rows_1 == rows_2, "same held-out rows: the quality gate can compare the two"
    assert predictions_1 != predictions_2, "another model seed, another model"
