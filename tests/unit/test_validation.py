"""Request validation: field-level 4xx for every bad input, never the caller's values, never 500."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from ml_service.main import create_app
from ml_service.metrics import new_registry
from ml_service.model import check_versions
from ml_service.schemas import InputError, ModelSchemas
from ml_service.settings import Settings
from support.sklearn_model import save_model

NAMES = ("feature_0", "feature_1", "feature_2", "feature_3")
ROW = {"feature_0": 0.5, "feature_1": -1.0, "feature_2": 2, "feature_3": 0.25}
# A value no error message may contain: proves bodies never echo what the caller sent.
SENTINEL = "s3cr3t-value-4242"


@pytest.fixture(scope="module")
def schemas() -> ModelSchemas:
    return ModelSchemas.build(NAMES)


def errors_of(fn, *args) -> list[dict]:
    with pytest.raises(InputError) as info:
        fn(*args)
    assert SENTINEL not in json.dumps(info.value.errors)
    return info.value.errors


# ---------------------------------------------------------------- /predict bodies


def test_valid_rows_become_a_matrix_in_signature_order(schemas: ModelSchemas) -> None:
    shuffled = dict(reversed(list(ROW.items())))
    x = schemas.parse_predict(json.dumps({"instances": [shuffled, ROW]}).encode())
    assert x.dtype == np.float64
    assert x.tolist() == [[0.5, -1.0, 2.0, 0.25]] * 2


@pytest.mark.parametrize(
    ("row", "loc", "type_"),
    [
        (
            {k: v for k, v in ROW.items() if k != "feature_2"},
            ["instances", 0, "feature_2"],
            "missing",
        ),
        ({**ROW, "surprise": 1.0}, ["instances", 0, "surprise"], "extra_forbidden"),
        ({**ROW, "feature_1": SENTINEL}, ["instances", 0, "feature_1"], "float_type"),
        ({**ROW, "feature_1": "1.5"}, ["instances", 0, "feature_1"], "float_type"),
        ({**ROW, "feature_1": True}, ["instances", 0, "feature_1"], "float_type"),
        ({**ROW, "feature_1": None}, ["instances", 0, "feature_1"], "float_type"),
        ({**ROW, "feature_1": [1.0]}, ["instances", 0, "feature_1"], "float_type"),
    ],
    ids=["missing", "unknown", "string", "numeric-string", "bool", "null", "list"],
)
def test_field_level_errors(schemas: ModelSchemas, row: dict, loc: list, type_: str) -> None:
    errors = errors_of(schemas.parse_predict, json.dumps({"instances": [row]}).encode())
    assert {"loc": loc, "type": type_} in [{"loc": e["loc"], "type": e["type"]} for e in errors]
    assert all(set(e) == {"loc", "msg", "type"} for e in errors)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinite_values_are_rejected(schemas: ModelSchemas, literal: str) -> None:
    body = json.dumps({"instances": [{**ROW, "feature_3": 0.0}]}).replace("0.0", literal)
    errors = errors_of(schemas.parse_predict, body.encode())
    assert errors == [
        {"loc": ["instances", 0, "feature_3"], "msg": "Input should be a finite number",
         "type": "finite_number"}
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "type_"),
    [
        (b'{"instances": []}', "too_short"),
        (b"{}", "missing"),
        (b"[]", "model_type"),
        (b'{"instances": {"feature_0": 1}}', "list_type"),
        (b'{"instances": [' + SENTINEL.encode(), "json_invalid"),
        (b"", "json_invalid"),
    ],
    ids=["empty-batch", "no-instances", "array", "object-not-list", "broken-json", "empty-body"],
)
def test_structural_errors(schemas: ModelSchemas, body: bytes, type_: str) -> None:
    assert type_ in {e["type"] for e in errors_of(schemas.parse_predict, body)}


@pytest.mark.parametrize("key", ["k" * 5000, f"<img src={SENTINEL}>", f"a b {SENTINEL}"])
def test_unknown_field_names_are_not_echoed_unless_identifiers(
    schemas: ModelSchemas, key: str
) -> None:
    body = json.dumps({"instances": [{**ROW, key: 1}]}).encode()
    errors = errors_of(schemas.parse_predict, body)
    assert errors == [
        {"loc": ["instances", 0, "<field>"], "msg": "Extra inputs are not permitted",
         "type": "extra_forbidden"}
    ]  # fmt: skip


def test_error_list_is_bounded(schemas: ModelSchemas) -> None:
    body = json.dumps({"instances": [{"x": SENTINEL}] * 500}).encode()
    assert len(errors_of(schemas.parse_predict, body)) <= 20


# ---------------------------------------------------------------- /invocations payloads

VALUES = [ROW[n] for n in NAMES]


@pytest.mark.parametrize(
    "payload",
    [
        {"dataframe_split": {"columns": list(NAMES), "data": [VALUES]}},
        {"dataframe_split": {"columns": list(NAMES[::-1]), "data": [VALUES[::-1]], "index": [0]}},
        {"dataframe_split": {"data": [VALUES]}},
        {"dataframe_records": [ROW]},
        {"instances": [ROW]},
        {"instances": [VALUES]},
        {"inputs": [ROW]},
        {"inputs": [VALUES]},
        {"inputs": {k: [v] for k, v in ROW.items()}},
        {"inputs": [ROW], "params": {}},
    ],
    ids=["split", "split-reordered", "split-no-columns", "records", "instances-records",
         "instances-rows", "inputs-records", "inputs-rows", "inputs-columns", "params"],
)  # fmt: skip
def test_mlflow_payload_formats(schemas: ModelSchemas, payload: dict) -> None:
    assert schemas.parse_invocations(payload).tolist() == [[0.5, -1.0, 2.0, 0.25]]


@pytest.mark.parametrize(
    ("payload", "loc", "type_"),
    [
        ({"dataframe_split": {"columns": [*NAMES[:3], "bogus"], "data": [VALUES]}},
         ["dataframe_split", "columns", 3], "extra_forbidden"),
        ({"dataframe_split": {"columns": list(NAMES[:3]), "data": [VALUES[:3]]}},
         ["dataframe_split", "columns", "feature_3"], "missing"),
        ({"dataframe_split": {"columns": list(NAMES), "data": [VALUES[:3]]}},
         ["dataframe_split", "data", 0], "row_length"),
        ({"dataframe_split": {"columns": list(NAMES), "data": [[SENTINEL, 1, 2, 3]]}},
         ["dataframe_split", "data", 0, 0], "float_type"),
        ({"dataframe_split": {"columns": list(NAMES), "data": []}},
         ["dataframe_split", "data"], "too_short"),
        ({"dataframe_split": {"columns": list(NAMES)}}, ["dataframe_split", "data"], "missing"),
        ({"dataframe_records": [{**ROW, "feature_0": math.nan}]},
         ["dataframe_records", 0, "feature_0"], "finite_number"),
        ({"dataframe_records": []}, ["dataframe_records"], "too_short"),
        ({"instances": [[1.0, 2.0]]}, ["instances", 0], "row_length"),
        ({"inputs": {"feature_0": [1.0]}}, ["inputs", "feature_1"], "missing"),
        ({"inputs": {**{k: [1.0] for k in NAMES}, "feature_0": [1.0, 2.0]}}, ["inputs"], "length"),
        ({"instances": [ROW], "inputs": [ROW]}, [], "format"),
        ({"features": [ROW]}, ["features"], "extra_forbidden"),
        ({}, [], "format"),
        ([ROW], [], "model_type"),
        ({"instances": SENTINEL}, ["instances"], "list_type"),
    ],
    ids=["split-unknown-col", "split-missing-col", "split-short-row", "split-string",
         "split-empty", "split-no-data", "records-nan", "records-empty", "rows-short",
         "columns-missing", "columns-ragged", "two-formats", "unknown-key", "no-format",
         "not-object", "instances-string"],
)  # fmt: skip
def test_mlflow_payload_errors(schemas: ModelSchemas, payload, loc: list, type_: str) -> None:
    errors = errors_of(schemas.parse_invocations, payload)
    assert {"loc": loc, "type": type_} in [{"loc": e["loc"], "type": e["type"]} for e in errors]


# ---------------------------------------------------------------- dependency versions


@pytest.mark.parametrize(
    ("trained", "incompatible", "mismatches"),
    [
        ({"scikit-learn": "1.9.1", "numpy": "2.4.6"}, [], []),
        ({"scikit-learn": "1.9.0", "numpy": "2.4.6"}, [], [("scikit-learn", "1.9.0", "1.9.1")]),
        ({"scikit-learn": "1.8.2", "numpy": "2.4.6"}, ["scikit-learn"], []),
        ({"scikit-learn": "0.9.1", "numpy": "2.4.6"}, ["scikit-learn"], []),
        ({"scikit-learn": "1.9.1", "numpy": "2.1.0"}, [], [("numpy", "2.1.0", "2.4.6")]),
        ({"scikit-learn": "1.9.1", "numpy": "1.26.4"}, ["numpy"], []),
        ({}, [], []),
    ],
    ids=["same", "sklearn-patch", "sklearn-minor", "sklearn-major", "numpy-minor", "numpy-major",
         "unknown"],
)  # fmt: skip
def test_version_compatibility(trained: dict, incompatible: list, mismatches: list) -> None:
    check = check_versions(trained, {"scikit-learn": "1.9.1", "numpy": "2.4.6"})
    assert [msg.split()[0] for msg in check.incompatible] == incompatible
    assert check.mismatches == mismatches


# ---------------------------------------------------------------- over HTTP (in-process app)

LIMITS = {"max_request_bytes": 4096, "max_batch_rows": 5}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model(tmp_path_factory.mktemp("model") / "m")


def wait_ready(client: TestClient, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if client.get("/ready").status_code == 200:
            return
        time.sleep(0.05)
    raise AssertionError(f"not ready: {client.get('/ready').json()}")


@pytest.fixture(scope="module")
def client(model_dir: Path) -> Iterator[TestClient]:
    settings = Settings(model_uri=str(model_dir), model_name="tiny", model_version="1", **LIMITS)
    with TestClient(
        create_app(settings, registry=new_registry()), raise_server_exceptions=False
    ) as c:
        wait_ready(c)
        yield c


def assert_no_echo(response) -> None:
    assert SENTINEL not in response.text
    assert "Traceback" not in response.text


def test_predict_ok(client: TestClient) -> None:
    r = client.post("/predict", json={"instances": [ROW, ROW]})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model"] == {"name": "tiny", "version": "1"}
    assert len(body["predictions"]) == 2
    for p in body["predictions"]:
        assert p["class"] in ("benign", "malignant")
        assert set(p["probabilities"]) == {"benign", "malignant"}
        assert sum(p["probabilities"].values()) == pytest.approx(1.0)
        assert p["class"] == max(p["probabilities"], key=p["probabilities"].get)


def test_invocations_ok(client: TestClient) -> None:
    r = client.post("/invocations", json={"dataframe_records": [ROW]})
    assert r.status_code == 200, r.text
    assert r.json()["predictions"][0] in ("benign", "malignant")


@pytest.mark.parametrize("path", ["/predict", "/invocations"])
@pytest.mark.parametrize(
    ("kwargs", "status"),
    [
        ({"content": json.dumps({"instances": [ROW]}), "headers": {"content-type": "text/plain"}},
         415),
        ({"content": json.dumps({"instances": [ROW]})}, 415),
        ({"data": {"instances": SENTINEL}}, 415),
        ({"json": {"instances": [ROW] * 6}}, 413),
        ({"json": {"instances": [{**ROW, "pad": SENTINEL * 300}]}}, 413),
        ({"content": [b'{"instances": [', b" " * 5000, b"]}"],
          "headers": {"content-type": "application/json"}}, 413),
        ({"json": {"instances": [{**ROW, "feature_0": SENTINEL}]}}, 422),
        ({"content": b'{"instances": [{"feature_0": NaN}]}',
          "headers": {"content-type": "application/json"}}, 422),
        ({"json": {"instances": []}}, 422),
        ({"content": b"\xff\xfe" + SENTINEL.encode(),
          "headers": {"content-type": "application/json"}}, 422),
    ],
    ids=["text-plain", "no-content-type", "form", "too-many-rows", "content-length", "chunked",
         "non-numeric", "nan", "empty", "binary"],
)  # fmt: skip
def test_bad_input_status(client: TestClient, path: str, kwargs: dict, status: int) -> None:
    if path == "/invocations" and "json" in kwargs:
        kwargs = {"json": {"dataframe_records": kwargs["json"]["instances"]}}
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    assert_no_echo(r)
    assert r.headers["content-type"] == "application/json"


def test_chunked_body_is_measured_while_streaming(client: TestClient) -> None:
    # no Content-Length at all: only the streamed size can catch it
    r = client.post(
        "/predict",
        content=(b" " * 1024 for _ in range(10)),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    assert "content-length" not in {k.lower() for k in r.request.headers}


def test_wrong_method_and_path_are_4xx(client: TestClient) -> None:
    assert client.get("/predict").status_code == 405
    assert client.get("/nope").status_code == 404


def test_docs_show_the_model_fields(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    instance = schema["components"]["schemas"]["Instance"]
    assert list(instance["properties"]) == list(NAMES)
    assert instance["additionalProperties"] is False
    assert all(p["type"] == "number" for p in instance["properties"].values())
    ref = schema["paths"]["/predict"]["post"]["requestBody"]["content"]["application/json"]
    assert ref["schema"]["$ref"] == "#/components/schemas/PredictRequest"
    assert client.get("/docs").status_code == 200


def test_no_model_means_503_with_retry_after(tmp_path: Path) -> None:
    settings = Settings(model_uri=str(tmp_path / "missing"), model_load_backoff_max_seconds=1)
    with TestClient(create_app(settings, registry=new_registry())) as c:
        assert c.get("/health").status_code == 200
        for path in ("/ready", "/model"):
            r = c.get(path)
            assert r.status_code == 503
            assert r.headers["retry-after"].isdigit()
        r = c.post("/predict", json={"instances": [ROW]})
        assert r.status_code == 503
        assert r.headers["retry-after"].isdigit()
        assert r.json() == {"detail": "model not loaded yet"}
