"""Request rows built from a model's own input example: what a caller of the model would send."""

from __future__ import annotations

import json
from pathlib import Path

import httpx


def from_model_dir(model_dir: Path, n: int = 3, step: float = 0.01) -> list[dict[str, float]]:
    """`n` rows from the input example logged with the model (pandas split orient), feature
    values of row i scaled by 1 + step * i."""
    doc = json.loads((Path(model_dir) / "input_example.json").read_text())
    split = doc.get("dataframe_split", doc)
    base = dict(zip(split["columns"], split["data"][0], strict=True))
    return [{k: float(v) * (1 + step * i) for k, v in base.items()} for i in range(n)]


def from_app(app, n: int = 3, http=httpx) -> list[dict[str, float]]:  # type: ignore[no-untyped-def]
    """`n` rows from the example a running app shows in /openapi.json, scaled as above (step
    0.01); `http` is the client to ask with (a tier may record every answer)."""
    instance = http.get(app.url("/openapi.json")).json()["components"]["schemas"]["Instance"]
    return [{k: v * (1 + 0.01 * i) for k, v in instance["examples"][0].items()} for i in range(n)]
