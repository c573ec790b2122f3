"""staging and prod, with their own value files and the smallest override that fits this node
(written here, so it is visible). prod delivers by canary (an Argo Rollouts Rollout, the real
controller, its analysis reading the real Prometheus the prometheus-operator runs): under a steady
in-cluster stream, a good model version goes through every step to 100 % and then loses a pod
without one failed request; a slower version with the same predictions is aborted by the latency
check alone, traffic back on the stable pods, without one failed request (a version that shifts
the class balance is aborted under Argo CD: test_5_canary_gitops.py). staging, one pod at rest,
meets a burst of twice its capacity: no connection reset, the pod serves its capacity while the
HPA (CPU from metrics-server) scales out, every request served once the new pods are ready, and
back in after; prod's dashboards carry the Grafana sidecar's label."""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator

import pytest
from support.cluster import Cluster, wait_until

from .conftest import CanaryModels, InClusterMlflow
from .lib import (
    CANARY_LOAD,
    CHART,
    FAST_CANARY,
    RELEASE,
    SUMMARY,
    InClusterLoad,
    abort_under_load,
    analysis_runs,
    deployment_pods,
    env_values,
    get_rollout,
    has_rollouts,
    helm_install,
    measure,
    measurements,
    override_file,
    ready,
    report_canary,
    rollout_tree,
    served_versions,
    uninstall_leaves_nothing,
    wait_rollout,
)

# prod as is asks for 3 x 500m CPU plus a 4th pod during a rollout (maxSurge 1, maxUnavailable 0):
# 2 CPUs on this single node minus the add-ons cannot hold the 4th. Its values say so, and a
# small cluster rolls one pod at a time instead (capacity 2 of 3 during the rollout):
PROD_SMALL_NODE = {"updateStrategy": {"maxSurge": 0, "maxUnavailable": 1}}
# staging, sized so that pods are capacity on this 2-CPU node: a CPU limit makes one pod's
# capacity a fraction of the node (more pods serve more), the smaller request lets a bounded load
# cross the HPA's 70 % target, one replica at rest so a burst meets a single pod, and a short
# scale-down window (default 5 min) so scaling back in is observed within the test.
STAGING_OVERRIDE = {
    "resources": {"requests": {"cpu": "100m", "memory": "384Mi"}, "limits": {"cpu": "250m"}},
    "autoscaling": {
        "minReplicas": 1,
        "behavior": {"scaleDown": {"stabilizationWindowSeconds": 10}},
    },
}
# The burst's requests: 400 rows (~320 KB), so that one pod's capacity is a rate a Python client
# sends easily and a refusal costs the pod little beside an answer.
BURST_ROWS = 400


def secret(cluster: Cluster, ns: str, registry: InClusterMlflow) -> None:
    registry.create_credentials(cluster, ns)


# ---------------------------------------------------------------------------- prod
@contextlib.contextmanager
def installed(
    cluster: Cluster, registry: InClusterMlflow, tmp_path_factory, env: str, override: dict
) -> Iterator[tuple[str, list[str]]]:
    """`env`'s release, with its own value files and `override` (written to a file), in namespace
    ml-service-<env>; uninstalled afterwards. Yields the namespace and the override's --values."""
    ns = f"ml-service-{env}"
    cluster.create_namespace(ns)
    secret(cluster, ns, registry)
    extra = override_file(tmp_path_factory.mktemp(env), "override", override)
    with measure(f"{env}: helm install --wait"):
        proc = helm_install(cluster, ns, *env_values(env), *extra, check=False)
    if proc.returncode != 0:
        pytest.fail(f"{env} install failed:\n{proc.stderr}\n{cluster.describe_pods(ns)}")
    try:
        yield ns, extra
    finally:
        cluster.helm("uninstall", RELEASE, "-n", ns, "--wait", check=False)
        cluster.delete_namespace(ns)


@pytest.fixture(scope="module")
def prod(cluster: Cluster, mlflow_registry: InClusterMlflow, prometheus: str, tmp_path_factory):
    if not has_rollouts(cluster):
        pytest.skip("prod delivers by canary and this cluster has no Argo Rollouts")
    override = {**PROD_SMALL_NODE, **FAST_CANARY}
    with installed(cluster, mlflow_registry, tmp_path_factory, "prod", override) as release:
        with measure("prod: Rollout Healthy (3 replicas)"):
            # helm does not wait for a Rollout; its first revision goes to 100 % at once
            wait_rollout(cluster, release[0], ("Healthy",), timeout=300)
        yield release


def test_prod_installs_with_its_own_resources(cluster: Cluster, prod) -> None:
    ns, _ = prod
    pods = deployment_pods(cluster, ns)
    assert len(pods) == 3 and all(ready(p) for p in pods)
    requests = pods[0]["spec"]["containers"][0]["resources"]["requests"]
    assert requests == {"cpu": "500m", "memory": "768Mi"}, "prod's own values, not overridden"
    assert set(served_versions(cluster, ns).values()) == {"1"}
    hpa = cluster.get("hpa", RELEASE, namespace=ns)
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 10)
    assert hpa["spec"]["scaleTargetRef"]["kind"] == "Rollout"
    proc = cluster.helm("test", RELEASE, "-n", ns, "--timeout", "3m", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_prod_dashboards_carry_the_grafana_sidecar_label(cluster: Cluster, prod) -> None:
    ns, _ = prod
    # What the Grafana sidecar does (kube-prometheus-stack default: label grafana_dashboard=1).
    found = cluster.get("configmaps", "-A", "-l", "grafana_dashboard=1")["items"]
    mine = [c for c in found if c["metadata"]["namespace"] == ns]
    assert mine, "no dashboard ConfigMap selected by grafana_dashboard=1"
    for cm in mine:
        assert cm["metadata"]["annotations"]["grafana_folder"] == "ML Services"
        ((name, text),) = cm["data"].items()
        assert name.endswith(".json") and '"panels"' in text


def release(cluster: Cluster, prod, version: str) -> float:
    """`helm upgrade` prod to a model version (what a synced release.yaml does); its start."""
    ns, overrides = prod
    start = time.monotonic()
    proc = cluster.helm(
        "upgrade", RELEASE, str(CHART), "-n", ns, *env_values("prod"), *overrides,
        "--set", f"model.version={version}", "--wait", "--timeout", "5m", check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr + cluster.describe_pods(ns)
    return start


# Each canary waits for pods and measurements: minutes on a loaded machine.
@pytest.mark.timeout(1800)
def test_prod_canary_promotes_a_good_version_step_by_step_under_load(
    cluster: Cluster, prod, app_image: str, mlflow_registry: InClusterMlflow
) -> None:
    """Version 2 (another learning rate, same behaviour): every weight, every analysis passed,
    100 %; then a pod deleted under the same stream. Not one request fails."""
    ns, _ = prod
    v1, v2 = mlflow_registry.v1.version, mlflow_registry.v2.version
    before = int(get_rollout(cluster, ns)["metadata"]["generation"])
    with InClusterLoad(cluster, ns, app_image, **CANARY_LOAD) as load:
        start = release(cluster, prod, v2)
        rollout = wait_rollout(cluster, ns, ("Healthy", "Degraded", "Paused"), timeout=840,
                               newer_than=before)  # fmt: skip
        promoted = time.monotonic() - start
        tree = rollout_tree(cluster, ns)
        cluster.kubectl("delete", "pod", sorted(served_versions(cluster, ns))[0], "-n", ns,
                        "--wait=true", timeout=120)  # fmt: skip
        wait_rollout(cluster, ns, ("Healthy",), timeout=300)
        time.sleep(3)  # a few more requests on the replacement
        result = load.stop()
    runs = [r for r in analysis_runs(cluster, ns)
            if r["metadata"]["labels"].get("rollouts-pod-template-hash")
            == rollout["status"]["currentPodHash"]]  # fmt: skip
    report_canary(
        "prod: good version (v1 -> v2) to 100 %", promoted, result, runs[-1] if runs else None
    )
    assert rollout["status"]["phase"] == "Healthy", tree
    steps = rollout["spec"]["strategy"]["canary"]["steps"]
    assert rollout["status"]["currentStepIndex"] == len(steps), tree
    # one analysis per weight, each passed on measurements of both sides
    assert [r["status"]["phase"] for r in runs] == ["Successful"] * len(steps[::2]), tree
    for run in runs:
        assert all(phase == "Successful" for phase, _ in measurements(run).values()), run
    assert result.failed == 0, result.errors
    assert set(result.versions) == {v1, v2} and result.tail == [v2], result
    assert set(served_versions(cluster, ns).values()) == {v2}


# Each canary waits for pods and measurements: minutes on a loaded machine.
@pytest.mark.timeout(1800)
def test_prod_canary_aborts_a_slower_version_on_latency(
    cluster: Cluster, prod, app_image: str, canary_models: CanaryModels, mlflow_registry
) -> None:
    """The slow version predicts exactly what version 2 does, more slowly: the latency check,
    and only it, aborts it."""
    ns, _ = prod
    slow, stable = canary_models.slow.version, mlflow_registry.v2.version
    seconds, result, run, tree = abort_under_load(
        cluster, ns, app_image, lambda: release(cluster, prod, slow), slow, stable, pods=3
    )
    report_canary(f"prod: slower version (v{slow}) aborted", seconds, result, run)
    checks = measurements(run)
    assert checks["latency-p95"][0] == "Failed", (checks, tree)
    assert all(checks[c][0] != "Failed" for c in ("class-share", "score-psi")), checks


def test_prod_uninstall_leaves_nothing(cluster: Cluster, prod) -> None:
    uninstall_leaves_nothing(cluster, prod[0])


# ---------------------------------------------------------------------------- staging + HPA
@pytest.fixture(scope="module")
def staging(cluster: Cluster, mlflow_registry: InClusterMlflow, tmp_path_factory):
    if not has_rollouts(cluster):
        pytest.skip("staging delivers by canary and this cluster has no Argo Rollouts")
    with installed(cluster, mlflow_registry, tmp_path_factory, "staging", STAGING_OVERRIDE) as rel:
        with measure("staging: Rollout Healthy (1 replica)"):
            wait_rollout(cluster, rel[0], ("Healthy",), timeout=300)
        yield rel[0]


def seconds_between(per_second: list, first: float, last: float) -> list:
    """[200s, 503s, other failures] of each whole second from `first` to `last` (client time)."""
    return per_second[max(0, math.ceil(first)) : max(0, math.floor(last))]


def test_staging_hpa_absorbs_a_burst_of_twice_one_pods_capacity(
    cluster: Cluster, staging: str, app_image: str, metrics_api
) -> None:
    """One pod's capacity measured (closed loop, a connection per request), then twice that rate
    offered open loop to the release while its HPA scales out: no connection is reset and no
    request times out, the pod keeps serving its capacity while the excess is refused with 503s,
    every request is served once the new pods are ready, and the HPA scales back in after."""
    ns = staging
    proc = cluster.helm("test", RELEASE, "-n", ns, "--timeout", "3m", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr

    def hpa() -> dict:
        return cluster.get("hpa", RELEASE, namespace=ns)

    def current_cpu() -> int | None:
        for metric in hpa()["status"].get("currentMetrics") or []:
            if metric["type"] == "Resource" and metric["resource"]["name"] == "cpu":
                return metric["resource"]["current"].get("averageUtilization")
        return None

    wait_until(lambda: current_cpu() is not None, 120, "the HPA reads CPU from metrics-server",
               interval=3, diag=lambda: str(hpa()["status"]))  # fmt: skip
    assert hpa()["status"]["desiredReplicas"] == 1

    # One pod's capacity: 8 clients that send again as soon as they are answered.
    with InClusterLoad(cluster, ns, app_image, rate=1000, threads=8, rows=BURST_ROWS,
                       max_seconds=60, name="capacity") as load:  # fmt: skip
        time.sleep(10)
        closed = load.stop()
    steady = seconds_between(closed.per_second, (closed.first_ok or 0) + 1, closed.seconds - 1)
    capacity = sum(ok for ok, _, _ in steady) / max(1, len(steady))
    assert capacity > 1 and closed.failed == 0, closed

    def one_pod() -> bool:
        status = get_rollout(cluster, ns).get("status") or {}
        return hpa()["status"].get("desiredReplicas") == 1 == status.get("availableReplicas")

    # that measurement may have scaled it out already: the burst starts from one pod
    wait_until(one_pod, 180, "one pod before the burst", interval=3,
               diag=lambda: f"{hpa()['status']}")  # fmt: skip

    # Twice that, open loop: enough clients that answers queued at the one pod do not slow the
    # offered rate (a refusal returns at once, an admitted request waits for its turn).
    burst = InClusterLoad(cluster, ns, app_image, rate=2 * capacity, threads=64,
                          rows=BURST_ROWS, max_seconds=240, name="burst")  # fmt: skip
    with burst:
        begun = time.monotonic()

        def rollout_ready() -> int:
            """Replicas the HPA wants, once at least 3 (two pods would be exactly at twice one
            pod's capacity, with no room) and all of them available."""
            want = hpa()["status"].get("desiredReplicas", 0)
            status = get_rollout(cluster, ns).get("status") or {}
            return want if want > 2 and status.get("availableReplicas") == want else 0

        wait_until(rollout_ready, 240, "the HPA's new pods ready under the burst", interval=1,
                   diag=lambda: f"{hpa()['status']}\n{cluster.describe_pods(ns)}")  # fmt: skip
        scaled = time.monotonic() - begun
        time.sleep(20)
        result = burst.stop()
    replicas = hpa()["status"]["desiredReplicas"]
    # client time = the client's first answer + the time since this test saw it
    ready_at = (result.first_ok or 0) + scaled
    during = seconds_between(result.per_second, (result.first_ok or 0) + 1, ready_at)
    after = seconds_between(result.per_second, ready_at + 8, result.seconds - 1)
    goodput = sum(ok for ok, _, _ in during) / max(1, len(during))
    refused = sum(shed for _, shed, _ in during)
    start = time.monotonic()
    wait_until(lambda: hpa()["status"].get("desiredReplicas") == 1, 240,
               "the HPA scales back in once the burst stopped", interval=5,
               diag=lambda: f"{hpa()['status']}")  # fmt: skip
    back = time.monotonic() - start
    SUMMARY["staging: HPA under a burst"] = (
        f"one pod {capacity:.1f} req/s of {BURST_ROWS} rows; offered {2 * capacity:.1f} req/s: "
        f"{len(during)} s until {replicas} pods were ready, meanwhile {goodput:.1f} req/s served "
        f"({goodput / capacity:.0%} of one pod) and {refused} refused; then "
        f"{sum(ok for ok, _, _ in after) / max(1, len(after)):.1f} req/s over {len(after)} s; "
        f"{result.ok} ok, failures {result.kinds}; back to 1 pod {back:.0f} s after"
    )
    assert set(result.kinds) <= {"503"}, f"not refusals: {result.kinds} {result.errors}"
    assert len(during) >= 3, f"the new pods were ready before the burst was measured: {result}"
    # At capacity, within the noise of a 10 s capacity measurement on a shared node (two runs:
    # 99 % and 93 %); an app that collapses under the burst serves a fraction of it.
    assert goodput >= 0.85 * capacity, SUMMARY["staging: HPA under a burst"]
    assert after and all(shed == other == 0 for _, shed, other in after), (
        f"requests refused or failed once {replicas} pods were ready: {after}")  # fmt: skip


def test_staging_uninstall_leaves_nothing(cluster: Cluster, staging: str) -> None:
    uninstall_leaves_nothing(cluster, staging)
