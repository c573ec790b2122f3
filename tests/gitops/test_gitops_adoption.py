"""Adopting the repository (docs/gitops.md, step 1: `make adopt REPO=<owner>/<name>`) keeps
the gitops tests green, and branch protection requires checks that really exist.

The adoption runs on a copy of the work tree; the copy's own Argo CD tests then run against it,
exactly as they would in the adopting team's CI."""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, load_all, snapshot_repo


def adopt_module():
    spec = importlib.util.spec_from_file_location("adopt_cli", ROOT / "scripts" / "adopt.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.argocd
def test_adoption_keeps_the_argocd_tests_green(tmp_path: Path):
    """`make adopt` on a copy of this work tree, whatever it reads now (the template's
    placeholder or an earlier adoption), then the copy's own Argo CD tests."""
    copy = tmp_path / "adopted"
    snapshot_repo(copy)
    for shared in (".venv", ".tools"):
        os.symlink(ROOT / shared, copy / shared)
    before_url, before_repo = adopt_module().current(ROOT)
    proc = subprocess.run(
        ["make", "--no-print-directory", "adopt", "REPO=acme-corp/fraud-model"],
        cwd=copy,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (boot,) = load_all(copy / "argocd" / "bootstrap.yaml")
    assert boot["spec"]["source"]["repoURL"] == "https://github.com/acme-corp/fraud-model.git"
    text = " ".join(p.read_text() for p in (copy / "argocd").rglob("*.yaml"))
    if before_url != boot["spec"]["source"]["repoURL"]:
        assert before_url not in text, "the previous URL is gone everywhere"
    if before_repo != "acme-corp/fraud-model":
        assert f"/repos/{before_repo}/" not in text
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


def test_adopt_is_idempotent_and_can_re_point(tmp_path: Path):
    """The same adoption twice changes nothing the second time and succeeds (a script or a test
    may run it on a tree that is already adopted); another one re-points every place."""
    proc, copy = adopt_copy(tmp_path, "acme-corp/fraud-model")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = {p: p.read_bytes() for p in (copy / "argocd").rglob("*.yaml")}
    files[copy / ".github" / "CODEOWNERS"] = (copy / ".github" / "CODEOWNERS").read_bytes()
    assert code_owners(copy) == code_owners(ROOT, "@acme-corp")
    places = b" ".join(files.values()).count(b"https://github.com/acme-corp/fraud-model.git")
    assert places >= 5
    again = run_adopt(copy, "acme-corp/fraud-model")
    assert again.returncode == 0, again.stdout + again.stderr
    assert "already adopted" in again.stdout
    assert {p: p.read_bytes() for p in files} == files
    previous = "https://github.com/acme-corp/fraud-model.git"
    for repo, args, url in (
        ("acme-corp/fraud-model", ("--repo-url", "ssh://git@git.example.internal/ml/fm.git"),
         "ssh://git@git.example.internal/ml/fm.git"),
        ("other-org/fraud", (), "https://github.com/other-org/fraud.git"),
    ):  # fmt: skip
        proc = run_adopt(copy, repo, *args)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert adopt_module().current(copy) == (url, repo)
        text = " ".join(p.read_text() for p in (copy / "argocd").rglob("*.yaml"))
        assert text.count(url) == places and previous not in text
        previous = url
    assert code_owners(copy) == code_owners(ROOT, "@other-org")


def rules(codeowners: Path) -> dict[str, list[str]]:
    """pattern -> its code owners."""
    lines = [ln.split() for ln in codeowners.read_text().splitlines()]
    return {words[0]: words[1:] for words in lines if words and not words[0].startswith("#")}


def code_owners(tree: Path, owner: str = "") -> set[str]:
    """Every code owner `tree`'s CODEOWNERS names, its teams moved to `owner` if given (what
    adopting a repository of `owner` makes of them: users stay)."""
    who = {w for ws in rules(tree / ".github" / "CODEOWNERS").values() for w in ws}
    return {f"{owner}/{w.split('/')[1]}" if owner and "/" in w else w for w in who}


def test_adopt_names_the_code_owners_of_a_personal_account(tmp_path: Path):
    """A personal account has no teams: `make adopt ... CODE_OWNERS=...` makes the users it names
    the owners of every rule, idempotently; a later adoption without it keeps them."""
    make = subprocess.run(["make", "-n", "adopt", "REPO=alice/fm", "CODE_OWNERS=@alice @bob-2"],
                          cwd=ROOT, capture_output=True, text=True, check=True)  # fmt: skip
    assert '--code-owners "@alice @bob-2"' in make.stdout
    proc, copy = adopt_copy(tmp_path, "alice/fraud-model", "--code-owners", "@alice @bob-2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    codeowners = copy / ".github" / "CODEOWNERS"
    template = rules(ROOT / ".github" / "CODEOWNERS")
    assert rules(codeowners) == {pattern: ["@alice", "@bob-2"] for pattern in template}
    before = codeowners.read_bytes()
    again = run_adopt(copy, "alice/fraud-model", "--code-owners", "@alice @bob-2")
    assert again.returncode == 0 and "already adopted" in again.stdout
    assert codeowners.read_bytes() == before
    moved = run_adopt(copy, "alice/fraud", "--code-owners", "@alice,@alice/approvers")
    assert moved.returncode == 0, moved.stdout + moved.stderr
    assert set(map(tuple, rules(codeowners).values())) == {("@alice", "@alice/approvers")}
    assert run_adopt(copy, "bob-2/fraud").returncode == 0
    assert set(map(tuple, rules(codeowners).values())) == {("@alice", "@bob-2/approvers")}


@pytest.mark.parametrize(
    "bad", ["alice", "@", "@-x", "@alice/", "@acme-corp/approvers", "@a;rm", ""]
)
def test_adopt_refuses_bad_code_owners(tmp_path: Path, bad: str):
    """Users, or teams of the repository's owner (a team of another organisation owns nothing
    here): a usage error, and nothing changed."""
    proc, copy = adopt_copy(tmp_path, "alice/fraud-model", "--code-owners", bad)
    assert proc.returncode == 2 and proc.stderr.startswith("usage: --code-owners")
    assert (copy / ".github" / "CODEOWNERS").read_bytes() == (
        ROOT / ".github" / "CODEOWNERS"
    ).read_bytes()


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


def ruleset() -> dict:
    return json.loads((ROOT / ".github" / "rulesets" / "main.json").read_text())


@pytest.mark.repo_state
def test_branch_protection_requires_every_check_that_runs_on_a_pull_request():
    """The ruleset names exactly the jobs of the workflows every pull request runs (ci.yml and
    release-check.yml), reported by GitHub Actions: a required check nobody reports blocks every
    merge; a job that runs but is not required guards nothing. A job skipped by its `if` (the
    suite on a release PR, the checker on a code PR) reports success."""
    (rule,) = [r for r in ruleset()["rules"] if r["type"] == "required_status_checks"]
    checks = rule["parameters"]["required_status_checks"]
    required = {c["context"] for c in checks}
    on_pr = set()
    for path in (ROOT / ".github" / "workflows").glob("*.yml"):
        doc = yaml.safe_load(path.read_text())
        if "pull_request" in doc[True]:
            on_pr |= job_check_names(path)
    assert required == on_pr
    assert {"release-check", "lint-unit-chart-gitops", "cluster"} <= required
    assert {c.get("integration_id") for c in checks} == {15368}, "only GitHub Actions reports them"
    docs = (ROOT / "docs" / "gitops.md").read_text()
    assert "gh api -X POST repos/{owner}/{repo}/rulesets --input .github/rulesets/main.json" in docs
    for check in sorted(required):
        assert f"`{check}`" in docs


@pytest.mark.repo_state
def test_reviews_guard_what_runs_and_admins_can_bypass():
    """Nobody merges their own push to a release file: the last push needs someone else's
    approval, and a release approver's (CODEOWNERS: users, or teams of the repository's owner) for
    environments/ and the workflows. Admins can bypass the ruleset (a repository that nobody can
    merge into is a dead end)."""
    rs = ruleset()
    (pr,) = [r["parameters"] for r in rs["rules"] if r["type"] == "pull_request"]
    assert pr["required_approving_review_count"] >= 1
    assert pr["require_last_push_approval"] is True
    assert pr["require_code_owner_review"] is True
    assert pr["dismiss_stale_reviews_on_push"] is True
    # actor 5 of type RepositoryRole is the repository's admin role
    assert rs["bypass_actors"] == [
        {"actor_id": 5, "actor_type": "RepositoryRole", "bypass_mode": "always"}
    ]
    owners = rules(ROOT / ".github" / "CODEOWNERS")
    assert {"/environments/", "/.github/"} <= set(owners)
    _, repo = adopt_module().current(ROOT)
    for who in owners.values():
        assert who and all(re.fullmatch(r"@[\w-]+(/[\w.-]+)?", w) for w in who), who
        teams = [w for w in who if "/" in w]
        assert all(w.startswith(f"@{repo.split('/')[0]}/") for w in teams), "the owner's teams"


def run_adopt(copy: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "scripts/adopt.py", *args],
        cwd=copy,
        capture_output=True,
        text=True,
        check=False,
    )


def adopt_copy(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess, Path]:
    """scripts/adopt.py run on a copy of itself and argocd/ (it edits its own checkout)."""
    copy = tmp_path / "copy"
    (copy / "scripts").mkdir(parents=True)
    (copy / "scripts" / "adopt.py").write_bytes((ROOT / "scripts" / "adopt.py").read_bytes())
    shutil.copytree(ROOT / "argocd", copy / "argocd")
    (copy / ".github").mkdir()
    shutil.copy2(ROOT / ".github" / "CODEOWNERS", copy / ".github" / "CODEOWNERS")
    return run_adopt(copy, *args), copy


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
    assert "github.com/acme-corp" not in text
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
    assert {p: p.read_bytes() for p in (copy / "argocd").rglob("*.yaml")} == {
        p: (ROOT / p.relative_to(copy)).read_bytes() for p in (copy / "argocd").rglob("*.yaml")
    }, "nothing changed"
