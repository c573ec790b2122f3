"""`helm install ml-service ./charts/ml-service` with no values at all, on a cluster where only the
image is present: it becomes ready and serves the demo model baked into the image, `helm test`
passes, NOTES.txt tells the truth, a failed `helm test` stays inspectable, contradictory values
fail at install time naming the keys, and `helm uninstall` leaves nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from support.cluster import Cluster, wait_until

from .conftest import chart_image
from .lib import (
    CHART,
    RELEASE,
    deployment_pods,
    get_json,
    measure,
    post_json,
    release_objects,
    sample_request,
    uninstall_leaves_nothing,
)

NS = "ml-quickstart"


@pytest.fixture(scope="module")
def quickstart(cluster: Cluster, app_image: str):
    """The README's first command, verbatim but for the namespace (and --wait, not a value)."""
    cluster.create_namespace(NS)
    with measure("quickstart: helm install (no values) --wait"):
        proc = cluster.helm(
            "install", RELEASE, str(CHART), "-n", NS, "--wait", "--timeout", "5m", check=False
        )
    if proc.returncode != 0:
        pytest.fail(
            f"helm install with no values failed:\n{proc.stderr}\n{cluster.describe_pods(NS)}"
        )
    print(f"$ helm install ml-service ./charts/ml-service\n{proc.stdout}")
    yield proc
    cluster.helm("uninstall", RELEASE, "-n", NS, "--wait", check=False)
    cluster.delete_namespace(NS)


def test_install_with_no_values_becomes_ready(cluster: Cluster, quickstart) -> None:
    assert "STATUS: deployed" in quickstart.stdout
    deploy = cluster.get("deployment", RELEASE, namespace=NS)
    assert deploy["status"].get("readyReplicas") == deploy["spec"]["replicas"] == 2
    pods = deployment_pods(cluster, NS)
    assert {p["spec"]["containers"][0]["image"] for p in pods} == {chart_image()}
    assert all(p["status"]["containerStatuses"][0]["restartCount"] == 0 for p in pods)


def test_notes_name_the_baked_model_and_the_next_step(quickstart) -> None:
    notes = quickstart.stdout.split("NOTES:", 1)[1]
    assert "serves the model baked into the image" in notes
    assert "demo model" in notes
    assert "No MLflow server is used" in notes
    assert "mlflow.trackingUri" in notes, "the next step: point at MLflow"
    assert "from the MLflow registry" not in notes


def test_helm_test_passes(cluster: Cluster, quickstart) -> None:
    with measure("quickstart: helm test"):
        proc = cluster.helm("test", RELEASE, "-n", NS, "--timeout", "3m", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Phase:          Succeeded" in proc.stdout


def test_serves_the_demo_model(cluster: Cluster, quickstart) -> None:
    pod = deployment_pods(cluster, NS)[0]["metadata"]["name"]
    with cluster.http(NS, f"pod/{pod}", 8000) as base:
        status, ready = get_json(f"{base}/ready")
        assert status == 200, ready
        assert ready["model"] == {"name": "ml-service", "version": "demo"}
        status, model = get_json(f"{base}/model")
        assert status == 200
        assert model["source"] == "local"  # a model directory: its path is not published
        assert len(model["features"]) == 30


def test_demo_model_is_the_default_training_run(
    cluster: Cluster, quickstart, tmp_path: Path, quiet_mlflow_env
) -> None:
    """Same seed, same data, same lock: the image's demo model predicts exactly what a default
    training run on this host (`python -m ml_service.training --output-dir`) predicts."""
    out = tmp_path / "model"
    subprocess.run(
        [sys.executable, "-m", "ml_service.training", "--output-dir", str(out)],
        env=quiet_mlflow_env, check=True, capture_output=True, timeout=600,
    )  # fmt: skip
    payload = sample_request()
    import mlflow.sklearn
    import pandas as pd

    local = mlflow.sklearn.load_model(str(out))
    frame = pd.DataFrame(payload["instances"])[list(local.feature_names_in_)]
    expected = local.predict_proba(frame)[0]
    pod = deployment_pods(cluster, NS)[0]["metadata"]["name"]
    with cluster.http(NS, f"pod/{pod}", 8000) as base:
        status, body = post_json(f"{base}/predict", payload)
    assert status == 200, body
    got = body["predictions"][0]["probabilities"]
    classes = [str(c) for c in local.classes_]
    assert [got[c] for c in classes] == pytest.approx(list(expected), rel=0, abs=1e-12)


def test_a_failed_helm_test_keeps_an_inspectable_pod(cluster: Cluster, quickstart) -> None:
    """No replica ready: `helm test` fails, prints the check's output, and keeps the failed pod
    with everything it ran (the check is in the pod itself, no hook ConfigMap to lose)."""
    cluster.kubectl("scale", "deployment", RELEASE, "-n", NS, "--replicas=0")
    try:
        wait_until(lambda: not deployment_pods(cluster, NS), 120, "no server pod", interval=2)
        proc = cluster.helm("test", RELEASE, "-n", NS, "--timeout", "2m", check=False)
        assert proc.returncode != 0
        out = proc.stdout + proc.stderr
        assert "ml-service-test" in out
        assert "error:" in out or "Connection refused" in out or "URLError" in out, out
        pod = cluster.get("pod", f"{RELEASE}-test", namespace=NS)
        assert pod["status"]["phase"] == "Failed"
        command = pod["spec"]["containers"][0]["command"]
        assert "/ready" in command[2] and "/predict" in command[2]
        # the server's settings live in its pod template: no ConfigMap at all, a hook's included
        leftovers = [o for o in release_objects(cluster, NS) if o.startswith("configmap/")]
        assert not leftovers, leftovers
    finally:
        cluster.kubectl("scale", "deployment", RELEASE, "-n", NS, "--replicas=2")
        cluster.rollout(NS, f"deployment/{RELEASE}", timeout=300)
    proc = cluster.helm("test", RELEASE, "-n", NS, "--timeout", "3m", check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert not cluster.exists(f"pod/{RELEASE}-test", NS), "a passed test pod is deleted"


@pytest.mark.parametrize(
    ("values", "keys"),
    [
        (["--set", "model.version=3"], ["model.version", "mlflow.trackingUri"]),
        (["--set", "mlflow.trackingUri=http://mlflow:5000"], ["model.version", "model.alias"]),
        (
            ["--set", "model.uri=/models/x", "--set", "model.alias=champion"],
            ["model.uri", "model.alias"],
        ),
    ],
    ids=["version-without-registry", "registry-without-version", "uri-and-alias"],
)
def test_contradictory_values_fail_at_install_naming_the_keys(
    cluster: Cluster, quickstart, values: list[str], keys: list[str]
) -> None:
    proc = cluster.helm(
        "install", "contradiction", str(CHART), "-n", NS, "--wait", "--timeout", "1m", *values,
        check=False,
    )  # fmt: skip
    assert proc.returncode != 0
    for key in keys:
        assert key in proc.stderr, proc.stderr
    assert not release_objects(cluster, NS, release="contradiction")
    listed = json.loads(cluster.helm("list", "-n", NS, "-a", "-o", "json").stdout)
    assert [r["name"] for r in listed] == [RELEASE]


def test_uninstall_leaves_nothing(cluster: Cluster, quickstart) -> None:
    uninstall_leaves_nothing(cluster, NS)
