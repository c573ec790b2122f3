"""BentoML 1.4 competitor: the same MLflow model dir, loaded with mlflow.pyfunc in a service.

Started by benchmarks/run.py as `bentoml serve bentoml_service:MlService`
from the .tools/bench/bentoml virtualenv.
"""

import os

import bentoml
import mlflow.pyfunc
import pandas as pd


@bentoml.service
class MlService:
    def __init__(self) -> None:
        self.model = mlflow.pyfunc.load_model(os.environ["BENCH_MODEL_DIR"])

    @bentoml.api
    def predict(self, instances: list[dict[str, float]]) -> list[str]:
        return [str(c) for c in self.model.predict(pd.DataFrame(instances))]
