"""Every Application the ApplicationSet generates, rendered as Argo CD's repo-server renders it and
validated strictly (tests/support/kube.py); the Argo CD objects against Argo CD's own CRD schemas;
and the environment files themselves: release.yaml holds only promotable state, values.yaml only
what differs from the chart."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path

import pytest
import yaml
from support import kube

from .conftest import ARGOCD_DIR, ENVIRONMENTS, ROOT, load_all

pytestmark = pytest.mark.gitops

CHART = ROOT / "charts" / "ml-service"
PROMOTABLE = {"image": {"repository", "tag", "digest"}, "model": {"name", "version"}}
# Argo CD hands the repo-server the cluster's API versions; these make capability checks see the
# prometheus-operator CRDs installed by the platform Application.
API_VERSIONS = ["monitoring.coreos.com/v1"]


def kube_versions() -> list[str]:
    """Oldest and newest Kubernetes minor of the chart's kubeVersion range."""
    rng = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    low = re.search(r">=\s*(\d+)\.(\d+)", rng)
    high = re.search(r"<\s*(\d+)\.(\d+)", rng)
    assert low and high, f"kubeVersion {rng!r} needs a >= and a < bound"
    return [f"{low[1]}.{low[2]}.0", f"{high[1]}.{int(high[2]) - 1}.0"]


def repo_server_args(app: dict, kube_version: str) -> tuple[list[str], Path]:
    """util/helm/cmd.go `template` for a single-source Helm Application (run in the chart dir)."""
    src, helm = app["spec"]["source"], app["spec"]["source"]["helm"]
    chart = ROOT / src["path"]
    args = ["template", ".", "--name-template", helm.get("releaseName", app["metadata"]["name"])]
    args += ["--namespace", app["spec"]["destination"]["namespace"]]
    args += ["--kube-version", kube_version]
    for f in helm.get("valueFiles", []):
        resolved = (chart / f).resolve()
        assert resolved.is_relative_to(ROOT), f"{f} leaves the repository: Argo CD refuses it"
        args += ["--values", str(resolved)]
    for v in API_VERSIONS:
        args += ["--api-versions", v]
    return [*args, "--include-crds"], chart


@cache
def render(env: str, kube_version: str, app_yaml: str) -> list[dict]:
    args, cwd = repo_server_args(yaml.safe_load(app_yaml), kube_version)
    proc = kube.run_helm(args, cwd=cwd)
    assert proc.returncode == 0, f"{env} does not render:\n{proc.stderr}"
    return kube.load_documents(proc.stdout)


def app_yaml(generated_apps: dict[str, dict], env: str) -> str:
    return yaml.safe_dump(generated_apps[env])


def deployed(docs: list[dict]) -> list[dict]:
    """What Argo CD applies: Helm test hooks are not synced."""
    return [
        d
        for d in docs
        if "test" not in (d["metadata"].get("annotations") or {}).get("helm.sh/hook", "")
    ]


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_environment_renders_and_validates_strictly(generated_apps, env: str):
    for version in kube_versions():
        docs = render(env, version, app_yaml(generated_apps, env))
        assert docs, f"{env}: nothing rendered"
        findings = kube.validate(docs, [version], crd_files=kube.prometheus_operator_crds())
        assert not findings, "\n".join(map(str, findings))


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_rendered_kinds_are_allowed_by_the_project(generated_apps, env: str):
    (proj,) = [
        p
        for p in load_all(ARGOCD_DIR / "apps" / "projects.yaml")
        if p["metadata"]["name"] == "ml-service"
    ]
    allowed = {(w["group"], w["kind"]) for w in proj["spec"]["namespaceResourceWhitelist"]}
    docs = deployed(render(env, kube_versions()[-1], app_yaml(generated_apps, env)))
    kinds = {(d["apiVersion"].rpartition("/")[0], d["kind"]) for d in docs}
    assert kinds <= allowed, f"not allowed by AppProject ml-service: {sorted(kinds - allowed)}"


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_release_file_drives_image_and_model(generated_apps, env: str):
    release = yaml.safe_load((ROOT / "environments" / env / "release.yaml").read_text())
    docs = render(env, kube_versions()[-1], app_yaml(generated_apps, env))
    (deploy,) = [d for d in docs if d["kind"] == "Deployment"]
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    image = release["image"]
    expected = f"{image['repository']}:{image['tag']}"
    if image["digest"]:
        expected += f"@{image['digest']}"
    assert container["image"] == expected
    env_vars = {e["name"]: e.get("value") for e in container.get("env", [])}
    # The chart may pass settings as env or through a ConfigMap (envFrom); both reach the app.
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            cm = by_name[("ConfigMap", source["configMapRef"]["name"])]
            env_vars = {**cm.get("data", {}), **env_vars}
    model = release["model"]
    assert env_vars["MODEL_URI"] == f"models:/{model['name']}/{model['version']}"
    assert all(d["metadata"].get("namespace") in (None, f"ml-service-{env}") for d in docs)


def test_argocd_objects_match_the_crds(generated_apps, argocd_crd_files):
    docs = [o for f in sorted(ARGOCD_DIR.rglob("*.yaml")) for o in load_all(f)]
    docs += list(generated_apps.values())
    assert {d["kind"] for d in docs} == {"Application", "ApplicationSet", "AppProject"}
    findings = kube.validate(docs, kube_versions()[-1:], crd_files=argocd_crd_files)
    assert not findings, "\n".join(map(str, findings))


def test_crd_validation_catches_a_typo(argocd_crd_files):
    """The closed schemas are live: an unknown field in an Application is a finding."""
    (boot,) = load_all(ARGOCD_DIR / "bootstrap.yaml")
    boot["spec"]["syncPolicy"]["automated"]["selfHeel"] = True
    findings = kube.validate([boot], kube_versions()[-1:], crd_files=argocd_crd_files)
    assert any("selfHeel" in f.message for f in findings), findings


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_release_file_holds_only_promotable_state(env: str):
    release = yaml.safe_load((ROOT / "environments" / env / "release.yaml").read_text())
    assert {k: set(v) for k, v in release.items()} == PROMOTABLE
    values = yaml.safe_load((ROOT / "environments" / env / "values.yaml").read_text())
    assert not set(values) & set(PROMOTABLE), "image/model belong in release.yaml"


def leaves(tree, path=()):
    if isinstance(tree, dict) and tree:
        for k, v in tree.items():
            yield from leaves(v, (*path, k))
    else:
        yield path, tree


def lookup(tree, path):
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return KeyError
        tree = tree[key]
    return tree


@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_values_hold_only_what_differs_from_the_chart(env: str):
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    values = yaml.safe_load((ROOT / "environments" / env / "values.yaml").read_text())
    copies = [".".join(map(str, p)) for p, v in leaves(values) if lookup(defaults, p) == v]
    assert not copies, f"{env}/values.yaml repeats chart defaults: {copies}"


def test_a_single_environment_ships_the_dashboards():
    """One Grafana serves the cluster and a dashboard uid may exist once."""
    shipping = [
        env
        for env in ENVIRONMENTS
        if (yaml.safe_load((ROOT / "environments" / env / "values.yaml").read_text()) or {})
        .get("dashboards", {})
        .get("enabled")
    ]
    assert shipping == ["prod"]
