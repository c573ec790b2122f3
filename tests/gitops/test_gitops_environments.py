"""Every Application the ApplicationSet generates, rendered as Argo CD's repo-server renders it
(chart and values file at the pinned commit, then valuesObject) and validated
strictly (tests/support/kube.py); the Argo CD objects against Argo CD's own CRD schemas; and the
environment files themselves: values.yaml holds only what differs from the chart, release.yaml
only promotable state pointing at images the release workflow really pushes."""

from __future__ import annotations

import io
import re
import subprocess
import tarfile
from pathlib import Path

import pytest
import yaml
from support import kube

from .conftest import APPS_DIR, ARGOCD_DIR, ENVIRONMENTS, ROOT, generate, load_all

CHART = ROOT / "charts" / "ml-service"
PROMOTABLE = {"revision", "image", "model"}
# Argo CD hands the repo-server the cluster's API versions; these make capability checks see the
# prometheus-operator CRDs installed by the platform Application.
API_VERSIONS = ["monitoring.coreos.com/v1"]
_RENDERED: dict[tuple[str, str], list[dict]] = {}


def kube_versions() -> list[str]:
    """Oldest and newest Kubernetes minor of the chart's kubeVersion range."""
    rng = yaml.safe_load((CHART / "Chart.yaml").read_text())["kubeVersion"]
    low = re.search(r">=\s*(\d+)\.(\d+)", rng)
    high = re.search(r"<\s*(\d+)\.(\d+)", rng)
    assert low and high, f"kubeVersion {rng!r} needs a >= and a < bound"
    return [f"{low[1]}.{low[2]}.0", f"{high[1]}.{int(high[2]) - 1}.0"]


def checkout(repo: Path, revision: str, dest: Path) -> Path:
    """The tree of `revision` (what the repo-server checks out for a source)."""
    if not dest.exists():
        tar = subprocess.run(
            ["git", "-C", str(repo), "archive", "--format=tar", revision],
            capture_output=True,
            check=True,
        ).stdout
        with tarfile.open(fileobj=io.BytesIO(tar)) as t:
            t.extractall(dest, filter="tar")
    return dest


def repo_server_args(
    app: dict, kube_version: str, repo: Path, tmp: Path
) -> tuple[list[str], Path, Path]:
    """util/helm/cmd.go `template` for the multi-source Helm Application (run in the chart dir):
    (args, chart dir, the valuesObject file). Value files are relative to the chart's path, in
    the same commit (Argo CD refuses a second source of the same repository at another one)."""
    (chart_src,) = app["spec"]["sources"]
    helm = chart_src["helm"]
    rev = chart_src["targetRevision"]
    tree = checkout(repo, rev, tmp / f"tree-{rev}")
    chart = tree / chart_src["path"]
    args = ["template", ".", "--name-template", helm.get("releaseName", app["metadata"]["name"])]
    args += ["--namespace", app["spec"]["destination"]["namespace"]]
    args += ["--kube-version", kube_version]
    for f in helm.get("valueFiles", []):
        resolved = (chart / f).resolve()
        # the repo-server's rule: a value file inside the repository's checkout
        assert resolved.is_relative_to(tree.resolve()), f"{f} leaves the repository"
        args += ["--values", str(resolved)]
    values_object = tmp / f"values-object-{app['metadata']['name']}.yaml"
    values_object.write_text(yaml.safe_dump(helm["valuesObject"]))
    args += ["--values", str(values_object)]
    for v in API_VERSIONS:
        args += ["--api-versions", v]
    return [*args, "--include-crds"], chart, values_object


def render(generated_apps, released_repo: Path, tmp: Path, env: str, kube_version: str):
    key = (env, kube_version)
    if key not in _RENDERED:
        args, cwd, _ = repo_server_args(generated_apps[env], kube_version, released_repo, tmp)
        proc = kube.run_helm(args, cwd=cwd)
        assert proc.returncode == 0, f"{env} does not render:\n{proc.stderr}"
        _RENDERED[key] = kube.load_documents(proc.stdout)
    return _RENDERED[key]


@pytest.fixture(scope="module")
def rendered(generated_apps, released_repo, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("render")
    return lambda env, version: render(generated_apps, released_repo, tmp, env, version)


def deployed(docs: list[dict]) -> list[dict]:
    """What Argo CD applies: Helm test hooks are not synced."""
    return [
        d
        for d in docs
        if "test" not in (d["metadata"].get("annotations") or {}).get("helm.sh/hook", "")
    ]


@pytest.mark.argocd
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_environment_renders_and_validates_strictly(rendered, env: str):
    for version in kube_versions():
        docs = rendered(env, version)
        assert docs, f"{env}: nothing rendered"
        findings = kube.validate(docs, [version], crd_files=kube.crd_files())
        assert not findings, "\n".join(map(str, findings))


@pytest.mark.argocd
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_rendered_kinds_are_allowed_by_the_project(rendered, env: str):
    (proj,) = [
        p for p in load_all(APPS_DIR / "projects.yaml") if p["metadata"]["name"] == "ml-service"
    ]
    allowed = {(w["group"], w["kind"]) for w in proj["spec"]["namespaceResourceWhitelist"]}
    docs = deployed(rendered(env, kube_versions()[-1]))
    kinds = {(d["apiVersion"].rpartition("/")[0], d["kind"]) for d in docs}
    assert kinds <= allowed, f"not allowed by AppProject ml-service: {sorted(kinds - allowed)}"


@pytest.mark.argocd
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_release_file_drives_image_and_model(rendered, released_repo: Path, env: str):
    release = yaml.safe_load((released_repo / "environments" / env / "release.yaml").read_text())
    docs = rendered(env, kube_versions()[-1])
    # a Deployment, or a Rollout where the environment delivers by canary
    (deploy,) = [d for d in docs if d["kind"] in ("Deployment", "Rollout")]
    pod = deploy["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    image = release["image"]
    assert container["image"] == f"{image['repository']}:{image['tag']}@{image['digest']}"
    # GHCR's first publish is private; the pull secret is set in every environment.
    assert pod["imagePullSecrets"] == [{"name": "ghcr-pull"}]
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


@pytest.mark.argocd
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_release_tool_renders_like_the_repo_server(
    generated_apps, released_repo: Path, gitops_cli, tmp_path: Path, env: str
):
    """scripts/gitops.py's render check (the bump's last step) builds the same `helm template` as
    Argo CD's repo-server builds from the generated Application, with the same valuesObject."""
    app = generated_apps[env]
    expected, chart, values_object = repo_server_args(app, "1.0.0", released_repo, tmp_path)
    release = (released_repo / "environments" / env / "release.yaml").read_text()
    _, state = gitops_cli.load_release(release, env)
    assert state.values_object() == yaml.safe_load(values_object.read_text())
    args, cwd = gitops_cli.helm_args(env, chart.parents[1], values_object)
    drop = {"--kube-version", "--api-versions"}
    kept, skip = [], False
    for a in expected:
        if skip:
            skip = False
        elif a in drop:
            skip = True
        else:
            kept.append(a)
    assert (args, cwd) == (kept, chart)


@pytest.mark.argocd
@pytest.mark.repo_state
def test_every_released_environment_renders_as_pinned(tmp_path: Path):
    """What this repository releases now (none, some or every environment; any commit, image and
    model): the Application generated for each release file renders, at the commit it pins, valid
    for the newest Kubernetes, with the image and model of the file."""
    released = {p.parent.name: p for p in (ROOT / "environments").glob("*/release.yaml")}
    apps = generate(ROOT)
    assert sorted(apps) == sorted(released)
    version = kube_versions()[-1]
    for env, path in released.items():
        release = yaml.safe_load(path.read_text())
        revision = release["revision"]
        known = subprocess.run(["git", "-C", str(ROOT), "cat-file", "-e", f"{revision}^{{commit}}"],
                               capture_output=True, check=False)  # fmt: skip
        assert known.returncode == 0, (
            f"{env} pins {revision[:12]}: not in this clone (full history)"
        )
        args, cwd, _ = repo_server_args(apps[env], version, ROOT, tmp_path)
        proc = kube.run_helm(args, cwd=cwd)
        assert proc.returncode == 0, f"{env} does not render at {revision[:12]}:\n{proc.stderr}"
        docs = kube.load_documents(proc.stdout)
        findings = kube.validate(docs, [version], crd_files=kube.crd_files())
        assert not findings, "\n".join(map(str, findings))
        (deploy,) = [d for d in docs if d["kind"] in ("Deployment", "Rollout")]
        image = release["image"]
        assert deploy["spec"]["template"]["spec"]["containers"][0]["image"] == (
            f"{image['repository']}:{image['tag']}@{image['digest']}"
        )


@pytest.mark.argocd
def test_argocd_objects_match_the_crds(generated_apps, argocd_crd_files):
    files = [ARGOCD_DIR / "bootstrap.yaml", *sorted(APPS_DIR.glob("*.yaml"))]
    docs = [o for f in files for o in load_all(f)]
    docs += list(generated_apps.values())
    assert {d["kind"] for d in docs} == {"Application", "ApplicationSet", "AppProject"}
    findings = kube.validate(docs, kube_versions()[-1:], crd_files=argocd_crd_files)
    assert not findings, "\n".join(map(str, findings))


@pytest.mark.argocd
def test_crd_validation_catches_a_typo(argocd_crd_files):
    """The closed schemas are live: an unknown field in an Application is a finding."""
    (boot,) = load_all(ARGOCD_DIR / "bootstrap.yaml")
    boot["spec"]["syncPolicy"]["automated"]["selfHeel"] = True
    findings = kube.validate([boot], kube_versions()[-1:], crd_files=argocd_crd_files)
    assert any("selfHeel" in f.message for f in findings), findings


@pytest.mark.repo_state
def test_release_files_pin_images_the_release_workflow_pushes():
    """release.yml pushes only `<repository>:<full commit sha>`; a release file pins such a
    tag and its digest (or does not exist: nothing released, no Application)."""
    workflow = (ROOT / ".github/workflows/release.yml").read_text()
    assert "tags: ${{ steps.name.outputs.repository }}:${{ github.sha }}" in workflow
    assert '--tag "$GITHUB_SHA"' in workflow
    for path in sorted((ROOT / "environments").glob("*/release.yaml")):
        release = yaml.safe_load(path.read_text())
        assert set(release) == PROMOTABLE, path
        assert re.fullmatch(r"[0-9a-f]{40}", release["image"]["tag"]), path
        assert re.fullmatch(r"sha256:[0-9a-f]{64}", release["image"]["digest"]), path
        assert re.fullmatch(r"[0-9a-f]{40}", release["revision"]), path


def test_release_template_holds_only_promotable_state(gitops_cli):
    doc = yaml.safe_load(gitops_cli.RELEASE_TEMPLATE.format(env="dev"))
    assert set(doc) == PROMOTABLE
    assert set(doc["image"]) == {"repository", "tag", "digest"}
    assert set(doc["model"]) == {"name", "version"}
    for env in ENVIRONMENTS:
        values = yaml.safe_load((ROOT / "environments" / env / "values.yaml").read_text())
        assert not set(values) & {"image", "model", "revision"}, "promotable state: release.yaml"


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


# Said by every environment even where it is the chart's default: how releases reach its pods.
STATED = {"delivery.strategy"}


@pytest.mark.repo_state
@pytest.mark.parametrize("env", ENVIRONMENTS)
def test_values_hold_only_what_differs_from_the_chart(env: str):
    defaults = yaml.safe_load((CHART / "values.yaml").read_text())
    values = yaml.safe_load((ROOT / "environments" / env / "values.yaml").read_text())
    copies = [".".join(map(str, p)) for p, v in leaves(values) if lookup(defaults, p) == v]
    copies = [c for c in copies if c not in STATED]
    assert not copies, f"{env}/values.yaml repeats chart defaults: {copies}"


def test_every_environment_says_how_it_delivers():
    """dev takes a release at once; staging and prod by canary (Argo Rollouts)."""
    strategies = {
        env: yaml.safe_load((ROOT / "environments" / env / "values.yaml").read_text())["delivery"][
            "strategy"
        ]
        for env in ENVIRONMENTS
    }
    assert strategies == {"dev": "rollingUpdate", "staging": "canary", "prod": "canary"}


@pytest.mark.repo_state
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
