"""Fixtures of the gitops tier: the repository's Argo CD objects, the Applications the
ApplicationSet generates, the Argo CD CRDs (from the argo-cd Go module) and the release tool."""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
TOOLS_BIN = ROOT / ".tools" / "bin"
ARGOCD_DIR = ROOT / "argocd"
APPSET = ARGOCD_DIR / "apps" / "applicationset.yaml"
ENVIRONMENTS = ("dev", "staging", "prod")
SETUP_HINT = "run `make setup` (or `make setup-gitops`)"


def tool(name: str) -> str:
    """A pinned tool from .tools/bin (or PATH); a missing tool fails the test, it is not skipped."""
    found = shutil.which(name, path=f"{TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if found is None:
        pytest.fail(f"{name} not found: {SETUP_HINT}")
    return found


def argocd_version() -> str:
    m = re.search(r"^ARGOCD_VERSION\s*:=\s*(\S+)", (ROOT / "mk" / "gitops.mk").read_text(), re.M)
    assert m, "ARGOCD_VERSION missing from mk/gitops.mk"
    return m.group(1)


def load_all(path: Path) -> list[dict]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.fixture(scope="session")
def argocd_crd_dir() -> Path:
    """manifests/crds of the pinned argo-cd Go module, read from the module cache
    (`make setup-gitops` downloads it)."""
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
def generated_apps() -> dict[str, dict]:
    """env -> the Application the ApplicationSet generates for it (tests/gitops/appsetrender)."""
    proc = subprocess.run(
        [tool("appset-render"), str(APPSET)], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    apps = [d for d in yaml.safe_load_all(proc.stdout) if d]
    return {a["metadata"]["labels"]["ml-service.io/environment"]: a for a in apps}


@pytest.fixture(scope="session")
def gitops_cli():
    """scripts/gitops.py imported as a module (its pure functions are unit-tested directly)."""
    spec = importlib.util.spec_from_file_location("gitops_cli", ROOT / "scripts" / "gitops.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["gitops_cli"] = module
    spec.loader.exec_module(module)
    return module
