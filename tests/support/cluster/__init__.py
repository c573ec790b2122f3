"""A Kubernetes cluster for tests: the local single-node one this package builds and runs
(`LocalCluster`, see local.py for how it is wired), or any cluster a KUBECONFIG points at
(`ExternalCluster`). Both offer the same operations (api.py): kubectl/helm, apply, rollout,
port-forward or direct pod IPs, client pods, image import.

    from support.cluster import ClusterConfig, local_cluster, docker_engine, build_addon_images

    with docker_engine() as docker:
        build_addon_images(docker)
        with local_cluster(ClusterConfig.create(), images=[...], docker_env=docker.env) as c:
            c.create_namespace("demo")
            c.apply(manifest, namespace="demo")
            c.rollout("demo", "deployment/web")
            result = c.run_pod("demo", "client", image, ["python", "-c", "..."])
"""

from .api import (
    RESTRICTED_CONTAINER,
    RESTRICTED_POD,
    Cluster,
    ClusterError,
    ExternalCluster,
    PodResult,
    wait_until,
)
from .config import ClusterConfig
from .images import (
    ADDON_IMAGES,
    Docker,
    build_addon_images,
    build_platform_images,
    docker_engine,
)
from .local import ADDONS, LocalCluster, local_cluster

__all__ = [
    "ADDONS",
    "ADDON_IMAGES",
    "RESTRICTED_CONTAINER",
    "RESTRICTED_POD",
    "Cluster",
    "ClusterConfig",
    "ClusterError",
    "Docker",
    "ExternalCluster",
    "LocalCluster",
    "PodResult",
    "build_addon_images",
    "build_platform_images",
    "docker_engine",
    "local_cluster",
    "wait_until",
]
