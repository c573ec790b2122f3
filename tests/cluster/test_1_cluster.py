"""The cluster itself: versions, node, DNS and Services from a pod, the add-ons, and (local
cluster) the network fence: no route out of the node's network namespace."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support.cluster import Cluster, LocalCluster

# The first test also pays for the images and the cluster start (a cold image build included).
pytestmark = pytest.mark.timeout(2400)

# Resolves cluster names, connects to the API server's Service, and shows that a name outside the
# cluster does not resolve (CoreDNS answers for the cluster zone only and forwards nothing).
DNS_PROBE = r"""
import json, socket
out = {}
out["kubernetes"] = socket.gethostbyname("kubernetes.default.svc.cluster.local")
s = socket.create_connection((out["kubernetes"], 443), timeout=5); s.close()
out["kube_dns"] = socket.gethostbyname("kube-dns.kube-system.svc.cluster.local")
try:
    socket.gethostbyname("example.com")
    out["outside"] = "resolved"
except OSError as e:
    out["outside"] = type(e).__name__
print(json.dumps(out))
"""


def test_server_is_the_pinned_kubernetes_and_the_node_is_ready(cluster: Cluster) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"].startswith("v1.")
    nodes = cluster.get("nodes")["items"]
    assert nodes and all(
        any(c["type"] == "Ready" and c["status"] == "True" for c in n["status"]["conditions"])
        for n in nodes
    )
    if isinstance(cluster, LocalCluster):
        assert version["serverVersion"]["gitVersion"] == "v1.37.2"
        assert version["clientVersion"]["gitVersion"] == "v1.37.2"
        info = nodes[0]["status"]["nodeInfo"]
        assert info["kubeletVersion"] == "v1.37.2"
        assert info["kubeProxyVersion"] in ("", "v1.37.2")  # deprecated field, may be empty
        assert info["containerRuntimeVersion"].startswith("containerd://1.")


def test_a_pod_reaches_services_by_name_and_nothing_outside(
    cluster: Cluster, app_image: str
) -> None:
    cluster.create_namespace("mlsk-probe")
    try:
        result = cluster.run_pod("mlsk-probe", "dns", app_image, ["python", "-c", DNS_PROBE])
    finally:
        cluster.delete_namespace("mlsk-probe")
    assert result.exit_code == 0, result.logs
    out = json.loads(result.logs.strip().splitlines()[-1])
    assert out["kubernetes"].count(".") == 3
    assert out["kube_dns"].count(".") == 3
    assert out["outside"] == "gaierror", "a name outside the cluster must not resolve"


def test_restricted_namespaces_reject_privileged_pods(cluster: Cluster, app_image: str) -> None:
    """The Pod Security admission is live: the negative control for every install below."""
    cluster.create_namespace("mlsk-pss")
    try:
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": "privileged", "namespace": "mlsk-pss"},
            "spec": {
                "containers": [
                    {"name": "c", "image": app_image, "securityContext": {"privileged": True}}
                ]
            },
        }
        proc = cluster.kubectl("apply", "-f", "-", input=json.dumps(pod), check=False)
    finally:
        cluster.delete_namespace("mlsk-pss")
    assert proc.returncode != 0
    assert "violates PodSecurity" in proc.stderr and "restricted" in proc.stderr


def test_metrics_api_serves_node_and_pod_cpu(cluster: Cluster, metrics_api) -> None:
    nodes = json.loads(
        cluster.kubectl("get", "--raw", "/apis/metrics.k8s.io/v1beta1/nodes").stdout
    )["items"]
    assert nodes and nodes[0]["usage"]["cpu"]


def test_prometheus_is_up(cluster: Cluster, prometheus: str) -> None:
    ns, _, pod = prometheus.partition("/")
    with cluster.http(ns, f"pod/{pod}", 9090) as base:
        import urllib.request

        with urllib.request.urlopen(f"{base}/-/ready", timeout=5) as resp:
            assert resp.status == 200


def test_the_node_has_no_route_out(cluster: Cluster) -> None:
    """Local cluster: its network namespace routes only the host link and the pod bridge, and
    drops new connections from pods to anything outside the pod network."""
    if not isinstance(cluster, LocalCluster):
        pytest.skip("the network fence is the local cluster's own (KUBECONFIG points elsewhere)")
    ns = ["nsenter", f"--net=/run/netns/{cluster.config.netns}", "--"]
    routes = subprocess.run(
        [*ns, "ip", "-4", "route"], capture_output=True, text=True, check=True
    ).stdout
    assert "default" not in routes, routes
    assert cluster.config.pod_cidr in routes
    rules = subprocess.run(
        [*ns, "iptables", "-S", "FORWARD"], capture_output=True, text=True, check=True
    ).stdout
    assert f"-s {cluster.config.pod_cidr} ! -d {cluster.config.pod_cidr}" in rules, rules
    assert "-j DROP" in rules


def test_a_second_local_cluster_coexists(cluster: Cluster, docker) -> None:
    """Two instances side by side (other tiers reuse the harness): own network namespace,
    subnets, cgroup root and work dir; both serve, and stopping one leaves the other intact."""
    if not isinstance(cluster, LocalCluster):
        pytest.skip("the harness's own clusters only (KUBECONFIG points elsewhere)")
    from support.cluster import ADDON_IMAGES, ClusterConfig, local_cluster

    config = ClusterConfig.create(name=f"{cluster.config.name[:4]}2")
    assert config.pod_cidr != cluster.config.pod_cidr and config.netns != cluster.config.netns
    with local_cluster(config, images=[ADDON_IMAGES["pause"]], docker_env=docker.env,
                       addons=()) as second:  # fmt: skip
        assert second.kubectl("get", "nodes", "--no-headers").stdout.split()[1] == "Ready"
        cluster.kubectl("get", "nodes")
    assert not Path(f"/run/netns/{config.netns}").exists()
    assert (
        config.pod_cidr
        not in subprocess.run(["ip", "route"], capture_output=True, text=True, check=True).stdout
    )
    (node,) = cluster.get("nodes")["items"]
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready[0]["status"] == "True", "the first cluster is untouched"
