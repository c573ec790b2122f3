"""The Argo CD objects: what the ApplicationSet generates, what the AppProjects allow, the platform
Application, the bootstrap; every object validated against Argo CD's own CRD schemas."""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import APPSET, ARGOCD_DIR, ENVIRONMENTS, ROOT, load_all, tool

pytestmark = pytest.mark.gitops

REPO_URL = "https://github.com/OWNER/ml-service.git"
ARGOCD_FILES = sorted(ARGOCD_DIR.rglob("*.yaml"))


def objects(kind: str) -> list[dict]:
    return [o for f in ARGOCD_FILES for o in load_all(f) if o["kind"] == kind]


def project(name: str) -> dict:
    found = [p for p in objects("AppProject") if p["metadata"]["name"] == name]
    assert len(found) == 1, f"AppProject {name} defined {len(found)} times"
    return found[0]


def test_one_application_per_environment(generated_apps: dict[str, dict]):
    assert sorted(generated_apps) == sorted(ENVIRONMENTS)
    for env, app in generated_apps.items():
        spec = app["spec"]
        assert app["metadata"]["name"] == f"ml-service-{env}"
        assert spec["project"] == "ml-service"
        assert spec["destination"]["namespace"] == f"ml-service-{env}"
        src = spec["source"]
        assert (src["repoURL"], src["path"], src["targetRevision"]) == (
            REPO_URL,
            "charts/ml-service",
            "main",
        )
        # values.yaml first, release.yaml last: the promotable state wins.
        assert src["helm"]["valueFiles"] == [
            f"../../environments/{env}/values.yaml",
            f"../../environments/{env}/release.yaml",
        ]
        for value_file in src["helm"]["valueFiles"]:
            assert (ROOT / src["path"] / value_file).resolve().is_file(), value_file
        assert {"CreateNamespace=true", "ServerSideApply=true"} <= set(
            spec["syncPolicy"]["syncOptions"]
        )


@pytest.mark.parametrize(("env", "automated"), [("dev", True), ("staging", True), ("prod", False)])
def test_sync_policy(generated_apps: dict[str, dict], env: str, automated: bool):
    policy = generated_apps[env]["spec"]["syncPolicy"]
    if automated:
        assert policy["automated"] == {"prune": True, "selfHeal": True}
    else:
        assert "automated" not in policy, "prod syncs only by hand"


def test_applicationset_uses_go_templates_with_missingkey_error(tmp_path: Path):
    appset = load_all(APPSET)[0]
    assert appset["spec"]["goTemplate"] is True
    assert appset["spec"]["goTemplateOptions"] == ["missingkey=error"]
    # The option is live: an element without a parameter the template uses fails the generation.
    broken = yaml.safe_load(APPSET.read_text())
    del broken["spec"]["generators"][0]["list"]["elements"][2]["autoSync"]
    path = tmp_path / "appset.yaml"
    path.write_text(yaml.safe_dump(broken))
    proc = subprocess.run(
        [tool("appset-render"), str(path)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 1
    assert 'map has no entry for key "autoSync"' in proc.stderr


def test_project_admits_exactly_the_generated_applications(generated_apps: dict[str, dict]):
    proj = project("ml-service")["spec"]
    assert proj["sourceRepos"] == [REPO_URL]
    for app in generated_apps.values():
        dest = app["spec"]["destination"]
        assert any(
            fnmatch.fnmatchcase(dest["namespace"], d["namespace"]) and d["server"] == dest["server"]
            for d in proj["destinations"]
        )
    assert all(d["namespace"] == "ml-service-*" for d in proj["destinations"])
    # Nothing cluster-scoped but the namespace CreateNamespace=true makes.
    assert proj["clusterResourceWhitelist"] == [{"group": "", "kind": "Namespace"}]


def test_prod_is_gated_by_a_sync_window(generated_apps: dict[str, dict]):
    windows = project("ml-service")["spec"]["syncWindows"]
    gating = [
        w
        for w in windows
        if any(fnmatch.fnmatchcase("ml-service-prod", a) for a in w.get("applications", []))
    ]
    assert gating, "no sync window applies to ml-service-prod"
    for w in gating:
        assert w["kind"] == "allow"
        assert w.get("manualSync", False) is False, "manual syncs outside the window stay blocked"
        assert len(w["schedule"].split()) == 5
        assert re.fullmatch(r"\d+[hm]", w["duration"])
    for env in ("dev", "staging"):
        name = generated_apps[env]["metadata"]["name"]
        assert not any(fnmatch.fnmatchcase(name, a) for w in windows for a in w["applications"])


def test_tool_renders_like_the_repo_server(generated_apps: dict[str, dict], gitops_cli):
    """scripts/gitops.py's render check runs `helm template` with the same arguments Argo CD's
    repo-server builds from the generated Application (util/helm/cmd.go: template)."""
    for env, app in generated_apps.items():
        src, helm = app["spec"]["source"], app["spec"]["source"]["helm"]
        chart = ROOT / src["path"]
        expected = ["template", ".", "--name-template", helm["releaseName"]]
        expected += ["--namespace", app["spec"]["destination"]["namespace"]]
        for f in helm["valueFiles"]:
            expected += ["--values", str((chart / f).resolve())]
        expected += ["--include-crds"]
        args, cwd = gitops_cli.helm_args(env, ROOT)
        assert (args, cwd) == (expected, chart)


def test_platform_kube_prometheus_stack():
    (app,) = [a for a in objects("Application") if a["metadata"]["name"] == "kube-prometheus-stack"]
    src = app["spec"]["source"]
    assert src["chart"] == "kube-prometheus-stack"
    assert re.fullmatch(r"\d+\.\d+\.\d+", src["targetRevision"]), "pin an exact chart version"
    assert src["repoURL"] in project(app["spec"]["project"])["spec"]["sourceRepos"]
    values = src["helm"]["valuesObject"]
    prom = values["prometheus"]["prometheusSpec"]
    assert prom["serviceMonitorSelectorNilUsesHelmValues"] is False
    assert prom["ruleSelectorNilUsesHelmValues"] is False
    # The chart labels its monitors for this release name too (belt and braces).
    chart_values = yaml.safe_load((ROOT / "charts/ml-service/values.yaml").read_text())
    assert chart_values["serviceMonitor"]["labels"]["release"] == src["helm"]["releaseName"]
    sidecar = values["grafana"]["sidecar"]["dashboards"]
    assert sidecar["enabled"] is True
    assert sidecar["searchNamespace"] == "ALL"
    assert sidecar["folderAnnotation"] == "grafana_folder"
    assert sidecar["provider"]["foldersFromFilesStructure"] is True
    assert (sidecar["label"], sidecar["labelValue"]) == (
        chart_values["dashboards"]["label"],
        chart_values["dashboards"]["labelValue"],
    )
    assert "ServerSideApply=true" in app["spec"]["syncPolicy"]["syncOptions"]


def test_bootstrap_is_one_app_of_apps():
    (boot,) = load_all(ARGOCD_DIR / "bootstrap.yaml")
    assert boot["kind"] == "Application"
    path = ROOT / boot["spec"]["source"]["path"]
    kinds = sorted(o["kind"] for f in path.glob("*.yaml") for o in load_all(f))
    assert kinds == ["AppProject"] * 3 + ["Application"] * 2 + ["ApplicationSet"]
    urls = {
        o["spec"]["source"]["repoURL"]
        for o in objects("Application")
        if "chart" not in o["spec"]["source"]
    }
    urls |= {o["spec"]["template"]["spec"]["source"]["repoURL"] for o in objects("ApplicationSet")}
    assert urls == {REPO_URL}, "one placeholder repository URL everywhere (docs/gitops.md)"
