"""Cluster tier fixtures: one cluster for the whole tier (package scope: it is stopped before the
next tier runs), the images it runs, MLflow inside it.

- With KUBECONFIG set, the tests run against that cluster (kind, minikube, a real one): images are
  loaded with the command in ML_SERVICE_E2E_LOAD (e.g. `kind load docker-image {image}`) or must
  already be on the nodes. Tests needing an add-on the cluster lacks (metrics-server, the
  prometheus-operator) are skipped with the reason.
- Otherwise a local single-node Kubernetes is built from source by `make setup-cluster` and started
  here (tests/support/cluster): every add-on is present, so nothing is skipped.

Images are built in the project's private Docker engine: the ml-service image by
scripts/docker/build-image.sh (what `make image` runs), tagged as the chart's default
`image.repository:appVersion`, so `helm install ml-service ./charts/ml-service` with no values
runs it; an MLflow server image from the project's lock; the add-ons from `make setup-cluster`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
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
    build_mlflow_image,
    docker_engine,
)
from support.cluster.images import SCRIPTS
from support.mlflow import QUIET_MLFLOW_ENV, RegisteredModel, as_registered_model, train

from .lib import SUMMARY, measure

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "ml-service"
ENVIRONMENTS = ROOT / "environments"
MANIFESTS = Path(__file__).with_name("manifests")


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
def mlflow_image(docker: Docker) -> str:
    with measure("build MLflow server image"):
        ref, _ = build_mlflow_image(docker)
    return ref


@pytest.fixture(scope="package")
def cluster(docker: Docker, app_image: str, mlflow_image: str) -> Iterator[Cluster]:
    images = [app_image, mlflow_image]
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
@dataclass(frozen=True)
class InClusterMlflow:
    namespace: str
    service_uri: str  # what pods use
    v1: RegisteredModel  # default hyper-parameters (the same run as the image's demo model)
    v2: RegisteredModel  # another learning rate: a different model to upgrade to


@pytest.fixture(scope="package")
def mlflow_registry(
    cluster: Cluster, mlflow_image: str, tmp_path_factory: pytest.TempPathFactory
) -> InClusterMlflow:
    """An MLflow tracking server running as a pod (namespace `mlflow`, Service `mlflow:5000`, the
    address the environments' values name), and two versions of ml-service trained on this host
    and registered through that Service (a port-forward), the way a user would."""
    ns = "mlflow"
    cluster.create_namespace(ns)
    text = (MANIFESTS / "mlflow.yaml").read_text().replace("${image}", mlflow_image)
    with measure("MLflow pod ready"):
        cluster.apply(text, namespace=ns)
        cluster.rollout(ns, "deployment/mlflow", timeout=300)
    out = tmp_path_factory.mktemp("cluster-train")
    with (
        measure("train + register 2 versions through the Service"),
        cluster.port_forward(ns, "svc/mlflow", 5000) as port,
    ):
        uri = f"http://127.0.0.1:{port}"
        v1 = as_registered_model(train(uri, output_json=out / "v1.json"))
        v2 = as_registered_model(train(uri, "--learning-rate", "0.05", output_json=out / "v2.json"))
    assert (v1.version, v2.version) == ("1", "2"), "a fresh registry numbers versions from 1"
    return InClusterMlflow(ns, f"http://mlflow.{ns}.svc.cluster.local:5000", v1, v2)


@pytest.fixture(scope="package")
def quiet_mlflow_env() -> dict[str, str]:
    return {**os.environ, **QUIET_MLFLOW_ENV}
