"""#13.1: adopting the repository (docs/gitops.md, step 1: `make adopt REPO=<owner>/<name>`) keeps
the gitops tests green, and branch protection requires checks that really exist.

The adoption runs on a copy of the work tree; the copy's own Argo CD tests then run against it,
exactly as they would in the adopting team's CI."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, load_all, snapshot_repo


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


def adopt_copy(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """scripts/adopt.py run on a copy of itself and argocd/ (it edits its own checkout)."""
    copy = tmp_path / "copy"
    (copy / "scripts").mkdir(parents=True)
    (copy / "scripts" / "adopt.py").write_bytes((ROOT / "scripts" / "adopt.py").read_bytes())
    shutil.copytree(ROOT / "argocd", copy / "argocd")
    proc = subprocess.run(
        [sys.executable, "scripts/adopt.py", *args],
        cwd=copy,
        capture_output=True,
        text=True,
        check=False,
    )
    return proc, copy


def test_adopt_with_another_repo_url(tmp_path: Path):
    """`REPO_URL`: Argo CD reads the repository from that address (every repoURL and the
    AppProjects' sourceRepos); GitHub still receives the notification for owner/name."""
    url = "git://git.example.internal:9418/ml/fraud-model.git"
    proc, copy = adopt_copy(tmp_path, "acme-corp/fraud-model", "--repo-url", url)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (boot,) = load_all(copy / "argocd" / "bootstrap.yaml")
    assert boot["spec"]["source"]["repoURL"] == url
    (appset,) = load_all(copy / "argocd" / "apps" / "applicationset.yaml")
    assert {s["repoURL"] for s in appset["spec"]["template"]["spec"]["sources"]} == {url}
    assert appset["spec"]["generators"][0]["matrix"]["generators"][1]["git"]["repoURL"] == url
    projects = {p["metadata"]["name"]: p for p in load_all(copy / "argocd/apps/projects.yaml")}
    assert projects["ml-service"]["spec"]["sourceRepos"] == [url]
    text = " ".join(p.read_text() for p in (copy / "argocd").rglob("*.yaml"))
    assert "OWNER" not in text and "github.com/acme-corp" not in text
    assert "repos/acme-corp/fraud-model/dispatches" in text


@pytest.mark.parametrize(
    "url",
    [
        "https://bot:s3cr3t-t0ken@git.example.internal/ml/fraud-model.git",  # a credential
        "https://s3cr3t-t0ken@git.example.internal/ml/fraud-model.git",  # a token as user name
        "https://git.example.internal/ml/fraud-model.git?access_token=s3cr3t-t0ken",
        "ftp://git.example.internal/ml/fraud-model.git",
        "https://git.example.internal:99999/fraud-model.git",
        "https://git.example.internal/ml/fraud model.git",
    ],
)
def test_adopt_refuses_a_bad_repo_url_without_echoing_it(tmp_path: Path, url: str):
    proc, copy = adopt_copy(tmp_path, "acme-corp/fraud-model", "--repo-url", url)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "without credentials" in proc.stderr
    assert "s3cr3t" not in proc.stdout + proc.stderr and url not in proc.stderr
    assert "OWNER/ml-service" in (copy / "argocd" / "bootstrap.yaml").read_text(), "unchanged"
