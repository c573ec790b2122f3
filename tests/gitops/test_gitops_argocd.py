"""The Argo CD objects: what the ApplicationSet generates (Argo CD's own ApplicationSet code,
tests/gitops/argocd/appset-render), what the AppProjects allow, the platform Application, the
bootstrap and its sync waves."""

from __future__ import annotations

import fnmatch
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import (
    APPS_DIR,
    APPSET,
    ARGOCD_DIR,
    ENVIRONMENTS,
    ROOT,
    appset_render,
    generate,
    load_all,
    release_text,
    run_git,
    snapshot_repo,
    tool,
)

ARGOCD_FILES = sorted(ARGOCD_DIR.rglob("*.yaml"))
# Objects Argo CD syncs: the bootstrap and what it syncs (argocd/install holds ConfigMap patches).
SYNCED_FILES = [ARGOCD_DIR / "bootstrap.yaml", *sorted(APPS_DIR.glob("*.yaml"))]
BOOTSTRAP = load_all(ARGOCD_DIR / "bootstrap.yaml")[0]
# The one place the repository URL is written; `make adopt` rewrites it everywhere.
REPO_URL = BOOTSTRAP["spec"]["source"]["repoURL"]


def objects(kind: str) -> list[dict]:
    return [o for f in SYNCED_FILES for o in load_all(f) if o["kind"] == kind]


def project(name: str) -> dict:
    found = [p for p in objects("AppProject") if p["metadata"]["name"] == name]
    assert len(found) == 1, f"AppProject {name} defined {len(found)} times"
    return found[0]


def wave(obj: dict) -> int:
    return int((obj["metadata"].get("annotations") or {}).get("argocd.argoproj.io/sync-wave", 0))


@pytest.mark.repo_state
def test_every_object_reads_the_repository_bootstrap_names():
    """One URL in every place Argo CD reads this repository from: the template's, a GitHub URL
    after `make adopt REPO=...`, any other after `make adopt ... REPO_URL=...`. GitHub is told
    about prod's deployments through the dispatch path of one GitHub repository."""
    assert re.fullmatch(r"(https|http|ssh|git)://\S+", REPO_URL), REPO_URL
    appset = load_all(APPSET)[0]
    urls = {
        o["spec"]["source"]["repoURL"]
        for o in objects("Application")
        if "chart" not in o["spec"]["source"]
    }
    urls |= {s["repoURL"] for s in appset["spec"]["template"]["spec"]["sources"]}
    urls |= {
        g["git"]["repoURL"] for g in appset["spec"]["generators"][0]["matrix"]["generators"][1:]
    }
    urls |= set(project("ml-service")["spec"]["sourceRepos"])
    urls |= set(project("mlflow-platform")["spec"]["sourceRepos"])
    assert urls == {REPO_URL}
    notifications = (ARGOCD_DIR / "install" / "argocd-notifications-cm.patch.yaml").read_text()
    (repo,) = set(re.findall(r"path: /repos/([\w-]+/[\w.-]+)/dispatches", notifications))
    github = re.fullmatch(r"https://github\.com/([\w.-]+/[\w.-]+)\.git", REPO_URL)
    if github:
        assert repo == github[1], "a GitHub URL names the repository that is notified"


@pytest.mark.argocd
def test_one_application_per_released_environment(generated_apps, released_repo: Path):
    assert sorted(generated_apps) == sorted(ENVIRONMENTS)
    commit = run_git(released_repo, "rev-parse", "HEAD^")
    for env, app in generated_apps.items():
        spec = app["spec"]
        assert app["metadata"]["name"] == f"ml-service-{env}"
        assert app["metadata"]["namespace"] == "argocd"
        assert spec["project"] == "ml-service"
        assert spec["destination"]["namespace"] == f"ml-service-{env}"
        # One source: Argo CD refuses the same repository at two revisions in one Application.
        (chart,) = spec["sources"]
        # The chart at the commit release.yaml pins, not main: promoted like the image.
        assert (chart["repoURL"], chart["path"], chart["targetRevision"]) == (
            REPO_URL,
            "charts/ml-service",
            commit,
        )
        # the environment's values.yaml from the same commit (relative to the chart's path)
        assert chart["helm"]["valueFiles"] == [f"../../environments/{env}/values.yaml"]
        assert chart["helm"]["valuesObject"] == {
            "image": {
                "repository": "ghcr.io/owner/ml-service",
                "tag": commit,
                "digest": "sha256:" + "d" * 64,
            },
            "model": {"name": "ml-service", "version": "3"},
        }
        assert app["metadata"]["annotations"]["ml-service.io/model-version"] == "3"


@pytest.mark.argocd
@pytest.mark.repo_state
def test_one_application_per_released_environment_only(tmp_path: Path):
    """An environment without release.yaml gets no Application, so nothing pulls an image that
    release.yml never pushed; each release file makes exactly one. Checked on this repository
    as it is (released or not) and on copies with none and with dev's only."""
    released = sorted(p.parent.name for p in (ROOT / "environments").glob("*/release.yaml"))
    assert sorted(generate(ROOT)) == released
    repo = tmp_path / "repo"
    snapshot_repo(repo)
    for path in (repo / "environments").glob("*/release.yaml"):
        path.unlink()
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "--quiet", "--allow-empty", "-m", "nothing released")
    assert generate(repo) == {}
    commit = run_git(repo, "rev-parse", "HEAD")
    (repo / "environments/dev/release.yaml").write_text(release_text("dev", commit))
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "--quiet", "-m", "first release")
    assert sorted(generate(repo)) == ["dev"]


@pytest.mark.argocd
@pytest.mark.parametrize(("env", "automated"), [("dev", True), ("staging", True), ("prod", False)])
def test_sync_policy(generated_apps: dict[str, dict], env: str, automated: bool):
    policy = generated_apps[env]["spec"]["syncPolicy"]
    if automated:
        assert policy["automated"] == {"prune": True, "selfHeal": True}
    else:
        assert "automated" not in policy, "prod syncs only by hand"
    assert {"CreateNamespace=true", "ServerSideApply=true"} <= set(policy["syncOptions"])


@pytest.mark.argocd
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_first_sync_survives_missing_crds(generated_apps: dict[str, dict], env: str):
    """On a new cluster the monitoring CRDs arrive with the platform Application. The dry
    run of a kind without its CRD is skipped, and a failed sync is retried without a limit, on the
    newest commit (Argo CD never re-runs a failed automated sync of the same commit by itself)."""
    policy = generated_apps[env]["spec"]["syncPolicy"]
    assert "SkipDryRunOnMissingResource=true" in policy["syncOptions"]
    retry = policy["retry"]
    assert int(retry["limit"]) < 0, "a negative limit is unlimited (controller/appcontroller.go)"
    assert retry["refresh"] is True
    assert retry["backoff"]["maxDuration"] in ("3m", "180s")


def test_sync_waves_put_projects_then_platform_then_environments():
    """The bootstrap syncs AppProjects, then the platform (monitoring with its CRDs, the
    MLflow server the environments load from), then the ApplicationSet;
    argocd/install/argocd-cm.patch.yaml restores the Application health check the waves need to
    wait on (Argo CD's docs/operator-manual/health.md)."""
    projects = [wave(p) for p in objects("AppProject")]
    platform = {
        a["metadata"]["name"]: wave(a)
        for a in objects("Application")
        if a["metadata"]["name"] != BOOTSTRAP["metadata"]["name"]
    }
    assert set(platform) == {"kube-prometheus-stack", "mlflow-platform"}
    (appset,) = [wave(a) for a in objects("ApplicationSet")]
    assert max(projects) < min(platform.values()) and max(platform.values()) < appset
    patch = yaml.safe_load((ARGOCD_DIR / "install" / "argocd-cm.patch.yaml").read_text())
    lua = patch["data"]["resource.customizations.health.argoproj.io_Application"]
    assert "obj.status.health.status" in lua


@pytest.mark.argocd
def test_applicationset_uses_go_templates_with_missingkey_error(tmp_path: Path, released_repo):
    appset = load_all(APPSET)[0]
    assert appset["spec"]["goTemplate"] is True
    assert appset["spec"]["goTemplateOptions"] == ["missingkey=error"]
    # The option is live: an element without a parameter the template uses fails the generation.
    broken = yaml.safe_load(APPSET.read_text())
    del broken["spec"]["generators"][0]["matrix"]["generators"][0]["list"]["elements"][2][
        "autoSync"
    ]
    path = tmp_path / "appset.yaml"
    path.write_text(yaml.safe_dump(broken))
    proc = appset_render(released_repo, path)
    assert proc.returncode == 1
    assert 'map has no entry for key "autoSync"' in proc.stderr


@pytest.mark.argocd
def test_renderer_refuses_an_unknown_project(tmp_path: Path, released_repo):
    """An Application must name an existing AppProject. With a git generator Argo CD already
    fails while generating (it reads the project's source-integrity policy first)."""
    broken = yaml.safe_load(APPSET.read_text())
    broken["spec"]["template"]["spec"]["project"] = "ml-servic"
    path = tmp_path / "appset.yaml"
    path.write_text(yaml.safe_dump(broken))
    proc = appset_render(released_repo, path)
    assert proc.returncode == 1
    assert 'error getting project ml-servic: appprojects.argoproj.io "ml-servic" not found' in (
        proc.stderr
    )


@pytest.mark.argocd
def test_only_prod_notifies_github(generated_apps: dict[str, dict]):
    """champion moves when prod is synced and healthy (Argo CD Notifications), not on merge."""
    key = "notifications.argoproj.io/subscribe.on-ml-service-deployed.github-dispatch"
    for env, app in generated_apps.items():
        assert (key in app["metadata"]["annotations"]) == (env == "prod"), env
    cm = yaml.safe_load((ARGOCD_DIR / "install" / "argocd-notifications-cm.patch.yaml").read_text())
    data = cm["data"]
    (trigger,) = yaml.safe_load(data["trigger.on-ml-service-deployed"])
    assert trigger["send"] == ["ml-service-deployed"]
    assert "app.status.sync.status == 'Synced'" in trigger["when"]
    assert "app.status.health.status == 'Healthy'" in trigger["when"]
    template = yaml.safe_load(data["template.ml-service-deployed"])
    body = template["webhook"]["github-dispatch"]["body"]
    # The version is what the live state was compared with, never a merged-but-unsynced one.
    assert "comparedTo" in body and '"event_type": "ml-service-deployed"' in body
    assert "$github-dispatch-token" in data["service.webhook.github-dispatch"]


@pytest.mark.argocd
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


@pytest.mark.argocd
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
    assert BOOTSTRAP["kind"] == "Application"
    path = ROOT / BOOTSTRAP["spec"]["source"]["path"]
    assert path == APPS_DIR
    kinds = sorted(o["kind"] for f in path.glob("*.yaml") for o in load_all(f))
    assert kinds == ["AppProject"] * 3 + ["Application"] * 2 + ["ApplicationSet"]


@pytest.mark.argocd
def test_renderer_is_argo_cds_own_code():
    """Appset-render imports the ApplicationSet controller's packages from the argo-cd
    module at the version mk/gitops.mk pins; no imitation (sprig, hand-written merges) left."""
    src = ROOT / "tests" / "gitops" / "argocd"
    main = (src / "appset-render" / "main.go").read_text()
    for pkg in ("applicationset/controllers/template", "applicationset/generators"):
        assert f'"github.com/argoproj/argo-cd/v3/{pkg}"' in main
    assert "template.GenerateApplications(" in main and "generators.GetGenerators(" in main
    assert "sprig" not in main
    gomod = (src / "go.mod").read_text()
    assert re.search(r"^\s*github.com/argoproj/argo-cd/v3 v3\.6\.1$", gomod, re.M)
    assert not (ROOT / "tests" / "gitops" / "appsetrender").exists()
    version = subprocess.run(
        [tool("argocd"), "version", "--client", "--short"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert version.returncode == 0, version.stderr
    assert "v3.6.1" in version.stdout
