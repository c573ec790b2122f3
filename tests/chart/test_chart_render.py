"""Every rendering validated as a cluster would: strict Kubernetes schemas of the oldest and newest
supported versions, real CRD schemas for ServiceMonitor/PrometheusRule, names within limits, the
same output from Helm 3 and Helm 4, dashboards shipped from the single source."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from support import kube

from .conftest import CHART, RENDERINGS, ROOT, Rendering, render, tool, workload

DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
IDS = [r.id for r in RENDERINGS]


@pytest.mark.parametrize("rendering", RENDERINGS, ids=IDS)
def test_rendering_validates_strictly(rendering: Rendering, kube_versions: list[str]):
    docs = kube.load_documents(render(rendering))
    assert workload(docs)
    findings = kube.validate(docs, kube_versions, crd_files=kube.crd_files())
    assert not findings, "\n".join(map(str, findings))


def test_full_rendering_has_every_kind():
    """So the strict validation above really covers every template."""
    (full,) = [r for r in RENDERINGS if r.id == "ci/full-values.yaml"]
    kinds = {d["kind"] for d in kube.load_documents(render(full))}
    assert kinds >= {
        "Deployment", "Service", "ServiceAccount", "ConfigMap", "HorizontalPodAutoscaler", "Pod",
        "PodDisruptionBudget", "NetworkPolicy", "Ingress", "ServiceMonitor", "PrometheusRule",
    }  # fmt: skip
    (canary,) = [r for r in RENDERINGS if r.id == "ci/canary-values.yaml"]
    kinds = {d["kind"] for d in kube.load_documents(render(canary))}
    assert {"Rollout", "AnalysisTemplate", "HorizontalPodAutoscaler"} <= kinds
    assert "Deployment" not in kinds


def test_rollout_runs_the_deployments_pod_template():
    """A Rollout's pods are the Deployment's (so every policy check of the Deployment holds for
    them; checkov knows no Rollout): the same values give the same pod template, but for the label
    that spreads one ReplicaSet's pods."""
    (canary,) = [r for r in RENDERINGS if r.id == "ci/canary-values.yaml"]
    values = [*canary.value_files]
    as_deployment = Rendering("canary-as-deployment", tuple(values),
                              set_values={"delivery.strategy": "rollingUpdate"})  # fmt: skip
    rollout = workload(kube.load_documents(render(canary)))
    deployment = workload(kube.load_documents(render(as_deployment)))
    assert (rollout["kind"], deployment["kind"]) == ("Rollout", "Deployment")
    spreads = [rollout, deployment]
    for w in spreads:
        for c in w["spec"]["template"]["spec"]["topologySpreadConstraints"]:
            c["matchLabelKeys"] = ["<the workload's pod-template hash>"]
    assert rollout["spec"]["template"] == deployment["spec"]["template"]


BROKEN = {
    "unknown field in a built-in kind": (
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "s"},
            "spec": {"ports": [{"port": 80, "targetPortt": "http"}]},
        },
        "targetPortt",
    ),
    "unknown field in a ServiceMonitor": (
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": {"name": "m"},
            "spec": {"selector": {}, "endpoints": [{"intervall": "1m"}]},
        },
        "intervall",
    ),
    "wrong type in a PrometheusRule": (
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "PrometheusRule",
            "metadata": {"name": "r"},
            "spec": {"groups": [{"name": "g", "rules": "none"}]},
        },
        "rules",
    ),
    "unknown field in a Rollout's canary step": (
        {
            "apiVersion": "argoproj.io/v1alpha1",
            "kind": "Rollout",
            "metadata": {"name": "r"},
            "spec": {"strategy": {"canary": {"steps": [{"setWeigth": 20}]}}},
        },
        "setWeigth",
    ),
    "kind without a schema": (
        {"apiVersion": "example.com/v1", "kind": "Widget", "metadata": {"name": "w"}},
        "no schema",
    ),
}


@pytest.mark.parametrize("case", BROKEN.values(), ids=BROKEN.keys())
def test_validation_catches(case, kube_versions: list[str]):
    doc, needle = case
    findings = kube.validate([doc], kube_versions[:1], crd_files=kube.crd_files())
    assert findings and needle in str(findings[0]), findings


@pytest.mark.parametrize("rendering", RENDERINGS, ids=IDS)
def test_helm4_renders_the_same(rendering: Rendering):
    assert kube.load_documents(render(rendering, kube.HELM4)) == kube.load_documents(
        render(rendering)
    )


@pytest.mark.parametrize("rendering", RENDERINGS, ids=IDS)
def test_names_and_labels_fit_kubernetes_limits(rendering: Rendering):
    for doc in kube.load_documents(render(rendering)):
        meta = doc["metadata"]
        assert DNS_LABEL.match(meta["name"]), f"{doc['kind']} name {meta['name']!r}"
        for key, value in meta.get("labels", {}).items():
            assert len(str(value)) <= 63, f"{doc['kind']}/{meta['name']} label {key}={value!r}"
        assert meta["labels"]["app.kubernetes.io/instance"] == rendering.release
        assert meta["labels"]["app.kubernetes.io/managed-by"] == "Helm"


@pytest.mark.parametrize("rendering", RENDERINGS, ids=IDS)
def test_selector_never_changes(rendering: Rendering):
    """Deployment (and Rollout) selectors are immutable: changing them breaks `helm upgrade`."""
    dep = workload(kube.load_documents(render(rendering)))
    assert dep["spec"]["selector"] == {
        "matchLabels": {
            "app.kubernetes.io/name": dep["metadata"]["labels"]["app.kubernetes.io/name"],
            "app.kubernetes.io/instance": rendering.release,
            "app.kubernetes.io/component": "server",
        }
    }


@pytest.mark.parametrize("version", ["1.28.0", "1.38.0"])
def test_kube_version_outside_the_range_is_refused(version: str):
    tool(kube.HELM)
    proc = kube.run_helm(kube.template_args(CHART, kube_version=version))
    assert proc.returncode != 0 and "kubeVersion" in proc.stderr, proc.stderr


def test_dashboards_ship_from_the_single_source():
    (full,) = [r for r in RENDERINGS if r.id == "ci/full-values.yaml"]
    shipped = {
        name: text
        for d in kube.load_documents(render(full))
        if d["kind"] == "ConfigMap" and "grafana_dashboard" in d["metadata"]["labels"]
        for name, text in d["data"].items()
    }
    sources = {p.name: p.read_text() for p in (ROOT / "dashboards").glob("*.json")}
    assert sources, "no dashboards/*.json"
    assert shipped.keys() == sources.keys()
    for name, text in sources.items():
        assert shipped[name].strip() == text.strip(), f"{name} differs from dashboards/{name}"


def test_chart_dashboards_is_a_symlink_to_the_source():
    link = CHART / "dashboards"
    assert link.is_symlink() and link.resolve() == (ROOT / "dashboards").resolve()


def test_helm_package_keeps_the_dashboards(tmp_path: Path):
    tool(kube.HELM)
    proc = kube.run_helm(["package", str(CHART), "--destination", str(tmp_path)])
    assert proc.returncode == 0, proc.stderr
    (archive,) = tmp_path.glob("ml-service-*.tgz")
    with tarfile.open(archive) as tar:
        names = tar.getnames()
        for src in (ROOT / "dashboards").glob("*.json"):
            member = f"ml-service/dashboards/{src.name}"
            assert member in names, f"{member} missing from the package"
            assert tar.extractfile(member).read() == src.read_bytes()
    assert not [n for n in names if n.startswith("ml-service/tests/")], "unit tests packaged"
    assert "ml-service/templates/tests/test-predict.yaml" in names


@pytest.mark.server
def test_helm_test_check_passes_against_the_real_app(served_model, tmp_path: Path):
    """The `helm test` pod's command and payload, run against the real app serving a real model."""
    (pod,) = [
        d
        for d in kube.load_documents(render(RENDERINGS[0]))
        if d["kind"] == "Pod" and d["metadata"].get("annotations", {}).get("helm.sh/hook") == "test"
    ]
    container = pod["spec"]["containers"][0]
    command = container["command"]
    assert command[:2] == ["python", "-c"]
    env = {**os.environ, **{e["name"]: e["value"] for e in container["env"]}}
    proc = subprocess.run(
        [sys.executable, "-c", command[2], served_model.base_url],
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.startswith("ok: model"), proc.stdout
