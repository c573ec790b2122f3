"""The typed contract of `/predict`, generated from the model's signature at load time.

Two validators share one rule set (every feature required, a JSON number, finite; nothing else):
- msgspec decides: it decodes the raw body straight into per-row structs and stops at the first
  error, so the work any body can cause is bounded by its size (no error list that grows with
  the number of bad fields, no copy of the input per error);
- pydantic explains: for a rejected body of at most `DETAIL_BODY_BYTES`, it lists up to 20
  field-level errors of the first bad row (and it gives `/docs` the typed request schema).
Errors never carry the caller's values.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any

import msgspec
import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model
from typing_extensions import TypedDict

from .errors import InputError, error, safe_errors, too_many_rows

# Above this, a rejected body gets msgspec's first error only: explaining more would cost
# work that grows with what the caller sent.
DETAIL_BODY_BYTES = 16 * 1024
_FLOAT_MAX = float(np.finfo(np.float64).max)
# strict: "1.5" or true is not a number; allow_inf_nan=False: NaN/Infinity/1e999 are rejected.
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
FiniteFloatMsgspec = Annotated[float, msgspec.Meta(ge=-_FLOAT_MAX, le=_FLOAT_MAX)]


def example_row(reference: dict[str, Any] | None, names: tuple[str, ...]) -> list[float] | None:
    """A made-up row for the OpenAPI examples, never a row of the data: per feature, the middle
    of its central training bin (the model's reference statistics), rounded to 3 significant
    digits. None when the model carries no statistics for every feature."""
    stats = (reference or {}).get("feature_stats") or {}
    row = []
    for name in names:
        feature = stats.get(name)
        if not isinstance(feature, dict):
            return None
        edges = feature.get("edges") or []
        if len(edges) >= 2:
            middle = len(edges) // 2
            value = (edges[middle - 1] + edges[middle]) / 2
        else:  # one edge is one observed value: the middle of the range instead
            value = (feature["min"] + feature["max"]) / 2
        row.append(float(f"{value:.3g}"))
    return row


class ModelRef(BaseModel):
    name: str
    version: str


class Prediction(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    class_: str = Field(alias="class", description="predicted class label")
    probabilities: dict[str, float] = Field(description="probability per class label")


class PredictResponse(BaseModel):
    model: ModelRef
    predictions: list[Prediction]


class GenericPredictRequest(BaseModel):
    """Shown by /docs until a model is loaded (the real one names every feature)."""

    instances: list[dict[str, float]] = Field(min_length=1)


# msgspec's messages, mapped to the pydantic wording and types the 422 bodies use
_MS_PATH = re.compile(r" - at `\$(?P<path>[^`]*)`$")
_MS_PATH_PART = re.compile(r"\.(?P<key>[A-Za-z_][A-Za-z0-9_]*)|\[(?P<index>\d+)\]")
_MS_RULES = [
    (re.compile(r"^Object missing required field `(?P<field>.*)`"), "Field required", "missing"),
    (
        re.compile(r"^Object contains unknown field `(?P<field>.*)`"),
        "Extra inputs are not permitted",
        "extra_forbidden",
    ),
    (re.compile(r"^Expected `float`"), "Input should be a valid number", "float_type"),
    (re.compile(r"^Number out of range"), "Input should be a finite number", "finite_number"),
    (re.compile(r"^Expected `array` of length >= 1"), "List should have at least 1 item",
     "too_short"),
    (re.compile(r"^Expected `array`"), "Input should be a valid list", "list_type"),
    (re.compile(r"^Expected `object`"), "Input should be an object", "model_type"),
]  # fmt: skip


def msgspec_error(exc: msgspec.MsgspecError) -> dict[str, Any]:
    """One value-free error item from a msgspec decode/validation error."""
    if not isinstance(exc, msgspec.ValidationError):
        return error((), "Invalid JSON", "json_invalid")
    text = str(exc)
    loc: list[Any] = []
    if m := _MS_PATH.search(text):
        for part in _MS_PATH_PART.finditer(m["path"]):
            loc.append(int(part["index"]) if part["index"] is not None else part["key"])
        text = text[: m.start()]
    for pattern, msg, type_ in _MS_RULES:
        if hit := pattern.match(text):
            if "field" in pattern.groupindex:
                loc.append(hit["field"])
            return error(loc, msg, type_)
    return error(loc, "Input is not valid", "value_error")


@dataclass(frozen=True)
class ModelSchemas:
    """Validators and OpenAPI schemas for one model's feature set."""

    feature_names: tuple[str, ...]
    predict_request: type[BaseModel]
    row_struct: type[msgspec.Struct]
    _predict_decoder: msgspec.json.Decoder
    _explain: TypeAdapter

    @classmethod
    def build(cls, feature_names: tuple[str, ...], example: list[float] | None = None):
        names = tuple(feature_names)
        # Internal names f0..fn: column names need not be identifiers or avoid reserved ones.
        fields: dict[str, Any] = {
            f"f{i}": (FiniteFloat, Field(alias=name, title=name)) for i, name in enumerate(names)
        }
        extra = {"examples": [dict(zip(names, example, strict=True))]} if example else {}
        instance = create_model(
            "Instance",
            __config__=ConfigDict(extra="forbid", json_schema_extra=extra or None),
            **fields,
        )
        request_extra = {"examples": [{"instances": extra["examples"]}]} if extra else None
        predict_request = create_model(
            "PredictRequest",
            __config__=ConfigDict(extra="forbid", json_schema_extra=request_extra),
            instances=(list[instance], Field(min_length=1)),
        )
        row = msgspec.defstruct(
            "Row",
            [(f"f{i}", FiniteFloatMsgspec) for i in range(len(names))],
            rename=dict(zip((f"f{i}" for i in range(len(names))), names, strict=True)),
            forbid_unknown_fields=True,
        )
        body = msgspec.defstruct(
            "PredictBody",
            [("instances", Annotated[list[row], msgspec.Meta(min_length=1)])],
            forbid_unknown_fields=True,
        )
        # The same rules for the explanation, stopping at the first bad row (fail_fast).
        row_td = TypedDict("Row", {name: FiniteFloat for name in names})  # type: ignore[misc]
        row_td.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
        body_td = TypedDict(  # type: ignore[misc]  # noqa: UP013
            "PredictBody",
            {"instances": Annotated[list[row_td], Field(min_length=1, fail_fast=True)]},
        )
        body_td.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
        return cls(
            feature_names=names,
            predict_request=predict_request,
            row_struct=row,
            _predict_decoder=msgspec.json.Decoder(body),
            _explain=TypeAdapter(body_td),
        )

    def rows_matrix(self, rows: list[msgspec.Struct], max_rows: int) -> np.ndarray:
        """Decoded rows → float64 matrix in signature order (413 over `max_rows`)."""
        if len(rows) > max_rows:
            raise too_many_rows(max_rows)
        astuple = msgspec.structs.astuple
        return np.asarray([astuple(r) for r in rows], dtype=np.float64).reshape(
            len(rows), len(self.feature_names)
        )

    def parse_predict(self, body: bytes, max_rows: int) -> np.ndarray:
        try:
            rows = self._predict_decoder.decode(body).instances
        except msgspec.MsgspecError as exc:
            raise InputError(self.explain(body, exc)) from None
        return self.rows_matrix(rows, max_rows)

    def explain(self, body: bytes, exc: msgspec.MsgspecError) -> list[dict[str, Any]]:
        """Field-level errors of a rejected body: pydantic's list when the body is small,
        msgspec's first error otherwise (or should the two ever disagree)."""
        if len(body) <= DETAIL_BODY_BYTES:
            try:
                self._explain.validate_json(body)
            except ValidationError as detailed:
                return safe_errors(detailed)
        return [msgspec_error(exc)]


class FeedbackItem(BaseModel):
    model_config = ConfigDict(extra="forbid")
    prediction_id: str = Field(description="as `/predict` returned it for the row")
    label: str = Field(description="the true class: one of the model's classes (`GET /model`)")


class FeedbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    feedback: list[FeedbackItem] = Field(min_length=1, description="up to FEEDBACK_MAX_ITEMS")


class FeedbackResponse(BaseModel):
    accepted: int = Field(description="labels counted in the live quality metrics")
    duplicates: int = Field(
        description="labels for prediction IDs this replica already counted (not counted again)"
    )
