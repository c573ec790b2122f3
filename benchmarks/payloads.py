"""Request bodies for each server, built from the model's own input example (same rows for all)."""

from __future__ import annotations

import json
from itertools import cycle, islice
from pathlib import Path


def load_rows(model_dir: str | Path, n: int) -> tuple[list[str], list[list[float]]]:
    """Column names and `n` rows (the input example's rows, repeated)."""
    example = json.loads((Path(model_dir) / "input_example.json").read_text())
    columns, data = example["columns"], example["data"]
    return columns, [[float(v) for v in row] for row in islice(cycle(data), n)]


def body(kind: str, columns: list[str], rows: list[list[float]]) -> dict:
    records = [dict(zip(columns, row, strict=True)) for row in rows]
    if kind in ("ml-service", "bentoml", "http-floor"):  # the floor gets ml-service's bytes
        return {"instances": records}
    if kind == "mlflow":
        return {"dataframe_split": {"columns": columns, "data": rows}}
    if kind == "mlserver":
        # V2 inference protocol, one input per column, decoded to a DataFrame by the pandas codec
        return {
            "parameters": {"content_type": "pd"},
            "inputs": [
                {"name": c, "datatype": "FP64", "shape": [len(rows)], "data": [r[i] for r in rows]}
                for i, c in enumerate(columns)
            ],
        }
    raise ValueError(kind)


def predicted_rows(kind: str, response: object) -> int | None:
    """How many predictions a server's response carries (checked before any load is sent);
    None for the HTTP floor, which has no model."""
    if kind == "http-floor":
        return None
    if kind in ("ml-service", "mlflow"):
        return len(response["predictions"])
    if kind == "mlserver":
        return response["outputs"][0]["shape"][0]
    if kind == "bentoml":
        return len(response)
    raise ValueError(kind)
