"""Fixtures of the gitops tier: the repository's Argo CD objects, the Applications the
ApplicationSet generates (computed by Argo CD's own ApplicationSet code, tests/gitops/argocd), the
Argo CD CRDs (from the argo-cd Go module) and the release tool.

What Argo CD's build provides (`make argocd`: appset-render, the argocd binary, the module's
CRDs) is only for tests marked `argocd`: CI's first job runs the tier without that build, so a
test that reaches for it unmarked fails here, naming the marker, instead of failing or being
skipped there."""

from __future__ import annotations

import functools
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import kube, tools
from support.gitrepo import run_git, snapshot_repo

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".tools" / "bin"
ARGOCD_DIR = ROOT / "argocd"
APPS_DIR = ARGOCD_DIR / "apps"
APPSET = APPS_DIR / "applicationset.yaml"
PROJECTS = APPS_DIR / "projects.yaml"
ENVIRONMENTS = ("dev", "staging", "prod")
SETUP_HINT = "run `make setup` (or `make setup-gitops`)"
ARGOCD_BUILD = ("appset-render", "argocd")
_running: dict[str, pytest.Item] = {}
IMAGE_REPOSITORY = "ghcr.io/owner/ml-service"
DIGEST = "sha256:" + "d" * 64


_tool = functools.partial(tools.tool, setup="setup-gitops")


@pytest.hookimpl(tryfirst=True)  # before the fixtures it needs are set up
def pytest_runtest_setup(item: pytest.Item) -> None:
    _running["item"] = item


def needs_argocd_build(what: str) -> None:
    """Fail the running test unless it carries the `argocd` marker."""
    item = _running.get("item")
    if item is not None and item.get_closest_marker("argocd") is None:
        pytest.fail(
            f"{item.nodeid} uses {what} from Argo CD's build: mark it `@pytest.mark.argocd` "
            "(CI's first job runs `-m 'not argocd'` without that build)",
            pytrace=False,
        )


def tool(name: str) -> Path:
    if name in ARGOCD_BUILD:
        needs_argocd_build(name)
    return _tool(name)


def argocd_version() -> str:
    m = re.search(r"^ARGOCD_VERSION\s*:=\s*(\S+)", (ROOT / "mk" / "gitops.mk").read_text(), re.M)
    assert m, "ARGOCD_VERSION missing from mk/gitops.mk"
    return m.group(1)


def load_all(path: Path) -> list[dict]:
    return kube.load_documents(path.read_text())


def appset_render(repo: Path, appset: Path = APPSET, projects: Path = PROJECTS):
    """`appset-render`: the Applications Argo CD's ApplicationSet code generates from `appset`,
    with `repo` (a git work tree) standing for the repository its git generator reads."""
    return subprocess.run(
        [tool("appset-render"), "--repo", str(repo), "--project", str(projects), str(appset)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def generate(repo: Path, appset: Path = APPSET, projects: Path = PROJECTS) -> dict[str, dict]:
    proc = appset_render(repo, appset, projects)
    assert proc.returncode == 0, proc.stderr
    apps = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return {a["metadata"]["labels"]["ml-service.io/environment"]: a for a in apps}


def release_text(env: str, revision: str, version: str = "3") -> str:
    """An environment's release.yaml as scripts/gitops.py writes it."""
    return f"""\
# Promotable state of {env} (test copy).
revision: "{revision}"
image:
  repository: {IMAGE_REPOSITORY}
  tag: "{revision}"
  digest: "{DIGEST}"
model:
  name: ml-service
  version: "{version}"
"""


@pytest.fixture(scope="session")
def released_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of this repository where every environment has a release: release.yaml pins the
    snapshot commit (chart and image) and model version 3, as after a first release and two
    promotions."""
    repo = tmp_path_factory.mktemp("released") / "repo"
    commit = snapshot_repo(repo)
    for env in ENVIRONMENTS:
        (repo / "environments" / env / "release.yaml").write_text(release_text(env, commit))
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "--quiet", "-m", "releases")
    return repo


@pytest.fixture(scope="session")
def argocd_crd_dir() -> Path:
    """manifests/crds of the pinned argo-cd Go module, read from the module cache
    (`make setup-gitops` downloads it)."""
    needs_argocd_build("the Argo CD CRDs")
    gomodcache = subprocess.run(
        ["go", "env", "GOMODCACHE"], capture_output=True, text=True, check=True
    ).stdout.strip()
    crds = Path(gomodcache) / f"github.com/argoproj/argo-cd/v3@{argocd_version()}/manifests/crds"
    if not (crds / "application-crd.yaml").is_file():
        pytest.fail(f"Argo CD CRDs not in the Go module cache ({crds}): {SETUP_HINT}")
    return crds


@pytest.fixture(scope="session")
def argocd_crd_files(argocd_crd_dir: Path) -> list[Path]:
    return sorted(argocd_crd_dir.glob("*-crd.yaml"))


@pytest.fixture(scope="session")
def generated_apps(released_repo: Path) -> dict[str, dict]:
    """env -> the Application the ApplicationSet generates for it once every environment has a
    release (Argo CD's own generator and template code)."""
    return generate(released_repo)


@pytest.fixture(scope="session")
def gitops_cli():
    """scripts/gitops.py imported as a module (its pure functions are unit-tested directly)."""
    spec = importlib.util.spec_from_file_location("gitops_cli", ROOT / "scripts" / "gitops.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gitops_cli"] = module
    spec.loader.exec_module(module)
    return module
