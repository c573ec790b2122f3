"""#13.1: adopting the repository (docs/gitops.md, step 1: `make adopt REPO=<owner>/<name>`) keeps
the gitops tests green, and branch protection requires checks that really exist.

The adoption runs on a copy of the work tree; the copy's own Argo CD tests then run against it,
exactly as they would in the adopting team's CI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, load_all, snapshot_repo

pytestmark = pytest.mark.gitops


def test_adoption_keeps_the_argocd_tests_green(tmp_path: Path):
    copy = tmp_path / "adopted"
    snapshot_repo(copy)
    for shared in (".venv", ".tools"):
        os.symlink(ROOT / shared, copy / shared)
    proc = subprocess.run(
        ["make", "--no-print-directory", "adopt", "REPO=acme-corp/fraud-model"],
        cwd=copy,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    changed = " ".join(p.read_text() for p in (copy / "argocd").rglob("*.yaml"))
    assert "OWNER" not in changed
    (boot,) = load_all(copy / "argocd" / "bootstrap.yaml")
    assert boot["spec"]["source"]["repoURL"] == "https://github.com/acme-corp/fraud-model.git"
    again = subprocess.run(
        [sys.executable, "scripts/adopt.py", "acme-corp/fraud-model"],
        cwd=copy,
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == 1 and "already adopted" in again.stderr
    tests = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "no:cacheprovider",
            "-m",
            "gitops",
            "tests/gitops/test_gitops_argocd.py",
            "tests/gitops/test_gitops_environments.py",
        ],
        cwd=copy,
        capture_output=True,
        text=True,
        check=False,
        timeout=900,
    )
    assert tests.returncode == 0, tests.stdout[-4000:] + tests.stderr[-2000:]


@pytest.mark.parametrize("bad", ["acme", "acme/ml-service.git", "-x/y", "acme/ml service", "a/b/c"])
def test_adopt_rejects_a_bad_repository_name(bad: str):
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "adopt.py"), bad],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 2 and proc.stderr.startswith("usage:")


def job_check_names(workflow: Path) -> set[str]:
    """The check-run names GitHub gives a workflow's jobs: `name:` if set, else the job id."""
    jobs = yaml.safe_load(workflow.read_text())["jobs"]
    return {job.get("name", job_id) for job_id, job in jobs.items()}


def test_branch_protection_requires_the_ci_jobs_that_exist():
    """The ruleset the docs apply names the ci.yml jobs (`test`, `image`), not a `ci` check that
    no job reports (a required check nobody reports blocks every merge, the bot's PRs included)."""
    ruleset = json.loads((ROOT / ".github" / "rulesets" / "main.json").read_text())
    (rule,) = [r for r in ruleset["rules"] if r["type"] == "required_status_checks"]
    required = {c["context"] for c in rule["parameters"]["required_status_checks"]}
    ci = ROOT / ".github" / "workflows" / "ci.yml"
    assert required == job_check_names(ci) == {"test", "image"}
    # PR-only jobs may be required: every bump/promotion PR runs them.
    docs = (ROOT / "docs" / "gitops.md").read_text()
    assert "gh api -X POST repos/{owner}/{repo}/rulesets --input .github/rulesets/main.json" in docs
    for check in sorted(required):
        assert f"`{check}`" in docs
    assert "`ci` check" not in docs
