"""Policy: the restricted Pod Security Standard (the upstream evaluator the PodSecurity admission
plugin runs) and checkov, over every rendering, with zero failures. Skips are listed in the chart
README with their reasons; each is scoped as narrowly as checkov allows."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from support import kube

from .conftest import CHART, RENDERINGS, WORKLOADS, Rendering, render, tool

IDS = [r.id for r in RENDERINGS]
PSACHECK = kube.TOOLS / "bin" / "psacheck"


def psa(manifests: str, version: str) -> tuple[int, list[dict], str]:
    proc = subprocess.run(
        [tool(PSACHECK), "-level", "restricted", "-version", f"v{version.rsplit('.', 1)[0]}"],
        input=manifests,
        capture_output=True,
        text=True,
        check=False,
    )
    return proc.returncode, [json.loads(line) for line in proc.stdout.splitlines()], proc.stderr


@pytest.mark.parametrize("rendering", RENDERINGS, ids=IDS)
def test_restricted_pod_security_standard(rendering: Rendering, kube_versions: list[str]):
    for version in kube_versions:
        code, pods, err = psa(render(rendering), version)
        assert code == 0, f"[{version}] {err}" + "\n".join(map(str, pods))
        assert any(p["kind"] in WORKLOADS for p in pods), pods
        assert all(p["allowed"] for p in pods)


def test_pod_security_check_can_fail(kube_versions: list[str]):
    bad = Rendering(
        "privilege-escalation", set_values={"securityContext.allowPrivilegeEscalation": True}
    )
    code, pods, _ = psa(render(bad), kube_versions[-1])
    assert code == 1
    (dep,) = [p for p in pods if p["kind"] == "Deployment"]
    assert not dep["allowed"]
    assert "allowPrivilegeEscalation" in json.dumps(dep["forbidden"])


# Skipped everywhere, with the reason (also in the chart README).
GLOBAL_SKIPS = {
    "CKV_K8S_15": "pull policy IfNotPresent: environments pin images by digest",
}
BAD = Rendering("writable-root", set_values={"securityContext.readOnlyRootFilesystem": False})


def scoped_skips(docs: list[dict]) -> dict[str, str]:
    """Checks waived only for renderings where the chart cannot satisfy them (README lists them)."""
    skips = {}
    containers = [
        c
        for d in docs
        if d["kind"] in WORKLOADS
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    if not all("@sha256:" in c["image"] for c in containers):
        skips["CKV_K8S_43"] = "no image.digest in this rendering (release.yaml sets it)"
    if not any(d["kind"] == "NetworkPolicy" for d in docs):
        skips["CKV2_K8S_6"] = "networkPolicy.enabled is false in this rendering"
    if any("secretRef" in e for c in containers for e in c.get("envFrom", [])):
        skips["CKV_K8S_35"] = "MLflow reads its credentials only from environment variables"
    return skips


@pytest.fixture(scope="module")
def checkov_failures(tmp_path_factory) -> dict[str, list[dict]]:
    """One checkov run over every rendering (one file each, plus a deliberately bad one);
    failures per rendering, minus the scoped skips of that rendering."""
    tool(kube.CHECKOV)
    texts = {rendering.id: render(rendering) for rendering in [*RENDERINGS, BAD]}
    failed = kube.checkov_failed_checks(texts, tmp_path_factory.mktemp("checkov"), GLOBAL_SKIPS)
    failures = {}
    for rid, checks in failed.items():
        waived = scoped_skips(kube.load_documents(texts[rid])) if rid != BAD.id else {}
        failures[rid] = [c for c in checks if c["check_id"] not in waived]
    return failures


@pytest.mark.parametrize("rendering", RENDERINGS, ids=IDS)
def test_checkov_zero_failures(rendering: Rendering, checkov_failures):
    failed = checkov_failures[rendering.id]
    assert not failed, "\n".join(
        f"{c['check_id']} {c['check_name']} on {c['resource']}" for c in failed
    )


def test_checkov_can_fail(checkov_failures):
    failed = {c["check_id"] for c in checkov_failures[BAD.id]}
    assert "CKV_K8S_22" in failed, failed  # read-only root filesystem


def test_every_skipped_check_is_listed_in_the_readme():
    readme = (CHART / "README.md").read_text()
    annotated = re.findall(
        r"checkov\.io/skip\d+: (\S+?)=", (CHART / "templates/tests/test-predict.yaml").read_text()
    )
    scoped = ["CKV_K8S_43", "CKV2_K8S_6", "CKV_K8S_35"]  # the keys scoped_skips() can return
    for check in [*GLOBAL_SKIPS, *scoped, *annotated]:
        assert f"`{check}`" in readme, f"{check} is skipped but not listed in the chart README"
