"""The image reads models from S3: the session's model directory uploaded to a real MinIO, then
downloaded inside the image (read-only root FS, UID 10001) through MLflow's S3 artifact repository,
the path the app takes in direct mode (docs/mlflow-platform.md). The trimmed botocore keeps S3 and
the credential-chain services."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from support.mlflow_platform import Credentials, Minio, PlatformToolMissingError

from .conftest import UID_GID, Docker

SCRIPT = """
import hashlib, json, pathlib, boto3, mlflow.artifacts
path = pathlib.Path(mlflow.artifacts.download_artifacts(artifact_uri="s3://mlflow/models/m1",
                                                        dst_path="/tmp/model"))
print(json.dumps({
    "files": {p.relative_to(path).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
              for p in sorted(path.rglob("*")) if p.is_file()},
    "services": sorted(boto3.session.Session().get_available_services()),
}))
"""


def test_image_downloads_a_model_from_s3(docker: Docker, image: str, local_model_dir: Path):
    creds = Credentials()
    try:
        minio = Minio(creds)
    except PlatformToolMissingError as exc:
        pytest.fail(str(exc))
    try:
        minio.start()
        s3 = minio.client()
        s3.create_bucket(Bucket="mlflow")
        expected = {}
        for path in sorted(local_model_dir.rglob("*")):
            if path.is_file():
                rel = path.relative_to(local_model_dir).as_posix()
                s3.upload_file(str(path), "mlflow", f"models/m1/{rel}")
                expected[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        # `-e NAME` passes the value from the client's environment: no secret on a command line.
        s3_env = creds.s3_env(minio.endpoint)
        client = Docker({**docker.env, **s3_env}, started_here=False)
        proc = client.run(
            "run", "--rm", "--network", "host", "--read-only", "--tmpfs", "/tmp",
            "--user", UID_GID, *[a for k in s3_env for a in ("-e", k)],
            "--entrypoint", "python", image, "-c", SCRIPT,
            timeout=300,
        )  # fmt: skip
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        assert result["files"] == expected
        assert "MLmodel" in result["files"]
        assert {"s3", "sts"} <= set(result["services"]), result["services"]
    finally:
        minio.cleanup()
