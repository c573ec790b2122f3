"""Cluster tier fixtures: one cluster for the whole tier (package scope: it is stopped before the
next tier runs), the images it runs, MLflow inside it (charts/mlflow-platform: PostgreSQL, MinIO
and the tracking server as pods, the way the repository deploys it).

- With KUBECONFIG set, the tests run against that cluster (kind, minikube, a real one): images are
  loaded with the command in ML_SERVICE_E2E_LOAD (e.g. `kind load docker-image {image}`) or must
  already be on the nodes. Tests needing an add-on the cluster lacks (metrics-server, the
  prometheus-operator) are skipped with the reason.
- Otherwise a local single-node Kubernetes is built from source by `make setup-cluster` and started
  here (tests/support/cluster): every add-on is present, so nothing is skipped.

Images are built in the project's private Docker engine: the ml-service image by
scripts/docker/build-image.sh (what `make image` runs), tagged as the chart's default
`image.repository:appVersion`, so `helm install ml-service ./charts/ml-service` with no values
runs it; charts/mlflow-platform's three images from platform.Dockerfile by
scripts/docker/build-platform-images.sh (`make platform-images`), tagged as that chart's defaults;
the add-ons from `make setup-cluster`.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from support.cluster import (
    ADDON_IMAGES,
    Cluster,
    ClusterConfig,
    Docker,
    ExternalCluster,
    LocalCluster,
    build_addon_images,
    build_platform_images,
    docker_engine,
)
from support.cluster.images import SCRIPTS
from support.mlflow import (
    QUIET_MLFLOW_ENV,
    RegisteredModel,
    as_registered_model,
    mlflow_env,
    train,
)

from .lib import SUMMARY, measure, post_json

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ml-service"
ENVIRONMENTS = ROOT / "environments"
PLATFORM_CHART = ROOT / "charts" / "mlflow-platform"


def pytest_terminal_summary(terminalreporter) -> None:
    if SUMMARY:
        terminalreporter.write_sep("-", "cluster tier")
        for key, value in SUMMARY.items():
            terminalreporter.write_line(f"{key}: {value}")


def chart_image() -> str:
    """The chart's default image: `image.repository` and the chart's appVersion."""
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    app_version = yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"]
    return f"{values['image']['repository']}:{values['image']['tag'] or app_version}"


@pytest.fixture(scope="package")
def docker() -> Iterator[Docker]:
    """The Docker engine the images are built in (the project's private dockerd if needed)."""
    with docker_engine() as engine:
        yield engine


@pytest.fixture(scope="package")
def app_image(docker: Docker) -> str:
    """The real ml-service image (default target: the demo model baked in), built as `make image`
    builds it and tagged as the chart's default image."""
    ref = chart_image()
    with measure("build ml-service image (scripts/docker/build-image.sh)"):
        proc = subprocess.run(
            # BASE_IMAGE as for `make image` (local = the debootstrap base)
            [str(SCRIPTS / "build-image.sh"), "--image", ref, "--base",
             os.environ.get("BASE_IMAGE", "local")],
            env=docker.env, capture_output=True, text=True, timeout=2400, check=False, cwd=ROOT,
        )  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"building {ref} failed:\n{proc.stderr[-6000:]}")
    return ref


@pytest.fixture(scope="package")
def platform_images(docker: Docker) -> dict[str, str]:
    """charts/mlflow-platform's images (mlflow-server, postgresql, minio), as the chart names
    them."""
    with measure("build platform images (scripts/docker/build-platform-images.sh)"):
        refs, report = build_platform_images(docker)
    SUMMARY["platform images (target tag size seconds)"] = "; ".join(report.splitlines())
    return refs


@pytest.fixture(scope="package")
def cluster(docker: Docker, app_image: str, platform_images: dict[str, str]) -> Iterator[Cluster]:
    images = [app_image, *platform_images.values()]
    if os.environ.get("KUBECONFIG"):
        ext = ExternalCluster(Path(os.environ["KUBECONFIG"]))
        SUMMARY["cluster"] = f"external ({ext.kubeconfig})"
        ext.kubectl("version")
        with measure("image load (ML_SERVICE_E2E_LOAD)"):
            ext.import_images(images, docker.env)
        yield ext
        return
    with measure("build add-on images (FROM scratch)"):
        build_addon_images(docker)
    local = LocalCluster(ClusterConfig.create())
    try:
        local.start(images=[*images, *ADDON_IMAGES.values()], docker_env=docker.env)
    except BaseException:
        print(local.component_logs())
        local.stop()
        raise
    for key, seconds in local.timings.items():
        SUMMARY[f"local cluster: {key}"] = f"{seconds:.1f} s"
    SUMMARY["local cluster"] = (
        f"{local.config.work_dir}, netns {local.config.netns}, pods {local.config.pod_cidr}"
    )
    try:
        yield local
    finally:
        local.stop()
        for key, seconds in local.timings.items():
            if key.startswith("stop:"):
                SUMMARY[f"local cluster: {key}"] = f"{seconds:.1f} s"


def has_api(cluster: Cluster, group_version: str) -> bool:
    return cluster.kubectl("get", "--raw", f"/apis/{group_version}", check=False).returncode == 0


@pytest.fixture(scope="package")
def metrics_api(cluster: Cluster) -> None:
    if not has_api(cluster, "metrics.k8s.io/v1beta1"):
        pytest.skip("this cluster serves no metrics.k8s.io (install metrics-server)")


@pytest.fixture(scope="package")
def prometheus(cluster: Cluster) -> str:
    """Namespace/name of the operator-managed Prometheus selecting `release: kube-prometheus-stack`
    (the local cluster's; on another cluster, ML_SERVICE_E2E_PROMETHEUS=<ns>/<pod>)."""
    if not has_api(cluster, "monitoring.coreos.com/v1"):
        pytest.skip("this cluster has no prometheus-operator CRDs (install kube-prometheus-stack)")
    target = os.environ.get("ML_SERVICE_E2E_PROMETHEUS", "monitoring/prometheus-k8s-0")
    namespace, _, pod = target.partition("/")
    if not cluster.exists(f"pod/{pod}", namespace):
        pytest.skip(f"no Prometheus pod {target} (set ML_SERVICE_E2E_PROMETHEUS=<ns>/<pod>)")
    return target


# ---------------------------------------------------------------------------- MLflow in the cluster
def _secret() -> str:
    return secrets.token_urlsafe(18)


@dataclass(frozen=True)
class InClusterMlflow:
    """charts/mlflow-platform installed as release `mlflow` in namespace `mlflow` (Service
    `mlflow:5000`, the address every environment's values name), MLflow's basic auth on."""

    namespace: str
    service_uri: str  # what pods use
    v1: RegisteredModel  # default hyper-parameters (the same run as the image's demo model)
    v2: RegisteredModel  # another learning rate: a different model to upgrade to
    # Credentials (repr=False: never in a failure message)
    admin: tuple[str, str] = field(repr=False)  # the first admin (Secret mlflow-auth): trains
    reader: tuple[str, str] = field(repr=False)  # READ (default permission): the environments' pods
    s3: tuple[str, str] = field(repr=False)  # MinIO's root user = the server's key (mlflow-s3)

    def create_credentials(self, cluster: Cluster, namespace: str) -> None:
        """The `mlflow-credentials` Secret an environment's values name (docs/gitops.md, step 5)."""
        cluster.kubectl(
            "create", "secret", "generic", "mlflow-credentials", "-n", namespace,
            f"--from-literal=MLFLOW_TRACKING_USERNAME={self.reader[0]}",
            f"--from-literal=MLFLOW_TRACKING_PASSWORD={self.reader[1]}",
        )  # fmt: skip

    def env(self, uri: str) -> dict[str, str]:
        """Environment of a host process that trains, registers or gates through `uri`."""
        return {"MLFLOW_TRACKING_URI": uri, "MLFLOW_TRACKING_USERNAME": self.admin[0],
                "MLFLOW_TRACKING_PASSWORD": self.admin[1],
                # downloads through the server, not presigned URLs to the in-cluster bucket
                "MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD": "false"}  # fmt: skip

    @contextlib.contextmanager
    def tracking_uri(self, cluster: Cluster) -> Iterator[str]:
        """The tracking server for this host: `kubectl port-forward svc/mlflow` on 127.0.0.1."""
        with cluster.port_forward(self.namespace, "svc/mlflow", 5000) as port:
            yield f"http://127.0.0.1:{port}"


def local_volumes(cluster: Cluster, namespace: str, claims: dict[str, str]) -> None:
    """PersistentVolumes for StatefulSet claims (`claim name -> size`) on a cluster without a
    default StorageClass (the local one has no provisioner): hostPath directories under its work
    dir, owned by UID/GID 10001 (hostPath volumes get no fsGroup), bound to their claims."""
    classes = cluster.get("storageclasses")["items"]
    default = "storageclass.kubernetes.io/is-default-class"
    if any(c["metadata"].get("annotations", {}).get(default) == "true" for c in classes):
        return
    if not isinstance(cluster, LocalCluster):
        pytest.skip("this cluster has no default StorageClass for the platform's volumes")
    pvs = []
    for claim, size in claims.items():
        path = cluster.config.work_dir / "volumes" / namespace / claim
        path.mkdir(parents=True, exist_ok=True)
        os.chown(path, 10001, 10001)
        pvs.append({
            "apiVersion": "v1", "kind": "PersistentVolume",
            "metadata": {"name": f"{namespace}-{claim}", "labels": {"mlsk.local/test": "platform"}},
            "spec": {"capacity": {"storage": size}, "accessModes": ["ReadWriteOnce"],
                     "persistentVolumeReclaimPolicy": "Delete", "hostPath": {"path": str(path)},
                     "claimRef": {"namespace": namespace, "name": claim}},
        })  # fmt: skip
    cluster.apply(pvs)


@pytest.fixture(scope="package")
def mlflow_registry(
    cluster: Cluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[InClusterMlflow]:
    """charts/mlflow-platform installed with its defaults (its images are the built ones) and its
    Secrets created out of band, as docs/mlflow-platform.md says; a reader user made through
    MLflow's auth API; two versions of ml-service trained on this host and registered through the
    tracking server's Service (a port-forward), the way a user would."""
    ns = "mlflow"
    cluster.create_namespace(ns)
    pg, s3, admin = _secret(), ("mlflow-" + _secret()[:8], _secret()), ("admin", _secret())
    for name, literals in {
        "mlflow-postgresql": {"PGPASSWORD": pg},
        "mlflow-s3": {"AWS_ACCESS_KEY_ID": s3[0], "AWS_SECRET_ACCESS_KEY": s3[1]},
        "mlflow-auth": {"MLFLOW_AUTH_ADMIN_USERNAME": admin[0],
                        "MLFLOW_AUTH_ADMIN_PASSWORD": admin[1],
                        "MLFLOW_FLASK_SERVER_SECRET_KEY": _secret()},
    }.items():  # fmt: skip
        cluster.kubectl("create", "secret", "generic", name, "-n", ns,
                        *(f"--from-literal={k}={v}" for k, v in literals.items()))  # fmt: skip
    values = yaml.safe_load((PLATFORM_CHART / "values.yaml").read_text())
    local_volumes(cluster, ns, {
        "data-mlflow-postgresql-0": values["postgresql"]["persistence"]["size"],
        "data-mlflow-minio-0": values["s3"]["persistence"]["size"],
    })  # fmt: skip
    with measure("MLflow platform: helm install --wait (PostgreSQL, MinIO, tracking server)"):
        proc = cluster.helm("install", "mlflow", str(PLATFORM_CHART), "-n", ns, "--wait",
                            "--timeout", "6m", check=False)  # fmt: skip
    if proc.returncode != 0:
        pytest.fail(f"platform install failed:\n{proc.stderr}\n{cluster.describe_pods(ns)}")
    reader = ("ml-service", _secret())
    out = tmp_path_factory.mktemp("cluster-train")
    registry = InClusterMlflow(ns, f"http://mlflow.{ns}.svc.cluster.local:5000", None, None,  # type: ignore[arg-type]
                               admin, reader, s3)  # fmt: skip
    with (
        measure("train + register 2 versions through the Service"),
        registry.tracking_uri(cluster) as uri,
    ):
        env = registry.env(uri)
        # MLflow's auth REST API (what `mlflow.server.get_app_client("basic-auth")` calls)
        user = {"username": reader[0], "password": reader[1]}
        status, body = post_json(f"{uri}/api/2.0/mlflow/users/create", user, auth=admin)
        assert status == 200, f"creating the reader user: {status} {body}"
        v1 = as_registered_model(train(uri, output_json=out / "v1.json", extra_env=env))
        v2 = as_registered_model(
            train(uri, "--learning-rate", "0.05", output_json=out / "v2.json", extra_env=env)
        )
    assert (v1.version, v2.version) == ("1", "2"), "a fresh registry numbers versions from 1"
    yield InClusterMlflow(ns, registry.service_uri, v1, v2, admin, reader, s3)
    cluster.helm("uninstall", "mlflow", "-n", ns, "--wait", check=False)
    cluster.delete_namespace(ns)
    cluster.kubectl("delete", "pv", "-l", "mlsk.local/test=platform", "--ignore-not-found",
                    check=False)  # fmt: skip


# ---------------------------------------------------------------------------- canary models
@dataclass(frozen=True)
class CanaryModels:
    """Versions a canary must stop (tests/cluster/canary_models.py says how each is built)."""

    class_shift: RegisteredModel
    slow: RegisteredModel


@pytest.fixture(scope="package")
def canary_models(
    cluster: Cluster, mlflow_registry: InClusterMlflow, tmp_path_factory: pytest.TempPathFactory
) -> CanaryModels:
    out = tmp_path_factory.mktemp("canary-models")
    script = Path(__file__).with_name("canary_models.py")
    models = {}
    with (
        measure("canary models: train + register the class-shifted and the slow version"),
        mlflow_registry.tracking_uri(cluster) as uri,
    ):
        env = mlflow_env(uri, **mlflow_registry.env(uri))
        # class-shift: --max-iter 20 (see canary_models.py); slow: the stable version's settings
        for kind, flags in (("class-shift", ["--max-iter", "20"]),
                            ("slow", ["--learning-rate", "0.05"])):  # fmt: skip
            proc = subprocess.run(
                [sys.executable, str(script), kind, *flags, "--output-json", str(out / kind)],
                env=env, capture_output=True, text=True, timeout=600, check=False,
            )  # fmt: skip
            if proc.returncode != 0:
                pytest.fail(f"training the {kind} model failed:\n{proc.stderr[-4000:]}")
            models[kind] = as_registered_model(json.loads((out / kind).read_text()))
    return CanaryModels(models["class-shift"], models["slow"])


@pytest.fixture(scope="package")
def quiet_mlflow_env() -> dict[str, str]:
    return {**os.environ, **QUIET_MLFLOW_ENV}
