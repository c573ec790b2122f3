"""Request validation: field-level 4xx for every bad input, never the caller's values, never 500."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from ml_service.serving.app import create_app
from ml_service.serving.errors import ApiError, InputError
from ml_service.serving.metrics import new_registry
from ml_service.serving.model import check_versions
from ml_service.serving.schemas import ModelSchemas
from ml_service.serving.settings import Settings
from support.app_server import wait_client_ready
from support.sklearn_model import save_model

NAMES = ("feature_0", "feature_1", "feature_2", "feature_3")
ROW = {"feature_0": 0.5, "feature_1": -1.0, "feature_2": 2, "feature_3": 0.25}
# A value no error message may contain: proves bodies never echo what the caller sent.
SENTINEL = "s3cr3t-value-4242"


@pytest.fixture(scope="module")
def schemas() -> ModelSchemas:
    return ModelSchemas.build(NAMES)


def errors_of(fn, *args) -> list[dict]:
    """The 422 errors `fn(*args)` raises; none of them may carry the caller's values."""
    with pytest.raises(InputError) as info:
        fn(*args)
    assert SENTINEL not in json.dumps(info.value.errors)
    return info.value.errors


# ---------------------------------------------------------------- /predict bodies

MAX_ROWS = 1000


def parse(schemas: ModelSchemas, body: bytes) -> np.ndarray:
    return schemas.parse_predict(body, MAX_ROWS)


def test_valid_rows_become_a_matrix_in_signature_order(schemas: ModelSchemas) -> None:
    shuffled = dict(reversed(list(ROW.items())))
    x = parse(schemas, json.dumps({"instances": [shuffled, ROW]}).encode())
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
@pytest.mark.parametrize("pad", [0, 20_000], ids=["detailed", "large-body"])
def test_field_level_errors(
    schemas: ModelSchemas, row: dict, loc: list, type_: str, pad: int
) -> None:
    """Small bodies get pydantic's list of errors, large ones msgspec's first: same verdict."""
    body = json.dumps({"instances": [row, *[ROW] * (pad // 100)]}).encode()
    errors = errors_of(parse, schemas, body)
    assert {"loc": loc, "type": type_} in [{"loc": e["loc"], "type": e["type"]} for e in errors]
    assert all(set(e) == {"loc", "msg", "type"} for e in errors)


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity", "1e999"])
def test_nan_and_infinite_values_are_rejected(schemas: ModelSchemas, literal: str) -> None:
    body = json.dumps({"instances": [{**ROW, "feature_3": 0.0}]}).replace("0.0", literal)
    errors = errors_of(parse, schemas, body.encode())
    assert errors == [
        {"loc": ["instances", 0, "feature_3"], "msg": "Input should be a finite number",
         "type": "finite_number"}
    ]  # fmt: skip


@pytest.mark.parametrize(
    ("body", "type_"),
    [
        (b'{"instances": []}', "too_short"),
        (b"{}", "missing"),
        (b"[]", "dict_type"),
        (b'{"instances": {"feature_0": 1}}', "list_type"),
        (b'{"instances": [' + SENTINEL.encode(), "json_invalid"),
        (b"", "json_invalid"),
    ],
    ids=["empty-batch", "no-instances", "array", "object-not-list", "broken-json", "empty-body"],
)
def test_structural_errors(schemas: ModelSchemas, body: bytes, type_: str) -> None:
    assert type_ in {e["type"] for e in errors_of(parse, schemas, body)}


@pytest.mark.parametrize("key", ["k" * 5000, f"<img src={SENTINEL}>", f"a b {SENTINEL}"])
def test_unknown_field_names_are_not_echoed_unless_identifiers(
    schemas: ModelSchemas, key: str
) -> None:
    body = json.dumps({"instances": [{**ROW, key: 1}]}).encode()
    errors = errors_of(parse, schemas, body)
    assert errors == [
        {"loc": ["instances", 0, "<field>"], "msg": "Extra inputs are not permitted",
         "type": "extra_forbidden"}
    ]  # fmt: skip


@pytest.mark.parametrize(
    "body",
    [
        json.dumps({"instances": [{}] * 30_000}),  # every row wrong in every field
        json.dumps({"instances": [{f"k{i}": SENTINEL for i in range(20_000)}]}),  # wide row
        json.dumps({"instances": [{"x": SENTINEL}] * 500}),
    ],
    ids=["many-empty-rows", "one-wide-row", "many-bad-rows"],
)
def test_error_list_is_bounded(schemas: ModelSchemas, body: str) -> None:
    """Validation stops at the first bad row: the errors (and the work) never grow with the
    number of bad rows or keys the caller sent."""
    errors = errors_of(parse, schemas, body.encode())
    assert 1 <= len(errors) <= len(NAMES) + 1
    assert all(e["loc"][:2] == ["instances", 0] for e in errors)


def test_too_many_rows_is_413(schemas: ModelSchemas) -> None:
    with pytest.raises(ApiError) as info:
        schemas.parse_predict(json.dumps({"instances": [ROW] * 6}).encode(), 5)
    assert info.value.status == 413


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


@pytest.fixture(scope="module")
def client(model_dir: Path) -> Iterator[TestClient]:
    settings = Settings(model_uri=str(model_dir), model_name="tiny", model_version="1", **LIMITS)
    with TestClient(
        create_app(settings, registry=new_registry()), raise_server_exceptions=False
    ) as c:
        wait_client_ready(c)
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


# (request, status on /predict, status on /invocations): /invocations follows MLflow's scoring
# server (400 for input its schema enforcement refuses, 415 in plain text), /predict is strict.
BAD_INPUTS = {
    "text-plain": ({"content": json.dumps({"instances": [ROW]}),
                    "headers": {"content-type": "text/plain"}}, 415, 415),
    "no-content-type": ({"content": json.dumps({"instances": [ROW]})}, 415, 415),
    "form": ({"data": {"instances": SENTINEL}}, 415, 415),
    "too-many-rows": ({"json": {"instances": [ROW] * 6}}, 413, 413),
    "content-length": ({"json": {"instances": [{**ROW, "pad": SENTINEL * 300}]}}, 413, 413),
    "chunked": ({"content": [b'{"instances": [', b" " * 5000, b"]}"],
                 "headers": {"content-type": "application/json"}}, 413, 413),
    "non-numeric": ({"json": {"instances": [{**ROW, "feature_0": SENTINEL}]}}, 422, 400),
    "nan": ({"content": b'{"instances": [{"feature_0": NaN}]}',
             "headers": {"content-type": "application/json"}}, 422, 400),
    "empty": ({"json": {"instances": []}}, 422, 400),
    "binary": ({"content": b"\xff\xfe" + SENTINEL.encode(),
                "headers": {"content-type": "application/json"}}, 422, 400),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_INPUTS))
@pytest.mark.parametrize("path", ["/predict", "/invocations"])
def test_bad_input_status(client: TestClient, path: str, case: str) -> None:
    kwargs, predict_status, invocations_status = BAD_INPUTS[case]
    r = client.post(path, **kwargs)
    assert r.status_code == (predict_status if path == "/predict" else invocations_status), r.text
    assert_no_echo(r)
    if r.status_code == 415 and path == "/invocations":  # as MLflow's scoring server
        assert r.headers["content-type"].startswith("text/plain")
    else:
        assert r.headers["content-type"] == "application/json"
    if path == "/invocations" and r.status_code != 415:
        assert set(r.json()) == {"error_code", "message"}


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
