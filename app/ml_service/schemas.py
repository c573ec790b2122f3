"""Request/response models. The per-row model is generated from the MLflow signature at load time.

Validation turns the JSON body straight into a float64 matrix in signature order; error
messages are field-level (`loc`, `msg`, `type`) and never carry the caller's values.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, create_model
from typing_extensions import TypedDict

# strict: "1.5" or true is not a number; allow_inf_nan=False: NaN/Infinity/1e999 are rejected.
FiniteFloat = Annotated[float, Field(strict=True, allow_inf_nan=False)]
MAX_ERRORS = 20
MAX_LOC_CHARS = 64
_NAME_RE = re.compile(rf"[A-Za-z_][A-Za-z0-9_.\-]{{0,{MAX_LOC_CHARS - 1}}}")


class ErrorItem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    detail: list[ErrorItem] | str


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


class InvocationsResponse(BaseModel):
    predictions: list[str] = Field(description="predicted class label per row")


class GenericPredictRequest(BaseModel):
    """Shown by /docs until a model is loaded (the real one names every feature)."""

    instances: list[dict[str, float]] = Field(min_length=1)


class InvocationsRequest(BaseModel):
    """MLflow scoring-server payload: exactly one of the four keys."""

    model_config = ConfigDict(extra="forbid")
    dataframe_split: dict[str, Any] | None = Field(
        None, description='{"columns": [...], "data": [[...], ...]}'
    )
    dataframe_records: list[dict[str, float]] | None = None
    instances: list[dict[str, float]] | list[list[float]] | None = None
    inputs: list[dict[str, float]] | list[list[float]] | dict[str, list[float]] | None = None
    params: dict[str, Any] | None = Field(None, description="accepted and ignored")


class InputError(Exception):
    """Client input failed validation; `errors` are safe to return (no input values)."""

    def __init__(self, errors: list[dict[str, Any]]) -> None:
        super().__init__(f"{len(errors)} validation error(s)")
        self.errors = errors


def _loc_part(part: Any) -> str | int:
    """Field names are named back (that is what makes errors field-level) only when they look
    like identifiers; anything else the caller put in a key is replaced, not echoed."""
    if isinstance(part, int):
        return part
    text = str(part)
    return text if _NAME_RE.fullmatch(text) else "<field>"


def error(loc: tuple | list, msg: str, type_: str) -> dict[str, Any]:
    return {"loc": [_loc_part(p) for p in loc], "msg": msg, "type": type_}


def safe_errors(exc: ValidationError, prefix: tuple = ()) -> list[dict[str, Any]]:
    out = []
    for e in exc.errors(include_url=False, include_context=False, include_input=False)[:MAX_ERRORS]:
        out.append(error((*prefix, *e["loc"]), e["msg"], e["type"]))
    return out


@dataclass(frozen=True)
class ModelSchemas:
    """Validators and OpenAPI schemas for one model's feature set."""

    feature_names: tuple[str, ...]
    instance: type[BaseModel]
    predict_request: type[BaseModel]
    _records: TypeAdapter
    _rows: TypeAdapter
    _column: TypeAdapter
    _getter: Any
    _fast_predict: TypeAdapter
    _item_getter: Any

    @classmethod
    def build(cls, feature_names: tuple[str, ...], example: list[float] | None = None):
        # Internal names f0..fn: column names need not be identifiers or avoid BaseModel's own.
        fields: dict[str, Any] = {
            f"f{i}": (FiniteFloat, Field(alias=name, title=name))
            for i, name in enumerate(feature_names)
        }
        extra = {"examples": [dict(zip(feature_names, example, strict=True))]} if example else {}
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
        getter = operator.attrgetter(*fields)
        # The same rules as TypedDicts keyed by the feature names: plain dicts are ~20% cheaper
        # to validate than model instances (the 100-row hot path). Errors still come from the
        # model above so their wording never depends on the fast path.
        row = TypedDict("Row", {name: FiniteFloat for name in feature_names})  # type: ignore[misc]
        row.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
        # functional syntax: a class body could not see the local `row` (postponed annotations)
        body = TypedDict(  # type: ignore[misc]  # noqa: UP013
            "PredictBody", {"instances": Annotated[list[row], Field(min_length=1)]}
        )
        body.__pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[attr-defined]
        return cls(
            feature_names=tuple(feature_names),
            instance=instance,
            predict_request=predict_request,
            _records=TypeAdapter(list[instance]),
            _rows=TypeAdapter(list[list[FiniteFloat]]),
            _column=TypeAdapter(list[FiniteFloat]),
            _getter=getter,
            _fast_predict=TypeAdapter(body),
            _item_getter=operator.itemgetter(*feature_names),
        )

    def invocations_json_schema(self, instance_ref: str) -> dict[str, Any]:
        """OpenAPI for /invocations: one of MLflow's four payload shapes, with this model's
        columns. (Columnar `inputs` is accepted too but left out: equal column lengths
        cannot be expressed in JSON Schema.)"""
        n = len(self.feature_names)
        row = {"type": "array", "items": {"type": "number"}, "minItems": n, "maxItems": n}
        records = {"type": "array", "items": {"$ref": instance_ref}, "minItems": 1}
        rows = {"type": "array", "items": row, "minItems": 1}
        split = {
            "type": "object",
            "additionalProperties": False,
            "required": ["columns", "data"],
            "properties": {
                "columns": {
                    "type": "array",
                    "items": {"enum": list(self.feature_names)},
                    "minItems": n,
                    "maxItems": n,
                    "uniqueItems": True,
                },
                "data": rows,
                "index": {"type": "array"},
            },
        }

        def variant(key: str, schema: dict[str, Any]) -> dict[str, Any]:
            return {
                "type": "object",
                "additionalProperties": False,
                "required": [key],
                "properties": {key: schema, "params": {"type": "object"}},
            }

        return {
            "title": "InvocationsRequest",
            "description": "MLflow scoring-server payload (exactly one format key)",
            "oneOf": [
                variant("dataframe_split", split),
                variant("dataframe_records", records),
                variant("instances", {"anyOf": [records, rows]}),
                variant("inputs", {"anyOf": [records, rows]}),
            ],
        }

    # ---------------------------------------------------------------- conversions

    def _matrix(self, instances: list[BaseModel]) -> np.ndarray:
        getter = self._getter
        if len(self.feature_names) == 1:
            return np.asarray([[getter(r)] for r in instances], dtype=np.float64)
        return np.asarray([getter(r) for r in instances], dtype=np.float64)

    def parse_predict(self, body: bytes) -> np.ndarray:
        try:
            rows = self._fast_predict.validate_json(body)["instances"]
        except ValidationError:
            try:
                self.predict_request.model_validate_json(body)
            except ValidationError as exc:
                raise InputError(safe_errors(exc)) from None
            raise  # the two validators disagree: a bug, not bad input
        getter = self._item_getter
        if len(self.feature_names) == 1:
            return np.asarray([[getter(r)] for r in rows], dtype=np.float64)
        return np.asarray([getter(r) for r in rows], dtype=np.float64)

    def _records_matrix(self, value: Any, loc: tuple) -> np.ndarray:
        try:
            return self._matrix(self._records.validate_python(value))
        except ValidationError as exc:
            raise InputError(safe_errors(exc, loc)) from None

    def _rows_matrix(self, value: Any, loc: tuple, width: int | None = None) -> np.ndarray:
        try:
            rows = self._rows.validate_python(value)
        except ValidationError as exc:
            raise InputError(safe_errors(exc, loc)) from None
        width = width or len(self.feature_names)
        bad = [
            error((*loc, i), f"Row should have {width} values, not {len(r)}", "row_length")
            for i, r in enumerate(rows)
            if len(r) != width
        ]
        if bad:
            raise InputError(bad[:MAX_ERRORS])
        return np.asarray(rows, dtype=np.float64).reshape(len(rows), width)

    def _check_columns(self, columns: Any, loc: tuple) -> list[int]:
        """Positions of the signature's features within `columns` (missing/unknown → errors)."""
        if not isinstance(columns, list) or not all(isinstance(c, str) for c in columns):
            raise InputError([error(loc, "Input should be a list of column names", "list_type")])
        errors = []
        known = set(self.feature_names)
        seen: set[str] = set()
        for i, c in enumerate(columns):
            if c not in known:
                errors.append(error((*loc, i), "Unknown column", "extra_forbidden"))
            elif c in seen:
                errors.append(error((*loc, i), "Duplicate column", "duplicate"))
            seen.add(c)
        errors += [error((*loc, n), "Field required", "missing") for n in known - seen]
        if errors:
            raise InputError(errors[:MAX_ERRORS])
        index = {c: i for i, c in enumerate(columns)}
        return [index[n] for n in self.feature_names]

    def _columns_matrix(self, value: dict[str, Any], loc: tuple) -> np.ndarray:
        """Columnar `inputs`: {"feature": [v0, v1, ...], ...}, every column the same length."""
        self._check_columns(list(value), loc)
        columns = []
        for name in self.feature_names:
            try:
                columns.append(self._column.validate_python(value[name]))
            except ValidationError as exc:
                raise InputError(safe_errors(exc, (*loc, name))) from None
        if len({len(c) for c in columns}) > 1:
            raise InputError([error(loc, "All columns should have the same length", "length")])
        return np.ascontiguousarray(np.asarray(columns, dtype=np.float64).T)

    def _non_empty(self, matrix: np.ndarray, loc: tuple) -> np.ndarray:
        if matrix.shape[0] == 0:
            raise InputError([error(loc, "List should have at least 1 item", "too_short")])
        return matrix

    def parse_invocations(self, payload: Any) -> np.ndarray:
        """MLflow scoring-server formats → matrix in signature order."""
        if not isinstance(payload, dict):
            raise InputError([error((), "Input should be an object", "model_type")])
        formats = ("dataframe_split", "dataframe_records", "instances", "inputs")
        present = [k for k in formats if k in payload]
        unknown = [k for k in payload if k not in (*formats, "params")]
        if unknown:
            raise InputError(
                [error((k,), "Extra inputs are not permitted", "extra_forbidden") for k in unknown]
            )
        if len(present) != 1:
            msg = "Exactly one of dataframe_split, dataframe_records, instances, inputs is required"
            raise InputError([error((), msg, "format")])
        key = present[0]
        value = payload[key]
        loc = (key,)
        if key == "dataframe_split":
            if not isinstance(value, dict):
                raise InputError([error(loc, "Input should be an object", "model_type")])
            extra = [k for k in value if k not in ("columns", "data", "index")]
            if extra:
                raise InputError(
                    [
                        error((*loc, k), "Extra inputs are not permitted", "extra_forbidden")
                        for k in extra
                    ]
                )
            if "data" not in value:
                raise InputError([error((*loc, "data"), "Field required", "missing")])
            if "columns" in value:
                order = self._check_columns(value["columns"], (*loc, "columns"))
                matrix = self._rows_matrix(value["data"], (*loc, "data"), len(order))
                matrix = matrix[:, order]
            else:
                matrix = self._rows_matrix(value["data"], (*loc, "data"))
            return self._non_empty(matrix, (*loc, "data"))
        if key == "dataframe_records":
            return self._non_empty(self._records_matrix(value, loc), loc)
        if isinstance(value, dict) and key == "inputs":
            return self._non_empty(self._columns_matrix(value, loc), loc)
        if isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            return self._records_matrix(value, loc)
        if isinstance(value, list):
            return self._non_empty(self._rows_matrix(value, loc), loc)
        raise InputError([error(loc, "Input should be a list of objects or rows", "list_type")])
