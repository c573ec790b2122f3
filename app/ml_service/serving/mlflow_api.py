"""The MLflow scoring protocol: `/invocations`, `/ping`, `/version`, as `mlflow models serve`.

Clients of `mlflow models serve` switch to ml-service unchanged, so these endpoints follow
MLflow's semantics, not ml-service's strict `/predict` contract:
- a well-formed request (exactly the signature's columns, finite numbers) takes a fast path
  that decodes straight into a float matrix;
- anything else is handed to MLflow's OWN scoring-server parsing and schema enforcement
  (`mlflow.pyfunc.scoring_server`, `mlflow.models.utils._enforce_schema`): extra columns are
  dropped, numeric strings converted, missing values passed on when the model accepts them, and
  errors are 400 with MLflow's `{"error_code", "message"}` body.
What deliberately differs (value-free error messages, size limits, a 415 without Content-Type,
no Parquet) is listed in docs/api.md.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import re
from collections.abc import Iterator
from functools import lru_cache
from typing import Any

import msgspec
import numpy as np
from fastapi import APIRouter, Request
from fastapi.responses import Response
from starlette.requests import ClientDisconnect

from .body import OFF_LOOP_BYTES, read_body
from .deps import service_of
from .errors import ApiError, MlflowError, MlflowErrorBody, json_response, too_many_rows
from .feedback import invocation_headers
from .inference import client_gone
from .model import LoadedModel
from .schemas import FiniteFloatMsgspec, ModelSchemas
from .service import Service

log = logging.getLogger("ml_service")
router = APIRouter(tags=["mlflow"])

CSV, JSON = "text/csv", "application/json"
FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")
REQUIRED_FORMAT = (
    "The input must be a JSON dictionary with exactly one of the input fields "
    "{'dataframe_split', 'dataframe_records', 'instances', 'inputs'}"
)
UNSUPPORTED_TYPE = f"This predictor only supports the following content types: {[CSV, JSON]}."
MODEL_FAILED = (
    "Encountered an unexpected error while evaluating the model. Verify that the serialized "
    "input Dataframe is compatible with the model for inference."
)
_ERRORS = {
    400: {"model": MlflowErrorBody, "description": "Input MLflow's schema enforcement refuses"},
    413: {"model": MlflowErrorBody, "description": "Body or row count over the configured limit"},
    415: {"description": "Content type other than application/json or text/csv (text/plain)"},
    503: {"model": MlflowErrorBody, "description": "No model loaded yet (see Retry-After)"},
}


def _bad_request(message: str, code: str = "BAD_REQUEST") -> MlflowError:
    return MlflowError(400, code, message)


# ---------------------------------------------------------------- the fast path


class FastPath:
    """Decoders for the well-formed MLflow payloads of one model: exact columns, numbers."""

    def __init__(self, schemas: ModelSchemas) -> None:
        row = schemas.row_struct
        split = msgspec.defstruct(
            "Split",
            [
                ("columns", list[str]),
                ("data", list[list[FiniteFloatMsgspec]]),
                ("index", Any, None),
            ],
            forbid_unknown_fields=True,
        )
        payload = msgspec.defstruct(
            "Payload",
            [(f, list[row] | None, None) for f in FORMATS if f != "dataframe_split"]
            + [("dataframe_split", split | None, None), ("params", Any, None)],
            forbid_unknown_fields=True,
        )
        self._decoder = msgspec.json.Decoder(payload)
        self._schemas = schemas
        self._order = {name: i for i, name in enumerate(schemas.feature_names)}

    def matrix(self, body: bytes, max_rows: int) -> tuple[np.ndarray, Any] | None:
        """(matrix, params) when MLflow would take the body as it is; None otherwise."""
        try:
            payload = self._decoder.decode(body)
        except msgspec.MsgspecError:
            return None
        given = [f for f in FORMATS if getattr(payload, f)]  # None or empty: MLflow decides
        if len(given) != 1 or any(
            getattr(payload, f) is not None for f in FORMATS if f not in given
        ):
            return None
        value = getattr(payload, given[0])
        if given[0] != "dataframe_split":
            return self._schemas.rows_matrix(value, max_rows), payload.params
        columns, n = value.columns, len(self._order)
        if sorted(columns) != sorted(self._order) or any(len(r) != n for r in value.data):
            return None
        if len(value.data) > max_rows:
            raise too_many_rows(max_rows)
        x = np.asarray(value.data, dtype=np.float64).reshape(len(value.data), n)
        order = [columns.index(name) for name in self._schemas.feature_names]
        return (x if order == list(range(n)) else x[:, order]), payload.params


@lru_cache(maxsize=4)
def fast_path(schemas: ModelSchemas) -> FastPath:
    return FastPath(schemas)


# ---------------------------------------------------------------- MLflow's own path


# Columns beyond the signature that a payload may carry (ids, timestamps...): MLflow drops them;
# past this many, the payload is refused instead of building a frame that wide.
MAX_EXTRA_COLUMNS = 64
# Longest CSV record (header or row) read at all: the csv module parses one in a single call
# that holds the interpreter (~3 ms for 32 KiB of short fields).
MAX_CSV_RECORD_CHARS = 32 * 1024


def _too_wide_error() -> MlflowError:
    return _bad_request(
        f"Rows are wider than the model signature plus {MAX_EXTRA_COLUMNS} extra columns.",
        "INVALID_PARAMETER_VALUE",
    )


def _too_wide(value: Any, width: int) -> bool:
    """Unnamed rows (lists) or split columns wider than the signature allows."""
    if isinstance(value, dict) and "data" in value:
        rows = value.get("data")
        columns = value.get("columns")
        if isinstance(columns, list) and len(columns) > width:
            return True
    else:
        rows = value
    return isinstance(rows, list) and any(isinstance(r, list) and len(r) > width for r in rows)


def _rows(value: Any) -> int:
    if isinstance(value, dict):
        data = value.get("data", value)
        if data is not value:
            return len(data) if isinstance(data, list) else 0
        return max((len(v) for v in value.values() if isinstance(v, list)), default=0)
    return len(value) if isinstance(value, list) else 0


def _keep_signature_columns(value: Any, names: frozenset[str]) -> Any:
    """What MLflow would drop anyway (columns outside the signature), dropped before pandas
    sees it: the DataFrame then costs rows x signature columns, whatever the caller sent, and
    MLflow does not log the names of the columns it drops."""
    if isinstance(value, list):
        return [
            {k: v for k, v in r.items() if k in names} if isinstance(r, dict) else r for r in value
        ]
    if not isinstance(value, dict):
        return value  # not a frame at all: MLflow's parsing refuses it
    if "data" not in value:
        return {k: v for k, v in value.items() if k in names}
    columns, rows = value.get("columns"), value.get("data")
    if isinstance(columns, list) and isinstance(rows, list):
        keep = [i for i, c in enumerate(columns) if isinstance(c, str) and c in names]
        if len(keep) < len(columns) and all(
            isinstance(r, list) and len(r) == len(columns) for r in rows
        ):  # ragged rows are left for MLflow to refuse
            return {
                **value,
                "columns": [columns[i] for i in keep],
                "data": [[r[i] for i in keep] for r in rows],
            }
    return value


_MISSING = re.compile(r"missing inputs (?P<names>\[[^\]]*\])")
_COLUMN = re.compile(r"column '?(?P<name>[^'.\s]+)")


def _schema_message(exc: Exception, names: tuple[str, ...]) -> str:
    """A value-free message for a schema-enforcement failure: it names signature columns only,
    never a column or value the caller sent."""
    text = str(exc)
    if m := _MISSING.search(text):
        missing = [n for n in names if f"'{n}'" in m["names"]]
        return f"Model is missing inputs {missing}."
    if (m := _COLUMN.search(text)) and m["name"] in names:
        return f"Incompatible input types for column {m['name']}."
    return "Failed to enforce the model input schema. Please check your input data."


def _mlflow_frame(model: LoadedModel, payload: dict[str, Any], max_rows: int) -> Any:
    """MLflow's scoring-server parsing and schema enforcement, on a decoded JSON payload."""
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import infer_and_parse_data
    from mlflow.pyfunc.utils.serving_data_parser import is_unified_llm_input

    if is_unified_llm_input(payload):
        raise _bad_request(REQUIRED_FORMAT)
    params = payload.pop("params", None)
    data = {k: v for k, v in payload.items() if k in FORMATS}
    if len(data) != 1:
        raise _bad_request(REQUIRED_FORMAT)
    key, value = next(iter(data.items()))
    if _rows(value) > max_rows:
        raise too_many_rows(max_rows)
    if _too_wide(value, len(model.feature_names) + MAX_EXTRA_COLUMNS):
        raise _too_wide_error()
    data[key] = _keep_signature_columns(value, frozenset(model.feature_names))
    try:
        frame = infer_and_parse_data(data, model.mlflow_schemas[0])
    except MlflowException as exc:
        raise _bad_request(
            f"Invalid input. The payload is not a valid representation of '{key}'.", exc.error_code
        ) from None
    return _enforce(model, frame, params)


def _enforce(model: LoadedModel, frame: Any, params: Any) -> tuple[Any, Any]:
    """`PyFuncModel.predict`'s own input checks (its `_validate_prediction_input` minus the
    error text that quotes the data)."""
    from mlflow.models.utils import _enforce_params_schema, _enforce_schema

    input_schema, params_schema = model.mlflow_schemas
    if params_schema is None:
        params = None  # MLflow ignores them, logging every key the caller sent: ignored quietly
    try:
        frame = _enforce_schema(frame, input_schema, "sklearn")
        return frame, _enforce_params_schema(params, params_schema)
    except Exception as exc:
        # MLflow reports every enforcement failure as INVALID_PARAMETER_VALUE (400)
        message = _schema_message(exc, model.feature_names)
        raise _bad_request(message, "INVALID_PARAMETER_VALUE") from None


def _frame_matrix(model: LoadedModel, frame: Any) -> np.ndarray:
    """The enforced DataFrame → float matrix in signature order. Missing values pass only in
    the columns the model itself predicts on when missing (model.smoke_test found them)."""
    import pandas as pd

    if not isinstance(frame, pd.DataFrame):
        frame = pd.DataFrame(frame)
    try:
        x = frame.reindex(columns=list(model.feature_names)).to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise _bad_request(MODEL_FAILED) from None
    missing = np.isnan(x).any(axis=0)
    refused = [
        n
        for n, m in zip(model.feature_names, missing, strict=True)
        if m and n not in model.nan_columns
    ]
    if refused:
        raise _bad_request(
            f"Missing values in columns {refused[:20]}: the model cannot "
            f"predict on them. {MODEL_FAILED}"
        )
    return x


def _check_csv(model: LoadedModel, text: str, max_rows: int) -> None:
    """What pandas is about to parse, checked record by record with the CSV grammar (a quoted
    newline does not start a row): at most `max_rows` rows after the header, a header no wider
    than the signature plus MAX_EXTRA_COLUMNS, no row wider than the header (plus one: pandas'
    implicit index column), no record longer than MAX_CSV_RECORD_CHARS (the csv module reads a
    record in one call). It stops at the first violation, so its work is bounded by what is
    allowed, not by what was sent."""
    read = 0

    def lines() -> Iterator[str]:
        nonlocal read
        for line in io.StringIO(text):
            read += len(line)
            if read > MAX_CSV_RECORD_CHARS:
                raise _bad_request(
                    f"CSV records are limited to {MAX_CSV_RECORD_CHARS} characters.",
                    "INVALID_PARAMETER_VALUE",
                )
            yield line

    header_width, rows = 0, 0
    try:
        for record in csv.reader(lines()):
            read = 0
            if not record:  # a blank line: pandas skips it
                continue
            if not header_width:
                header_width = len(record)
                limit = len(model.feature_names) + MAX_EXTRA_COLUMNS
            else:
                rows += 1
                limit = header_width + 1
            if rows > max_rows:
                raise too_many_rows(max_rows)
            if len(record) > limit:
                raise _too_wide_error()
    except csv.Error:
        raise _csv_error() from None


def _parse_csv(model: LoadedModel, body: bytes, max_rows: int) -> Any:
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import parse_csv_input

    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad_request(
            "Invalid input. Ensure that input is a valid UTF-8 encoded string."
        ) from None
    _check_csv(model, text, max_rows)
    try:
        frame = parse_csv_input(io.StringIO(text), model.mlflow_schemas[0])
    except MlflowException:
        raise _csv_error() from None
    if len(frame) > max_rows:
        raise too_many_rows(max_rows)
    frame = frame[[c for c in frame.columns if c in set(model.feature_names)]]
    return _enforce(model, frame, None)[0]


def _csv_error() -> MlflowError:
    return _bad_request(
        "Failed to parse input as a Pandas DataFrame. Ensure that the input is a valid "
        "CSV-formatted Pandas DataFrame produced using the `pandas.DataFrame.to_csv()` method."
    )


def _content_type(request: Request) -> str:
    """The media type, under MLflow's rules (415 for a charset other than UTF-8 or any other
    parameter); a missing Content-Type is a 415 here (MLflow answers it with a 500)."""
    raw = request.headers.get("content-type")
    if raw is None:
        raise MlflowError(415, "BAD_REQUEST", UNSUPPORTED_TYPE)
    media, *params = (part.strip() for part in raw.split(";"))
    values = dict(p.partition("=")[::2] for p in params)
    if values.get("charset", "utf-8").lower() != "utf-8":
        raise MlflowError(415, "BAD_REQUEST", "The scoring server only supports UTF-8")
    if set(values) - {"charset"}:
        raise MlflowError(415, "BAD_REQUEST", "Unrecognized content type parameters.")
    media = media.lower()
    if media not in (CSV, JSON):
        raise MlflowError(415, "BAD_REQUEST", UNSUPPORTED_TYPE)
    return media


async def _features(svc: Service, model: LoadedModel, media: str, body: bytes) -> np.ndarray:
    max_rows = svc.settings.max_batch_rows
    if media == JSON:
        assert svc.schemas is not None
        fast = fast_path(svc.schemas)
        if len(body) > OFF_LOOP_BYTES:
            found = await svc.offload(fast.matrix, body, max_rows)
        else:
            found = fast.matrix(body, max_rows)
        if found is not None and (found[1] is None or not model.has_params):
            return found[0]
    # MLflow's own path (pandas, its schema enforcement; its scoring machinery may still be
    # loading): never on the event loop.
    return await svc.offload(_mlflow_features, model, media, body, max_rows)


def _mlflow_features(model: LoadedModel, media: str, body: bytes, max_rows: int) -> np.ndarray:
    model.mlflow_schemas  # noqa: B018 - MLflow's machinery, loaded once, before any use of it
    if media == CSV:
        return _frame_matrix(model, _parse_csv(model, body, max_rows))
    try:
        payload = json.loads(body)  # MLflow's own decoder (it accepts NaN and Infinity)
    except (ValueError, RecursionError):
        raise _bad_request(
            "Invalid input. Ensure that input is a valid JSON formatted string."
        ) from None
    if not isinstance(payload, dict):
        raise _bad_request(REQUIRED_FORMAT)
    frame, _params = _mlflow_frame(model, payload, max_rows)
    return _frame_matrix(model, frame)


async def _answer(
    svc: Service, model: LoadedModel, features: np.ndarray, request: Request
) -> Response:
    try:
        proba = await svc.predict_proba(model, features, client_gone(request.scope))
    except (ApiError, ClientDisconnect):
        raise
    except Exception:
        # MLflow answers a model that fails on the input with 400 (e.g. an unseen category);
        # input that reaches here passed the schema, so the log keeps only the type of error.
        log.info("model failed on /invocations input", exc_info=False)
        raise _bad_request(MODEL_FAILED) from None
    labels, rows = svc.labels(model, proba), proba.tolist()
    answer = {"predictions": rows if model.predict_fn == "predict_proba" else labels}
    # Prediction IDs (when on) travel in headers: the body stays exactly MLflow's.
    identified = svc.identify(request.headers, "/invocations", model, features, labels, rows)
    headers = None if identified is None else invocation_headers(*identified)
    return json_response(answer, headers=headers)


@router.post(
    "/invocations",
    summary="MLflow scoring-server compatible predictions (JSON or CSV)",
    responses=_ERRORS,
    openapi_extra={
        "requestBody": {
            "required": True,
            "content": {
                JSON: {"schema": {"$ref": "#/components/schemas/InvocationsRequest"}},
                CSV: {"schema": {"type": "string"}},
            },
        }
    },
)
async def invocations(request: Request) -> Response:
    svc = service_of(request)
    try:
        media = _content_type(request)
        body = await read_body(request, svc.settings)
        model = svc.require_model()
        return await _answer(svc, model, await _features(svc, model, media, body), request)
    except ApiError as exc:
        raise MlflowError.of(exc) from None


# /ping and /version answer non-JSON bodies under a JSON media type, exactly as MLflow does: kept
# out of the OpenAPI document, which could only describe them wrongly (docs/api.md has them).
@router.get("/ping", include_in_schema=False)
async def ping(request: Request) -> Response:
    """MLflow / SageMaker health check: 200 once a model serves."""
    svc = service_of(request)
    if not svc.ready:
        raise MlflowError.of(svc.unavailable())
    return Response("\n", media_type=JSON)


@router.get("/version", include_in_schema=False)
async def version() -> Response:
    """The MLflow version whose scoring protocol is served."""
    # MLflow answers its bare version string with a JSON media type; so do we.
    return Response(_mlflow_version(), media_type=JSON)


@lru_cache(maxsize=1)
def _mlflow_version() -> str:
    """Read from the installed package's metadata: importing `mlflow.version` would import all
    of MLflow, on the event loop, perhaps while the warm-up thread imports it too."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mlflow-skinny")  # what the image ships; full mlflow depends on it
    except PackageNotFoundError:
        return version("mlflow")
