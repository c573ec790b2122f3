"""A team's repository through its life, on a copy of this one: adopt -> release -> release ->
promote staging -> promote prod -> a values-only change (released, then promoted) -> rollback.

Everything a team runs is real: `make adopt`, `scripts/gitops.py` with its quality gate against the
session's MLflow server (two model versions trained for the story), git with a local bare remote
standing in for GitHub, `helm` for the render check. Only `gh` is the FAKE tests/gitops/fake_gh.py
(the GitHub API cannot be reached from here); merging a pull request moves the remote's main.

Every pull request passes `gitops.py check` (the required check `release-check`) before it merges,
and what a person could push instead is refused by it: a digest edited on the bot's branch, a
lowered model, a hand-written dev -> prod copy, a rollback to a state prod never ran.

At every state the tests that read the state a team's repository moves through (marker
`repo_state`: its release files, the URL argocd/ reads, the ruleset and CODEOWNERS) run inside
the copy, as the team's CI runs them; where a step changes argocd/ (adoption) or an environment's
values, the whole Argo CD and environment modules run there too (every Application rendered and
validated). The chart tier reads charts/ alone, which no step touches, so it is not repeated.
Those nested runs are most of this module's cost; their wall times are printed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import yaml
from support.gitrepo import forget_releases

from .conftest import ROOT, TOOLS_BIN, run_git, snapshot_repo, tool

pytestmark = [pytest.mark.server, pytest.mark.argocd]

GITOPS = "scripts/gitops.py"
REPO = "acme-corp/fraud-model"
IMAGE = f"ghcr.io/{REPO}"
DIGESTS = {1: "sha256:" + "1" * 64, 2: "sha256:" + "2" * 64}
# The story runs without a cluster: a promotion cannot read the source's Argo CD Application.
NO_CLUSTER = "lifecycle test: no Argo CD here"


@dataclass
class Life:
    work: Path  # the team's clone (main checked out)
    remote: Path  # "GitHub"
    env: dict[str, str]
    model: str  # registered model name of this story
    timings: dict[str, float] = field(default_factory=dict)
    seen: dict[str, dict] = field(default_factory=dict)  # release files met on the way

    def run(self, *cmd: str, timeout: int = 300) -> subprocess.CompletedProcess:
        return subprocess.run(
            cmd, cwd=self.work, env=self.env, capture_output=True, text=True, check=False,
            timeout=timeout,
        )  # fmt: skip

    def gitops(self, *args: str) -> str:
        if args[0] == "promote":
            args = (*args, "--skip-rollout-check", NO_CLUSTER)
        proc = self.run(sys.executable, GITOPS, *args)
        assert proc.returncode == 0, f"gitops {args[0]}: {proc.returncode}\n{proc.stderr[-4000:]}"
        return proc.stdout

    def check(self, ref: str) -> subprocess.CompletedProcess:
        """The release-check workflow's command for the pull request of branch `ref`."""
        run_git(self.work, "fetch", "--quiet", "origin")
        return self.run(sys.executable, GITOPS, "check", "--base", "origin/main", "--head",
                        f"origin/{ref}", "--image-repository", IMAGE)  # fmt: skip

    def passes(self, ref: str) -> str:
        proc = self.check(ref)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "FAIL" not in proc.stdout
        return proc.stdout

    def refuses(self, ref: str, *reasons: str) -> str:
        proc = self.check(ref)
        assert proc.returncode == 3, proc.stdout + proc.stderr
        for reason in reasons:
            assert reason in proc.stderr, proc.stderr
        return proc.stderr

    def merge(self, branch: str) -> None:
        """What merging the pull request does on GitHub: main moves to the branch."""
        run_git(self.remote, "update-ref", "refs/heads/main", f"refs/heads/{branch}")
        state = Path(self.env["FAKE_GH_STATE"])
        prs = json.loads(state.read_text())["prs"] if state.exists() else []
        for pr in prs:
            pr["open"] = pr["open"] and pr["head"] != branch
        state.write_text(json.dumps({"prs": prs}))
        self.pull()

    def pull(self) -> None:
        run_git(self.work, "fetch", "--quiet", "origin")
        run_git(self.work, "reset", "--quiet", "--hard", "origin/main")

    def commit(self, message: str, **files: str) -> str:
        for rel, text in files.items():
            (self.work / rel).write_text(text)
        run_git(self.work, "commit", "--quiet", "-am", message)
        run_git(self.work, "push", "--quiet", "origin", "main")
        return run_git(self.work, "rev-parse", "HEAD")

    def hand_pr(self, name: str, path: str, text: str, start: str = "origin/main") -> str:
        """A pull request written by a person: `path` set to `text` on branch hand/<name>."""
        branch = f"hand/{name}"
        run_git(self.work, "checkout", "--quiet", "-B", branch, start)
        (self.work / path).parent.mkdir(parents=True, exist_ok=True)
        (self.work / path).write_text(text)
        run_git(self.work, "add", path)
        run_git(self.work, "commit", "--quiet", "-m", name)
        run_git(self.work, "push", "--quiet", "--force", "origin", branch)
        run_git(self.work, "checkout", "--quiet", "main")
        return branch

    def release(self, env: str, ref: str = "origin/main") -> dict:
        return yaml.safe_load(run_git(self.work, "show", f"{ref}:environments/{env}/release.yaml"))

    def state_tests(self, label: str, *, argocd_or_values: bool = False) -> None:
        """The tests that read the repository's state, run inside the copy (its own pytest)."""
        start = time.monotonic()
        where = ["-m", "repo_state", "tests/gitops"]  # where the marker is used: quick to collect
        if argocd_or_values:  # every test of the modules that read argocd/ and the values
            modules = ("argocd", "environments", "adoption")
            paths = [f"tests/gitops/test_gitops_{m}.py" for m in modules]
            where = [*paths, "-m", "not server", "-k", "not adoption_keeps_the_argocd"]
        proc = self.run(sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *where,
                        timeout=1200)  # fmt: skip
        self.timings[label] = time.monotonic() - start
        assert proc.returncode == 0, f"{label}: -m repo_state in the copy:\n" + (
            proc.stdout[-6000:] + proc.stderr[-2000:]
        )
        assert " passed" in proc.stdout.splitlines()[-1]


@pytest.fixture(scope="module")
def life(mlflow_server, tmp_path_factory):
    from support.mlflow import mlflow_env, train

    tool("helm")
    tool("appset-render")
    tmp = tmp_path_factory.mktemp("life")
    remote, work = tmp / "remote.git", tmp / "work"
    run_git(tmp, "init", "--quiet", "--bare", "-b", "main", str(remote))
    snapshot_repo(work, author=("Team", "team@example.invalid"))
    # The story's registry is the session's MLflow server: pins of another registry cannot stay.
    forget_releases(work)
    run_git(work, "remote", "add", "origin", str(remote))
    run_git(work, "push", "--quiet", "origin", "main")
    for shared in (".venv", ".tools"):
        os.symlink(ROOT / shared, work / shared)
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    (bin_dir / "gh").write_text(
        f"#!{sys.executable}\n" + (ROOT / "tests/gitops/fake_gh.py").read_text()
    )
    (bin_dir / "gh").chmod(0o755)
    env = {
        **mlflow_env(mlflow_server.tracking_uri),
        "PATH": os.pathsep.join([str(bin_dir), str(TOOLS_BIN), os.environ["PATH"]]),
        "FAKE_GH_LOG": str(tmp / "gh.log"),
        "FAKE_GH_STATE": str(tmp / "gh.json"),
        "GIT_TERMINAL_PROMPT": "0",
    }
    for var in ("CI", "MLFLOW_UI_URL", "PYTEST_ADDOPTS", "PYTEST_CURRENT_TEST"):
        env.pop(var, None)
    model = f"life-{uuid.uuid4().hex[:8]}"
    for version in ("1", "2"):  # the same training twice: the gate passes either against the other
        result = train(mlflow_server.tracking_uri, "--model-name", model,
                       output_json=tmp / f"train-{version}.json")  # fmt: skip
        assert result["version"] == version
    story = Life(work, remote, env, model)
    yield story
    width = max(map(len, story.timings), default=0)
    print("\nstate tests inside the copy (wall time):")
    for label, seconds in story.timings.items():
        print(f"  {label:<{width}}  {seconds:6.1f} s")
    print(f"  {'total':<{width}}  {sum(story.timings.values()):6.1f} s")


def release_args(life: Life, version: int) -> list[str]:
    head = run_git(life.work, "rev-parse", "origin/main")
    return ["release", "--image-repository", IMAGE, "--tag", head, "--digest", DIGESTS[version],
            "--model-name", life.model, "--model-version", str(version)]  # fmt: skip


def as_text(doc: dict) -> str:
    return yaml.safe_dump(doc, sort_keys=False)


def test_adopted(life: Life):
    proc = life.run("make", "--no-print-directory", "adopt", f"REPO={REPO}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    life.commit(f"Adopt: Argo CD reads {REPO}")
    again = life.run("make", "--no-print-directory", "adopt", f"REPO={REPO}")
    assert again.returncode == 0 and "already adopted" in again.stdout
    assert run_git(life.work, "status", "--porcelain") == ""
    life.state_tests("adopted", argocd_or_values=True)


def test_first_release(life: Life):
    life.gitops(*release_args(life, 1))
    report = life.passes("gitops/dev")
    assert "quality gate for dev" in report and "records this state" in report
    # The digest edited on the bot's branch (a push onto gitops/dev): not what the gate admitted.
    edited = life.release("dev", "origin/gitops/dev")
    edited["image"]["digest"] = "sha256:" + "f" * 64
    branch = life.hand_pr("edited-digest", "environments/dev/release.yaml", as_text(edited),
                          start="origin/gitops/dev")  # fmt: skip
    life.refuses(branch, "FAIL the registry records this state")
    life.merge("gitops/dev")
    life.seen["dev v1"] = life.release("dev")
    assert life.seen["dev v1"]["model"]["version"] == "1"
    life.state_tests("released once")


def test_second_release_of_newer_code(life: Life):
    code = "app/ml_service/training/train.py"
    life.commit("train: a code change", **{code: (life.work / code).read_text() + "\n# changed\n"})
    life.gitops(*release_args(life, 2))
    life.passes("gitops/dev")
    life.merge("gitops/dev")
    # A person pins v1 again with the newer code: lowered, and the gate never admitted that state.
    lowered = life.release("dev")
    lowered["model"]["version"] = "1"
    branch = life.hand_pr("lowered", "environments/dev/release.yaml", as_text(lowered))
    life.refuses(branch, "model version 1 < 2", "FAIL the registry records this state")
    life.state_tests("released twice")


def test_promoted_to_staging(life: Life):
    life.gitops("promote", "dev", "staging")
    life.passes("gitops/staging")
    # dev's pins copied to prod by hand: staging is skipped and prod's gate never ran.
    branch = life.hand_pr("dev-to-prod", "environments/prod/release.yaml",
                          (life.work / "environments/dev/release.yaml").read_text())  # fmt: skip
    life.refuses(branch, "FAIL the promotion copies what staging runs now",
                 "FAIL quality gate for prod")  # fmt: skip
    life.merge("gitops/staging")
    assert life.release("staging") == life.release("dev")
    life.state_tests("promoted to staging")


def test_promoted_to_prod(life: Life):
    life.gitops("promote", "staging", "prod")
    life.passes("gitops/prod")
    edited = life.release("prod", "origin/gitops/prod")
    edited["image"]["digest"] = DIGESTS[1]
    branch = life.hand_pr("prod-digest", "environments/prod/release.yaml", as_text(edited),
                          start="origin/gitops/prod")  # fmt: skip
    life.refuses(branch, "FAIL the promotion copies what staging runs now")
    life.merge("gitops/prod")
    assert life.release("prod") == life.release("staging") == life.release("dev")
    life.state_tests("promoted to prod")


def test_values_only_change_travels_dev_staging_prod(life: Life):
    """A change to prod's values alone: released without training or building (the image and
    model dev runs, the new commit's chart and values), then promoted like any release."""
    before = life.seen["prod before the values change"] = life.release("prod")
    values = (life.work / "environments/prod/values.yaml").read_text()
    assert "  maxReplicas: 10\n" in values
    values = values.replace("  maxReplicas: 10\n", "  maxReplicas: 12\n")
    change = life.commit("prod: up to 12 replicas", **{"environments/prod/values.yaml": values})
    life.gitops("release", "--values-only", "--revision", change)
    life.passes("gitops/dev")
    life.merge("gitops/dev")
    for source, target in (("dev", "staging"), ("staging", "prod")):
        life.gitops("promote", source, target)
        life.passes(f"gitops/{target}")
        life.merge(f"gitops/{target}")
    after = life.release("prod")
    assert after["revision"] == change
    assert (after["image"], after["model"]) == (before["image"], before["model"])
    docs = yaml.safe_load_all(life.gitops("render", "prod"))
    (hpa,) = [d for d in docs if d and d["kind"] == "HorizontalPodAutoscaler"]
    assert hpa["spec"]["maxReplicas"] == 12
    life.state_tests("values released to prod", argocd_or_values=True)


def test_rollback(life: Life):
    """prod goes back to the state it ran before the values change; a 'rollback' to a state
    prod never ran (dev's first release) is refused."""
    life.gitops("rollback", "prod")
    assert "a rollback to the state prod ran at" in life.passes("gitops/prod")
    never = life.seen["dev v1"]
    branch = life.hand_pr("fake-rollback", "environments/prod/release.yaml", as_text(never))
    life.refuses(branch, "FAIL")
    life.merge("gitops/prod")
    assert life.release("prod") == life.seen["prod before the values change"]
    life.state_tests("prod rolled back")
