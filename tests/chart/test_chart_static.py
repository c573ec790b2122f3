"""The chart as source: lint, helm-unittest suites, generated docs and schema, values schema."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml
from support import kube

from .conftest import CHART, CI_VALUES, ROOT, tool

SUITES = sorted((CHART / "tests").glob("*_test.yaml"))
TEMPLATES = sorted(
    p.relative_to(CHART).as_posix()
    for p in (CHART / "templates").rglob("*")
    if p.is_file() and not p.name.startswith("_")
)
HELMS = {"helm3": kube.HELM, "helm4": kube.HELM4}


@pytest.mark.parametrize("helm", HELMS.values(), ids=HELMS.keys())
@pytest.mark.parametrize(
    "values", [None, *CI_VALUES], ids=["defaults", *(f"ci/{p.name}" for p in CI_VALUES)]
)
def test_helm_lint_strict(helm: Path, values: Path | None):
    tool(helm)
    args = ["lint", "--strict", str(CHART), "--namespace", "ml-service"]
    if values:
        args += ["--values", str(values)]
    proc = kube.run_helm(args, helm=helm)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 chart(s) failed" in proc.stdout


def test_suites_exist():
    assert len(SUITES) >= 10, f"helm-unittest suites missing in {CHART / 'tests'}"


@pytest.mark.parametrize("suite", SUITES, ids=[s.name for s in SUITES])
def test_helm_unittest_suite(suite: Path):
    tool(kube.HELM)
    proc = kube.run_helm(
        ["unittest", "--strict", "--color=false", "-f", f"tests/{suite.name}", str(CHART)]
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(r"Tests:\s+\d+ passed", proc.stdout), proc.stdout
    assert "failed" not in proc.stdout.split("Tests:")[-1].split("\n")[0], proc.stdout


def test_helm_unittest_plugin_runs_under_helm4():
    """The same plugin install serves Helm 4 (a legacy cli/v1 plugin); it renders with its own
    embedded Helm library, so Helm 4 rendering itself is covered by test_chart_render."""
    tool(kube.HELM4)
    proc = kube.run_helm(["unittest", "--strict", str(CHART)], helm=kube.HELM4)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert re.search(rf"Test Suites:\s+{len(SUITES)} passed", proc.stdout), proc.stdout


@pytest.mark.parametrize("suite", SUITES, ids=[s.name for s in SUITES])
def test_suites_pin_the_chart_version_only_where_assertions_read_it(suite: Path):
    """A version bump must not touch the suites: only those whose assertions read a value derived
    from the chart's version (labels, the default image tag) pin it, and say so."""
    text = suite.read_text()
    pinned = "chart" in (yaml.safe_load(text) or {})
    reads_version = re.search(r"helm\.sh/chart|app\.kubernetes\.io/version|ml-service:\d", text)
    assert pinned == bool(reads_version), f"{suite.name}: pinned={pinned}"
    if pinned:
        assert "# Pinned:" in text, f"{suite.name}: say why the chart version is pinned"


@pytest.mark.parametrize("template", TEMPLATES)
def test_every_template_has_a_suite(template: str):
    covered = {t for s in SUITES for t in yaml.safe_load(s.read_text()).get("templates", [])}
    assert template in covered, f"no helm-unittest suite lists {template}"


def test_helm_unittest_can_fail(tmp_path: Path):
    """A wrong expectation makes helm unittest exit non-zero (so the suites above can fail).
    Runs on a copy: other runs share the work tree."""
    tool(kube.HELM)
    proc = kube.failing_unittest(CHART, "templates/service.yaml", tmp_path)
    assert proc.returncode != 0, proc.stdout
    assert "Tests:       1 failed" in proc.stdout, proc.stdout


def test_values_schema_is_up_to_date():
    gen = tool(kube.TOOLS / "bin" / "valuesschema")
    proc = subprocess.run([gen, CHART / "values.yaml"], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr
    current = (CHART / "values.schema.json").read_text()
    assert proc.stdout == current, "values.schema.json is stale: run `make chart-docs`"


def test_readme_is_up_to_date():
    helm_docs = tool(kube.TOOLS / "bin" / "helm-docs")
    proc = subprocess.run(
        [
            helm_docs,
            "--dry-run",
            "--chart-search-root",
            CHART,
            "--template-files",
            "README.md.gotmpl",
        ],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == (CHART / "README.md").read_text().strip(), (
        "charts/ml-service/README.md is stale: run `make chart-docs`"
    )


def _leaves(schema: dict, path: str = ""):
    for key, sub in (schema.get("properties") or {}).items():
        yield f"{path}{key}", sub
        yield from _leaves(sub, f"{path}{key}.")


SCHEMA = json.loads((CHART / "values.schema.json").read_text())


@pytest.mark.parametrize("key,sub", list(_leaves(SCHEMA)), ids=[k for k, _ in _leaves(SCHEMA)])
def test_every_value_is_documented_and_typed(key: str, sub: dict):
    if not sub.get("properties"):  # a group is documented through its keys
        assert sub.get("description"), f"{key}: add a `# --` comment in values.yaml"
    assert sub.get("type") or sub.get("anyOf") or sub.get("oneOf"), f"{key}: no type"


def test_schema_closes_every_structured_object():
    def walk(schema, path="(root)"):
        if schema.get("properties"):
            assert schema.get("additionalProperties") is False, f"{path} accepts unknown keys"
        for key, sub in (schema.get("properties") or {}).items():
            walk(sub, f"{path}.{key}")

    walk(SCHEMA)


CONTRACT_KEYS = [
    "image.repository", "image.tag", "image.digest", "image.pullPolicy",
    "model.name", "model.version", "model.alias", "model.uri",
    "mlflow.trackingUri", "mlflow.existingSecret", "replicaCount", "resources",
    "autoscaling.enabled", "autoscaling.minReplicas", "autoscaling.maxReplicas",
    "podDisruptionBudget", "networkPolicy", "ingress.enabled", "ingress.className",
    "ingress.hosts", "ingress.tls", "serviceMonitor.enabled", "serviceMonitor.labels",
    "serviceMonitor.interval", "serviceMonitor.scrapeTimeout", "serviceMonitor.relabelings",
    "prometheusRule.enabled", "prometheusRule.labels", "dashboards.enabled", "dashboards.label",
    "env", "extraVolumes", "extraVolumeMounts", "probes", "securityContext", "podSecurityContext",
]  # fmt: skip


@pytest.mark.parametrize("key", CONTRACT_KEYS)
def test_contract_value_exists(key: str):
    """The keys environments and release tooling rely on (the project's contract)."""
    node = SCHEMA
    for part in key.split("."):
        assert part in (node.get("properties") or {}), f"values.yaml lacks {key}"
        node = node["properties"][part]


TYPOS = {
    "top-level": ("replicaCont", "3", "additional properties 'replicaCont' not allowed"),
    "nested": ("serviceMonitor.intervall", "15s", "additional properties 'intervall' not allowed"),
    "deep": ("probes.startup.failureTreshold", "9", "additional properties 'failureTreshold'"),
    "enum": ("logLevel", "verbose", "/logLevel"),
    "type": ("replicaCount", "two", "/replicaCount"),
}


@pytest.mark.parametrize("helm", HELMS.values(), ids=HELMS.keys())
@pytest.mark.parametrize("case", TYPOS.values(), ids=TYPOS.keys())
def test_schema_rejects_bad_values_naming_the_key(helm: Path, case: tuple[str, str, str]):
    key, value, message = case
    tool(helm)
    proc = kube.run_helm([*kube.template_args(CHART), "--set", f"{key}={value}"], helm=helm)
    assert proc.returncode != 0, f"{key}={value} was accepted"
    assert message in proc.stderr, proc.stderr
