"""ml-service's MLflow endpoints side by side with `mlflow models serve` of the same model.

Every request goes to both servers; status codes must be equal, and so must prediction bodies
(and MLflow's `error_code` on errors). The cases come from MLflow's own scoring-server tests
(`tests/pyfunc/test_scoring_server.py` in the mlflow repository: malformed and non-dict JSON, wrong
orientations, invalid frames, content types and charset) and from what clients of
`mlflow models serve` send in practice (whole rows with extra columns, missing values, numeric
strings, CSV). On top of equality, ml-service's error bodies never echo what was sent.
The few deliberate differences are tested as such at the end (docs/api.md lists them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from support.app_server import AppServer, app_server
from support.mlflow import ScoringServer, scoring_server
from support.rows import from_model_dir
from support.sklearn_model import save_model

SENTINEL = "never-echo-7f3a"
JSON_TYPE = {"content-type": "application/json"}


@dataclass
class Pair:
    """The same model behind both servers."""

    ours: AppServer
    theirs: ScoringServer
    names: list[str]
    rows: list[dict[str, float]]

    def both(self, path: str, content: bytes | str, headers: dict[str, str]) -> tuple:
        with httpx.Client(timeout=60) as http:
            a = http.post(self.ours.url(path), content=content, headers=headers)
            b = http.post(self.theirs.url(path), content=content, headers=headers)
        return a, b


@pytest.fixture(scope="module")
def pair(local_model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """The session's registered breast-cancer model (HistGradientBoosting: takes NaN)."""
    logs = tmp_path_factory.mktemp("compat")
    with (
        app_server(model_uri=str(local_model_dir), wait_ready=True, log_dir=logs) as ours,
        scoring_server(local_model_dir, logs) as theirs,
    ):
        rows = from_model_dir(local_model_dir)
        yield Pair(ours, theirs, list(rows[0]), rows)


@pytest.fixture(scope="module")
def nan_refusing_pair(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pair]:
    """A scaler + logistic regression: scikit-learn declares it cannot take missing values."""
    logs = tmp_path_factory.mktemp("compat-logreg")
    model_dir = save_model(logs / "model", estimator="logreg")
    with (
        app_server(model_uri=str(model_dir), wait_ready=True, log_dir=logs) as ours,
        scoring_server(model_dir, logs) as theirs,
    ):
        rows = from_model_dir(model_dir)
        yield Pair(ours, theirs, list(rows[0]), rows)


def _raw(text: str) -> tuple[str, dict[str, str]]:
    return text, JSON_TYPE


def _json(doc: object) -> tuple[str, dict[str, str]]:
    return json.dumps(doc), JSON_TYPE


def _csv(frame: pd.DataFrame) -> tuple[str, dict[str, str]]:
    return frame.to_csv(index=False), {"content-type": "text/csv"}


def _cases(names: list[str], rows: list[dict[str, float]]) -> dict[str, tuple]:
    first, second = names[0], names[1]
    matrix = [[r[n] for n in names] for r in rows]
    frame = pd.DataFrame(rows)
    with_null = [{**rows[0], first: None}, *rows[1:]]
    without_key = [{k: v for k, v in rows[0].items() if k != second}, *rows[1:]]
    unnamed = pd.DataFrame(np.arange(10))
    nan_literal = json.dumps({"dataframe_records": [{**rows[0], first: "@X@"}]})
    return {
        # the four payloads, every orientation MLflow documents
        "split": _json({"dataframe_split": {"columns": names, "data": matrix}}),
        "split-shuffled-columns": _json({"dataframe_split": {
            "columns": names[::-1], "data": [row[::-1] for row in matrix]}}),
        "split-with-index": _json({"dataframe_split": {
            "index": list(range(len(rows))), "columns": names, "data": matrix}}),
        "split-without-columns": _json({"dataframe_split": {"data": matrix}}),
        "records": _json({"dataframe_records": rows}),
        "instances-records": _json({"instances": rows}),
        "inputs-records": _json({"inputs": rows}),
        "inputs-columns": _json({"inputs": {n: [r[n] for r in rows] for n in names}}),
        "instances-columns": _json({"instances": {n: [r[n] for r in rows] for n in names}}),
        "instances-lists": _json({"instances": matrix}),
        "inputs-lists": _json({"inputs": matrix}),
        "params": _json({"dataframe_records": rows, "params": {"anything": 1}}),
        "charset-utf8": (json.dumps({"dataframe_records": rows}),
                         {"content-type": "application/json; charset=UTF-8"}),
        # schema enforcement: what MLflow converts, drops or passes on
        "extra-columns": _json({"dataframe_records": [
            {**r, "id": f"{SENTINEL}-{i}", "ts": "2026-11-29T00:00:00Z"}
            for i, r in enumerate(rows)]}),
        "extra-columns-split": _json({"dataframe_split": {
            "columns": [*names, SENTINEL], "data": [[*row, 1.0] for row in matrix]}}),
        "extra-top-level-key": _json({"dataframe_records": rows, SENTINEL: True}),
        "null-value": _json({"dataframe_records": with_null}),
        "nan-literal": _raw(nan_literal.replace('"@X@"', "NaN")),
        "missing-key": _json({"dataframe_records": without_key}),
        "missing-column": _json({"dataframe_records": [
            {k: v for k, v in r.items() if k != second} for r in rows]}),
        "numeric-strings": _json({"dataframe_records": [
            {k: str(v) for k, v in r.items()} for r in rows]}),
        "booleans": _json({"dataframe_records": [{**r, first: True} for r in rows]}),
        "non-numeric-string": _json({"dataframe_records": [{**rows[0], first: SENTINEL}]}),
        "nested-value": _json({"dataframe_records": [{**rows[0], first: {SENTINEL: [1]}}]}),
        "infinity-literal": _raw(nan_literal.replace('"@X@"', "Infinity")),
        "empty-records": _json({"dataframe_records": []}),
        # malformed requests, from MLflow's own scoring-server tests
        "malformed-json": _raw("this is,,,, not valid json " + SENTINEL),
        "json-number": _json(1),
        "json-string": _json(SENTINEL),
        "json-list": _json([1]),
        "not-a-dataframe": _json({"not": SENTINEL}),
        "two-formats": _json({"dataframe_records": [], "dataframe_split": {"data": []}}),
        "records-given-split": _json({"dataframe_records": frame.to_dict(orient="split")}),
        "split-given-records": _json({"dataframe_split": frame.to_dict(orient="records")}),
        "split-index-mismatch": _json({"dataframe_split": {
            "index": [1, 2], "data": [[1], [2], [3]]}}),
        "unnamed-frame": _json({"dataframe_split": unnamed.to_dict(orient="split")}),
        # CSV
        "csv": _csv(frame),
        "csv-shuffled": _csv(frame[names[::-1]]),
        "csv-extra-column": _csv(frame.assign(**{SENTINEL: "x"})),
        "csv-missing-cell": (frame.to_csv(index=False).replace(f"\n{rows[0][first]}", "\n", 1),
                             {"content-type": "text/csv"}),
        "csv-empty": ("", {"content-type": "text/csv"}),
        # content types
        "content-type-unsupported": (json.dumps({"dataframe_records": rows}),
                                     {"content-type": "not_a_supported_content_type"}),
        "content-type-text": (json.dumps({"dataframe_records": rows}),
                              {"content-type": "text/plain"}),
        "content-type-param": (json.dumps({"dataframe_records": rows}),
                               {"content-type": "application/json; something=something"}),
        "charset-latin1": (json.dumps({"dataframe_records": rows}),
                           {"content-type": "application/json; charset=latin-1"}),
    }  # fmt: skip


CASES = list(_cases(["a", "b"], [{"a": 1.0, "b": 2.0}]))


def _check_same(a: httpx.Response, b: httpx.Response) -> None:
    assert a.status_code == b.status_code, (
        a.status_code,
        a.text[:300],
        b.status_code,
        b.text[:300],
    )
    if b.status_code == 200:
        assert a.json() == b.json()
        return
    assert SENTINEL not in a.text and "Traceback" not in a.text
    if b.headers.get("content-type", "").startswith("application/json"):
        ours, theirs = a.json(), b.json()
        assert set(ours) == {"error_code", "message"}, ours
        assert ours["error_code"] == theirs["error_code"], (ours, theirs.get("message", "")[:300])
    else:  # MLflow's 415s are plain text
        assert a.headers["content-type"].startswith("text/plain")


@pytest.mark.parametrize("case", CASES)
def test_same_answer_as_mlflow_models_serve(pair: Pair, case: str) -> None:
    content, headers = _cases(pair.names, pair.rows)[case]
    a, b = pair.both("/invocations", content, headers)
    _check_same(a, b)


@pytest.mark.parametrize("case", ["null-value", "nan-literal", "missing-key", "csv-missing-cell"])
def test_missing_values_follow_the_model(nan_refusing_pair: Pair, case: str) -> None:
    """A model that cannot take NaN: 400 as from MLflow, and ours names the column."""
    content, headers = _cases(nan_refusing_pair.names, nan_refusing_pair.rows)[case]
    a, b = nan_refusing_pair.both("/invocations", content, headers)
    _check_same(a, b)
    assert a.status_code == 400
    column = nan_refusing_pair.names[1 if case == "missing-key" else 0]
    assert column in a.json()["message"]


def test_the_same_model_answers_all_rows_the_same(pair: Pair, local_model_dir: Path) -> None:
    """Every row of the training data set, as one CSV and one JSON request to each server."""
    from sklearn.datasets import load_breast_cancer

    data = load_breast_cancer()
    frame = pd.DataFrame(data.data, columns=pair.names)
    for content, headers in (
        _csv(frame),
        _json({"dataframe_split": frame.to_dict(orient="split")}),
    ):
        a, b = pair.both("/invocations", content, headers)
        assert a.status_code == b.status_code == 200, (a.text[:300], b.text[:300])
        assert a.json() == b.json()
        assert len(a.json()["predictions"]) == len(frame)
    # and in requests small enough for the flat tree walk (flat_trees.MAX_ROWS)
    for start in range(0, len(frame), 100):
        part = frame.iloc[start : start + 100]
        a, b = pair.both("/invocations", *_json({"dataframe_split": part.to_dict(orient="split")}))
        assert a.status_code == b.status_code == 200, (a.text[:300], b.text[:300])
        assert a.json() == b.json()


def test_probes_and_version(pair: Pair) -> None:
    with httpx.Client(timeout=30) as http:
        for path in ("/ping", "/version"):
            a, b = http.get(pair.ours.url(path)), http.get(pair.theirs.url(path))
            assert (a.status_code, a.text) == (b.status_code, b.text), path
            assert a.headers["content-type"] == b.headers["content-type"], path
        assert http.get(pair.ours.url("/health")).status_code == 200


def test_mlflow_scoring_client_against_both(pair: Pair) -> None:
    """MLflow's own client: wait_server_ready, then invoke with a DataFrame, a numpy array and
    params — the same outcome from both servers."""
    from mlflow.pyfunc.scoring_server.client import ScoringServerClient

    frame = pd.DataFrame(pair.rows)
    outcomes = []
    for server in (pair.ours, pair.theirs):
        client = ScoringServerClient("127.0.0.1", server.port)
        client.wait_server_ready(timeout=30)
        result = {"version": client.get_version()}
        for label, data, params in (
            ("dataframe", frame, None),
            ("dataframe+params", frame, {"anything": 1}),
            ("numpy", frame.to_numpy(), None),
        ):
            try:
                result[label] = client.invoke(data, params=params).get_predictions().to_dict()
            except Exception as exc:  # both must fail the same way, if at all
                result[label] = f"failed: error code {str(exc).split('error code ')[-1][:3]}"
        outcomes.append(result)
    assert outcomes[0] == outcomes[1]
    assert "failed" not in str(outcomes[0]["dataframe"])


# ---------------------------------------------------------------- deliberate differences


def test_no_content_type_is_415_not_500(pair: Pair) -> None:
    content = json.dumps({"dataframe_records": pair.rows})
    a, b = pair.both("/invocations", content, {})
    assert b.status_code == 500  # MLflow: AttributeError on the missing header
    assert a.status_code == 415


def test_messages_do_not_echo_input(pair: Pair) -> None:
    """MLflow's messages quote the payload; ours carry only signature column names."""
    content, headers = _cases(pair.names, pair.rows)["non-numeric-string"]
    a, b = pair.both("/invocations", content, headers)
    assert a.status_code == b.status_code == 400
    assert SENTINEL in b.text and SENTINEL not in a.text
    assert "stack_trace" not in a.json()
