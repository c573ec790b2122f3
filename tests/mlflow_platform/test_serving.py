"""Train -> register -> alias -> serve, with MLflow's backend store in PostgreSQL and the model
bytes in S3 (MinIO), in both artifact access modes, through the real app over HTTP."""

from __future__ import annotations

import tempfile
from pathlib import Path

import httpx
import numpy as np
import pytest
from support.app_server import app_server
from support.mlflow import RegisteredModel
from support.mlflow_platform import BUCKET, Minio, PlatformServer, Postgres
from support.rows import from_app

from .conftest import dump


def s3_objects(minio: Minio, prefix: str) -> dict[str, int]:
    """key -> size of every object under `prefix` (paginated)."""
    found: dict[str, int] = {}
    for page in (
        minio.client().get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    ):
        found.update({o["Key"]: o["Size"] for o in page.get("Contents", [])})
    return found


def model_objects(minio: Minio, server: PlatformServer, model: RegisteredModel) -> dict[str, int]:
    """The S3 objects of the registered model version's directory."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=server.tracking_uri)
    with pytest.MonkeyPatch.context() as mp:
        for key, value in server.client_env.items():
            mp.setenv(key, value)
        source = client.get_model_version_download_uri(model.name, model.version)
    prefix = server.artifact_uri.removeprefix(f"s3://{BUCKET}/")
    if source.startswith("mlflow-artifacts:/"):
        key = f"{prefix}/{source.removeprefix('mlflow-artifacts:/').strip('/')}"
    else:
        assert source.startswith(f"s3://{BUCKET}/"), source
        key = source.removeprefix(f"s3://{BUCKET}/").strip("/")
    objects = s3_objects(minio, key + "/")
    assert objects, f"no S3 object under {key}/ for {source}"
    return objects


def s3_probabilities(minio: Minio, objects: dict[str, int], rows: list[dict]) -> np.ndarray:
    """What the model stored in S3 predicts, read straight from the bucket with boto3."""
    import skops.io

    (key,) = [k for k in objects if k.endswith(".skops")]
    body = minio.client().get_object(Bucket=BUCKET, Key=key)["Body"].read()
    with tempfile.NamedTemporaryFile(suffix=".skops") as fh:
        fh.write(body)
        fh.flush()
        estimator = skops.io.load(fh.name, trusted=skops.io.get_untrusted_types(file=fh.name))
    import pandas as pd

    return estimator.predict_proba(pd.DataFrame(rows)[list(estimator.feature_names_in_)])


def test_backend_store_is_postgresql(postgres: Postgres, platform):
    server, model = platform
    rows = postgres.execute(
        "SELECT name, version, source FROM model_versions ORDER BY version", server.mode
    )
    assert (model.name, int(model.version)) in {(r[0], r[1]) for r in rows}, rows
    aliases = postgres.execute("SELECT name, alias, version FROM registered_model_aliases",
                               server.mode)  # fmt: skip
    assert (model.name, "champion", int(model.version)) in aliases
    # Nothing on the server's disk: the data dir holds logs (and the auth config) only.
    assert not list(server.data_dir.rglob("*.db")), "an sqlite file appeared next to the server"
    assert not [p for p in server.data_dir.rglob("*") if p.name in ("mlruns", "mlartifacts")]


def test_model_bytes_are_in_s3(minio: Minio, platform):
    server, model = platform
    objects = model_objects(minio, server, model)
    names = {k.rsplit("/", 1)[-1] for k in objects}
    assert {"MLmodel", "input_example.json", "requirements.txt"} <= names, names
    skops = [k for k in objects if k.endswith(".skops")]
    assert len(skops) == 1 and objects[skops[0]] > 10_000, objects


@pytest.mark.parametrize("by", ["version", "alias"])
def test_serves_from_s3(minio: Minio, platform, by: str, http: httpx.Client, logs_dir: Path):
    server, model = platform
    uri = model.model_uri if by == "version" else model.alias_uri
    with app_server(
        model_uri=uri,
        tracking_uri=server.tracking_uri,
        wait_ready=True,
        log_dir=logs_dir,
        **server.client_env,
    ) as app:
        info = http.get(app.url("/model")).json()
        assert (info["name"], info["version"]) == (model.name, model.version), dump(info)
        assert info["alias"] == (None if by == "version" else "champion")
        assert info["run_id"] == model.run_id
        assert info["training_metrics"], "training metrics come from the PostgreSQL store"
        ready = http.get(app.url("/ready"))
        assert ready.status_code == 200
        assert ready.json()["model"] == {"name": model.name, "version": model.version}

        rows = from_app(app, http=http)
        r = http.post(app.url("/predict"), json={"instances": rows})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["model"] == {"name": model.name, "version": model.version}
        expected = s3_probabilities(minio, model_objects(minio, server, model), rows)
        for pred, exp in zip(body["predictions"], expected, strict=True):
            got = [pred["probabilities"][c] for c in info["classes"]]
            np.testing.assert_allclose(got, exp, rtol=1e-12)


def test_direct_mode_clients_need_their_own_s3_credentials(direct_server: PlatformServer):
    """In direct mode MLflow hands out s3:// locations and never proxies the bytes."""
    r = httpx.get(
        f"{direct_server.tracking_uri}/api/2.0/mlflow-artifacts/artifacts",
        auth=(direct_server.client_env["MLFLOW_TRACKING_USERNAME"],
              direct_server.client_env["MLFLOW_TRACKING_PASSWORD"]),
    )  # fmt: skip
    assert r.status_code in (404, 503), r.text  # the artifact proxy is not served
    assert "AWS_SECRET_ACCESS_KEY" in direct_server.client_env


def test_proxied_mode_clients_hold_no_s3_credential(proxied_server: PlatformServer):
    assert not any(k.startswith(("AWS_", "MLFLOW_S3")) for k in proxied_server.client_env)


def test_auth_is_enforced(platform, http: httpx.Client):
    server, model = platform
    url = f"{server.tracking_uri}/api/2.0/mlflow/registered-models/get"
    assert http.get(url, params={"name": model.name}).status_code == 401
    assert http.get(url, params={"name": model.name}, auth=("admin", "wrong")).status_code == 401
    env = server.client_env
    auth = (env["MLFLOW_TRACKING_USERNAME"], env["MLFLOW_TRACKING_PASSWORD"])
    ok = http.get(url, params={"name": model.name}, auth=auth)
    assert ok.status_code == 200, ok.text
