"""Policy: the restricted Pod Security Standard (the upstream evaluator the PodSecurity admission
plugin runs) and checkov, over every rendering, with zero failures. Skips are listed in the chart
README with their reasons; each is scoped as narrowly as checkov allows."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from support import kube

from .conftest import RENDERINGS, Rendering, render, tool

pytestmark = pytest.mark.chart

IDS = [r.id for r in RENDERINGS]
PSACHECK = kube.TOOLS / "bin" / "psacheck"
CHECKOV = kube.TOOLS / "checkov" / "bin" / "checkov"


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
        assert any(p["kind"] == "Deployment" for p in pods), pods
        assert all(p["allowed"] for p in pods)


def test_pod_security_check_can_fail(kube_versions: list[str]):
    bad = Rendering("bad", set_values={"securityContext.allowPrivilegeEscalation": True})
    code, pods, _ = psa(render(bad), kube_versions[-1])
    assert code == 1
    (dep,) = [p for p in pods if p["kind"] == "Deployment"]
    assert not dep["allowed"]
    assert "allowPrivilegeEscalation" in json.dumps(dep["forbidden"])


# Skipped everywhere, with the reason (also in the chart README).
GLOBAL_SKIPS = {
    "CKV_K8S_15": "pull policy IfNotPresent: environments pin images by digest",
}


def scoped_skips(docs: list[dict]) -> dict[str, str]:
    """Skips that apply only to renderings where the chart cannot satisfy the check by default."""
    skips = {}
    images = [
        c["image"]
        for d in docs
        if d["kind"] == "Deployment"
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    if not all("@sha256:" in i for i in images):
        skips["CKV_K8S_43"] = "no image.digest in this rendering (release.yaml sets it)"
    if not any(d["kind"] == "NetworkPolicy" for d in docs):
        skips["CKV2_K8S_6"] = "networkPolicy.enabled is false in this rendering"
    return skips


def checkov(directory: Path, skips: list[str]) -> dict:
    proc = subprocess.run(
        [tool(CHECKOV), "--skip-download", "--framework", "kubernetes", "--quiet", "--compact",
         "-o", "json", "-d", str(directory), *(["--skip-check", ",".join(skips)] if skips else [])],
        capture_output=True, text=True, check=False, timeout=600,
    )  # fmt: skip
    assert proc.stdout.strip(), proc.stderr
    report = json.loads(proc.stdout)
    return report[0] if isinstance(report, list) else report


@pytest.fixture(scope="module")
def checkov_reports(tmp_path_factory) -> dict[str, dict]:
    """One checkov run per rendering (each with its own scoped skips)."""
    reports = {}
    for rendering in RENDERINGS:
        out = tmp_path_factory.mktemp("checkov")
        text = render(rendering)
        (out / "rendered.yaml").write_text(text)
        skips = [*GLOBAL_SKIPS, *scoped_skips(kube.load_documents(text))]
        reports[rendering.id] = checkov(out, skips)
    return reports


@pytest.mark.parametrize("rendering", RENDERINGS, ids=IDS)
def test_checkov_zero_failures(rendering: Rendering, checkov_reports):
    report = checkov_reports[rendering.id]
    failed = report.get("results", {}).get("failed_checks", [])
    assert not failed, "\n".join(
        f"{c['check_id']} {c['check_name']} on {c['resource']}" for c in failed
    )
    assert report["summary"]["passed"] > 0


def test_checkov_can_fail(tmp_path: Path):
    bad = Rendering("bad", set_values={"securityContext.readOnlyRootFilesystem": False})
    (tmp_path / "rendered.yaml").write_text(render(bad))
    report = checkov(tmp_path, list(GLOBAL_SKIPS))
    failed = {c["check_id"] for c in report["results"]["failed_checks"]}
    assert "CKV_K8S_22" in failed, failed  # read-only root filesystem
