"""Small MLflow sklearn models in a local directory, for tests that need no tracking server."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def save_model(
    path: Path,
    *,
    n_features: int = 4,
    training: dict[str, Any] | None = None,
    reference: bool = True,
    estimator: str = "logreg",
    input_example: bool = True,
    seed: int = 0,
) -> Path:
    """Fit a tiny classifier with string labels and save it as an MLflow model directory."""
    import mlflow.sklearn
    import pandas as pd
    import sklearn
    from ml_service.model_format import REFERENCE_KEY, TRAINING_KEY, compute_reference
    from mlflow.models import infer_signature
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    names = [f"feature_{i}" for i in range(n_features)]
    x = rng.normal(size=(200, n_features))
    y = np.where(x[:, 0] + 0.5 * x[:, -1] > 0, "benign", "malignant")
    frame = pd.DataFrame(x, columns=names)
    if estimator == "hgb":
        clf = HistGradientBoostingClassifier(max_iter=20, random_state=seed)
        trusted = ["sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor"]
    else:
        clf = make_pipeline(StandardScaler(), LogisticRegression())
        trusted = None
    clf.fit(frame, y)
    metadata: dict[str, Any] = {}
    if reference:
        metadata[REFERENCE_KEY] = compute_reference(x, names, y, ["benign", "malignant"])
    if training is not None:
        metadata[TRAINING_KEY] = training
    mlflow.sklearn.save_model(
        clf,
        str(path),
        serialization_format="skops",
        skops_trusted_types=trusted,
        signature=infer_signature(frame, clf.predict(frame)),
        input_example=frame.head(3) if input_example else None,
        metadata=metadata,
        # explicit requirements: inferring them imports the model in a subprocess (~30 s here)
        pip_requirements=[f"scikit-learn=={sklearn.__version__}", f"numpy=={np.__version__}"],
    )
    return Path(path)
