"""charts/mlflow-platform on the cluster: PostgreSQL, MinIO and the MLflow tracking
server as pods from the images platform.Dockerfile builds, installed with the chart's defaults and
Secrets created out of band (the `mlflow_registry` fixture, which also trained two versions on this
host through the tracking server's Service). Its `helm test` passes, MLflow's basic auth is
enforced, every pod runs unprivileged from the built images, and the registered models' bytes are
in the in-cluster bucket: exactly what the server hands out, so what ml-service's pods load
(test_3_registry.py, test_4_environments.py) comes from there."""

from __future__ import annotations

import boto3
import pytest
from botocore.config import Config
from support.cluster import Cluster
from support.cluster.images import platform_images as platform_image_refs

from .conftest import InClusterMlflow
from .lib import get_json


def test_platform_helm_test_passes(cluster: Cluster, mlflow_registry: InClusterMlflow) -> None:
    proc = cluster.helm("test", "mlflow", "-n", mlflow_registry.namespace, "--timeout", "3m",
                        check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Phase:          Succeeded" in proc.stdout, proc.stdout


def test_platform_pods_run_the_built_images_unprivileged(
    cluster: Cluster, mlflow_registry: InClusterMlflow
) -> None:
    pods = cluster.pods(mlflow_registry.namespace, "app.kubernetes.io/instance=mlflow")
    running = {
        p["metadata"]["labels"]["app.kubernetes.io/component"]: p
        for p in pods
        if p["status"].get("phase") == "Running"
    }
    assert set(running) == {"server", "postgresql", "minio"}, sorted(running)
    assert {c["image"] for p in running.values() for c in p["spec"]["containers"]} == set(
        platform_image_refs().values()
    )
    for pod in running.values():
        assert pod["spec"]["securityContext"]["runAsUser"] == 10001
        for status in pod["status"]["containerStatuses"]:
            assert status["ready"] and status["restartCount"] == 0, status


def client_env(mp: pytest.MonkeyPatch, uri: str, user: tuple[str, str]) -> None:
    mp.setenv("MLFLOW_TRACKING_URI", uri)
    mp.setenv("MLFLOW_TRACKING_USERNAME", user[0])
    mp.setenv("MLFLOW_TRACKING_PASSWORD", user[1])
    # what the environments' values set (environments/*/values.yaml): downloads through the server
    mp.setenv("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false")


def test_registry_requires_credentials(cluster: Cluster, mlflow_registry: InClusterMlflow) -> None:
    """Anonymous calls get 401; the reader user (what the environments' pods hold) reads."""
    from mlflow import MlflowClient

    with mlflow_registry.tracking_uri(cluster) as uri, pytest.MonkeyPatch.context() as mp:
        assert get_json(f"{uri}/api/2.0/mlflow/registered-models/search")[0] == 401
        client_env(mp, uri, mlflow_registry.reader)
        versions = MlflowClient(uri).search_model_versions("name='ml-service'")
    assert sorted(v.version for v in versions) == ["1", "2"]


def test_model_bytes_live_in_the_in_cluster_bucket(
    cluster: Cluster, mlflow_registry: InClusterMlflow, tmp_path
) -> None:
    """Each version's model files are objects in MinIO's bucket (read here straight from the MinIO
    pod with the platform's S3 key) and equal, byte for byte, what the tracking server serves."""
    from mlflow import MlflowClient, artifacts

    if not cluster.pod_network_reachable:
        pytest.skip("the bucket is read from the pod network (the local cluster's)")
    ns = mlflow_registry.namespace
    selector = "app.kubernetes.io/instance=mlflow,app.kubernetes.io/component=minio"
    (minio,) = cluster.pods(ns, selector)
    s3 = boto3.client(
        "s3", endpoint_url=f"http://{cluster.pod_ip(ns, minio['metadata']['name'])}:9000",
        aws_access_key_id=mlflow_registry.s3[0], aws_secret_access_key=mlflow_registry.s3[1],
        region_name="us-east-1", config=Config(retries={"max_attempts": 2}),
    )  # fmt: skip
    with mlflow_registry.tracking_uri(cluster) as uri, pytest.MonkeyPatch.context() as mp:
        client_env(mp, uri, mlflow_registry.reader)
        client = MlflowClient(uri)
        for model in (mlflow_registry.v1, mlflow_registry.v2):
            location = client.get_model_version_download_uri("ml-service", model.version)
            # proxied mode: the server maps mlflow-artifacts:/<path> to s3://mlflow/mlflow/<path>
            assert location.startswith("mlflow-artifacts:/"), location
            prefix = "mlflow/" + location.removeprefix("mlflow-artifacts:/").lstrip("/")
            listed = s3.list_objects_v2(Bucket="mlflow", Prefix=prefix).get("Contents", [])
            keys = [o["Key"] for o in listed]
            assert f"{prefix}/MLmodel" in keys, keys
            served = artifacts.download_artifacts(
                f"models:/ml-service/{model.version}/MLmodel",
                dst_path=str(tmp_path / model.version),
            )
            stored = s3.get_object(Bucket="mlflow", Key=f"{prefix}/MLmodel")["Body"].read()
            with open(served, "rb") as fh:
                assert fh.read() == stored
