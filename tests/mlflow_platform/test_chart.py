"""charts/mlflow-platform as the chart tier checks charts/ml-service: helm lint (Helm 3 and 4),
helm-unittest suites, generated README and schema, strict Kubernetes schema validation, the
restricted Pod Security Standard, checkov, and no credential anywhere in values or rendered
output."""

from __future__ import annotations

import json
import re
import subprocess
from functools import cache, partial
from pathlib import Path

import pytest
import yaml
from support import kube, tools

CHART = kube.ROOT / "charts" / "mlflow-platform"
CI_VALUES = sorted((CHART / "ci").glob("*-values.yaml"))
RENDERINGS = {"defaults": [], **{f"ci/{p.name}": [p] for p in CI_VALUES}}
HELMS = {"helm3": kube.HELM, "helm4": kube.HELM4}
NAMESPACE = "mlflow"
PSACHECK = kube.TOOLS / "bin" / "psacheck"
# The HTTPRoute CRD of the Gateway API Go module (`make setup-platform`), for `expose.httpRoute`.
GATEWAY_API_CRDS = kube.TOOLS / "crds" / "gateway-api"


tool = partial(tools.tool, setup="setup-chart")


@cache
def rendered(rendering: str, helm: Path = kube.HELM) -> str:
    tool(helm)
    try:
        return kube.helm_template(
            CHART, helm=helm, release="mlflow", namespace=NAMESPACE,
            value_files=RENDERINGS[rendering],
        )  # fmt: skip
    except kube.HelmError as err:
        pytest.fail(f"{rendering} does not render with {helm.name}:\n{err}")


def docs(rendering: str) -> list[dict]:
    return kube.load_documents(rendered(rendering))


@pytest.mark.parametrize("helm", HELMS.values(), ids=HELMS.keys())
@pytest.mark.parametrize("rendering", RENDERINGS)
def test_helm_lint_strict(helm: Path, rendering: str):
    tool(helm)
    args = ["lint", "--strict", str(CHART), "--namespace", NAMESPACE]
    for f in RENDERINGS[rendering]:
        args += ["--values", str(f)]
    proc = kube.run_helm(args, helm=helm)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


@pytest.mark.parametrize("helm", HELMS.values(), ids=HELMS.keys())
def test_renders_with_both_helms(helm: Path):
    kinds = sorted(d["kind"] for d in kube.load_documents(rendered("defaults", helm)))
    assert kinds == ["ConfigMap", "Deployment", *["NetworkPolicy"] * 3, "Pod", *["Service"] * 3,
                     *["StatefulSet"] * 2]  # fmt: skip


def test_helm_unittest_suites():
    tool(kube.HELM)
    suites = sorted((CHART / "tests").glob("*_test.yaml"))
    assert len(suites) >= 4
    proc = kube.run_helm(["unittest", "--strict", "--color=false", str(CHART)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(rf"Test Suites:\s+{len(suites)} passed", proc.stdout), proc.stdout
    templates = {p.relative_to(CHART).as_posix() for p in (CHART / "templates").rglob("*.yaml")}
    covered = {t for s in suites for t in yaml.safe_load(s.read_text())["templates"]}
    assert templates <= covered, f"templates without a suite: {templates - covered}"


def test_helm_unittest_can_fail(tmp_path: Path):
    tool(kube.HELM)
    proc = kube.failing_unittest(CHART, "templates/mlflow-service.yaml", tmp_path)
    assert proc.returncode != 0 and "1 failed" in proc.stdout, proc.stdout


def test_values_schema_and_readme_are_up_to_date():
    proc = subprocess.run([tool(kube.TOOLS / "bin" / "valuesschema"), CHART / "values.yaml"],
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (CHART / "values.schema.json").read_text(), (
        "values.schema.json is stale: run `make platform-chart-docs`"
    )
    proc = subprocess.run(
        [tool(kube.TOOLS / "bin" / "helm-docs"), "--dry-run", "--chart-search-root", CHART,
         "--template-files", "README.md.gotmpl"],
        capture_output=True, text=True, check=False, cwd=kube.ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (CHART / "README.md").read_text().strip(), (
        "charts/mlflow-platform/README.md is stale: run `make platform-chart-docs`"
    )


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("postgresql.persistance.size", "1Gi", "additional properties 'persistance' not allowed"),
        ("mlflow.artifactsMode", "both", "/mlflow/artifactsMode"),
        ("s3.bucket", "Bad_Bucket", "/s3/bucket"),
    ],
)
def test_schema_rejects_bad_values_naming_the_key(key: str, value: str, message: str):
    proc = kube.run_helm([*kube.template_args(CHART, release="mlflow"), "--set", f"{key}={value}"])
    assert proc.returncode != 0, f"{key}={value} was accepted"
    assert message in proc.stderr, proc.stderr


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_renders_valid_for_every_supported_kubernetes(rendering: str):
    crds = sorted(tool(GATEWAY_API_CRDS).glob("*.yaml"))
    findings = kube.validate(docs(rendering), kube.kube_version_bounds(CHART), crd_files=crds)
    assert not findings, "\n".join(map(str, findings))


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_restricted_pod_security_standard(rendering: str):
    for version in kube.kube_version_bounds(CHART):
        proc = subprocess.run(
            [tool(PSACHECK), "-level", "restricted", "-version", f"v{version.rsplit('.', 1)[0]}"],
            input=rendered(rendering), capture_output=True, text=True, check=False,
        )  # fmt: skip
        pods = [json.loads(line) for line in proc.stdout.splitlines()]
        assert proc.returncode == 0, f"[{version}] {proc.stderr}\n" + "\n".join(map(str, pods))
        assert {p["kind"] for p in pods} >= {"Deployment"}, pods
        assert all(p["allowed"] for p in pods)


SECRET_NAMES = re.compile(r"PASSWORD|SECRET|TOKEN|ACCESS_KEY")


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_credentials_only_by_secret_reference(rendering: str):
    rendered_docs = docs(rendering)
    assert not [d for d in rendered_docs if d["kind"] == "Secret"], "the chart renders a Secret"
    for doc in rendered_docs:
        spec = (doc.get("spec") or {}).get("template", {}).get("spec") or doc.get("spec") or {}
        for c in [*spec.get("initContainers", []), *spec.get("containers", [])]:
            for env in c.get("env", []):
                if SECRET_NAMES.search(env["name"]):
                    assert "valueFrom" in env and "value" not in env, (doc["kind"], env)
            assert all(set(e) == {"secretRef"} for e in c.get("envFrom", [])), c["envFrom"]
            assert "PGPASSWORD" not in json.dumps(c.get("command", []) + c.get("args", []))
    text = rendered(rendering)
    assert not re.search(r"postgresql://[^@\s\"]*:[^@\s\"]*@", text), "a password in a database URI"


# Skipped everywhere, with the reason (also in the chart README).
CHECKOV_SKIPS = {
    "CKV_K8S_15": "pull policy IfNotPresent: environments pin images by digest",
    "CKV_K8S_35": "MLflow, libpq and boto read credentials only from environment variables",
}


@pytest.fixture(scope="module")
def checkov_report(tmp_path_factory) -> dict[str, list[dict]]:
    tool(kube.CHECKOV)
    failed = kube.checkov_failed_checks(
        {rendering: rendered(rendering) for rendering in RENDERINGS},
        tmp_path_factory.mktemp("checkov-platform"),
        CHECKOV_SKIPS,
    )
    failures: dict[str, list[dict]] = {}
    for rendering, checks in failed.items():
        scoped = set()
        if "digests" not in rendering:
            scoped.add("CKV_K8S_43")  # no digest in this rendering; release values set them
        if "external" in rendering:
            scoped.add("CKV2_K8S_6")  # networkPolicy.enabled is false in this rendering
        failures[rendering] = [c for c in checks if c["check_id"] not in scoped]
    return failures


@pytest.mark.parametrize("rendering", RENDERINGS)
def test_checkov_zero_failures(rendering: str, checkov_report):
    failed = checkov_report[rendering]
    assert not failed, "\n".join(f"{c['check_id']} {c['check_name']} on {c['resource']}"
                                 for c in failed)  # fmt: skip


def test_every_checkov_skip_is_in_the_readme():
    readme = (CHART / "README.md").read_text()
    annotated = re.findall(r"checkov\.io/skip\d+: (\S+?)=",
                           (CHART / "templates/tests/test-registry.yaml").read_text())  # fmt: skip
    for check in [*CHECKOV_SKIPS, "CKV_K8S_43", "CKV2_K8S_6", *annotated]:
        assert f"`{check}`" in readme, f"{check} is skipped but not listed in the chart README"
