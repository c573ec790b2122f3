"""scripts/gitops.py release / promote on a real temporary git repository with a local bare remote.

The GitHub API cannot be reached from here, so `gh` is tests/gitops/fake_gh.py on PATH: it records
its arguments and keeps the open pull requests in a file. Everything else is real: git, the
worktree, the force-push to the bare remote, and the `helm template` render check of the changed
environment (chart at the pinned commit). These tests are about the git mechanics: no MLflow
registry runs here, so they pass `--override-quality-gate` (the gate then reports it could not run,
and the PR says so); test_gitops_quality_gate.py runs the gate against a real MLflow server.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, TOOLS_BIN, run_git, tool

GITOPS = ROOT / "scripts" / "gitops.py"
DIGEST_A = "sha256:" + "a" * 64
DIGEST_B = "sha256:" + "b" * 64
REPOSITORY = "ghcr.io/owner/ml-service"
NO_REGISTRY = "mechanics test: no MLflow registry here"
NO_CLUSTER = "mechanics test: no Argo CD here"


@dataclass
class Sandbox:
    work: Path
    remote: Path
    env: dict[str, str]
    gh_log: Path
    gh_state: Path

    def gitops(
        self, *args: str, override: bool = True, rollout_check: bool = False
    ) -> subprocess.CompletedProcess:
        if override and args and args[0] in ("release", "promote"):
            args = (*args, "--override-quality-gate", NO_REGISTRY)
        if not rollout_check and args and args[0] == "promote":
            args = (*args, "--skip-rollout-check", NO_CLUSTER)
        return subprocess.run(
            [sys.executable, str(GITOPS), "-C", str(self.work), *args],
            capture_output=True,
            text=True,
            env=self.env,
            check=False,
            timeout=180,
        )

    def release(self, version: str, *extra: str, tag: str = "", digest: str = DIGEST_A, **kw):
        return self.gitops(
            "release",
            "--image-repository",
            REPOSITORY,
            "--tag",
            tag or self.head("main"),
            "--digest",
            digest,
            "--model-version",
            version,
            *extra,
            **kw,
        )

    def head(self, branch: str) -> str:
        return run_git(self.remote, "rev-parse", f"refs/heads/{branch}")

    def remote_has(self, branch: str) -> bool:
        return bool(run_git(self.remote, "branch", "--list", branch))

    def gh_calls(self) -> list[list[str]]:
        if not self.gh_log.exists():
            return []
        return [json.loads(line) for line in self.gh_log.read_text().splitlines()]

    def prs(self) -> list[dict]:
        return json.loads(self.gh_state.read_text())["prs"] if self.gh_state.exists() else []

    def merge(self, branch: str) -> None:
        """What merging the PR does on GitHub: main moves to the branch, the PR closes."""
        run_git(self.remote, "update-ref", "refs/heads/main", f"refs/heads/{branch}")
        prs = self.prs()
        for pr in prs:
            if pr["head"] == branch:
                pr["open"] = False
        self.gh_state.write_text(json.dumps({"prs": prs}))

    def sync_work(self) -> None:
        """The caller's checkout follows main (as `git pull` would)."""
        run_git(self.work, "fetch", "--quiet", "origin", "main")
        run_git(self.work, "reset", "--quiet", "--hard", "origin/main")

    def commit_on_main(self, message: str, **files: str) -> str:
        self.sync_work()
        for rel, text in files.items():
            (self.work / rel).write_text(text)
        run_git(self.work, "commit", "--quiet", "-am", message)
        run_git(self.work, "push", "--quiet", "origin", "main")
        return self.head("main")

    def file_on(self, ref: str, path: str) -> str:
        return run_git(self.remote, "show", f"{ref}:{path}")


def make_sandbox(tmp_path: Path) -> Sandbox:
    tool("helm")  # the render check is real
    remote, work, bin_dir = tmp_path / "remote.git", tmp_path / "work", tmp_path / "bin"
    run_git(tmp_path, "init", "--quiet", "--bare", "-b", "main", str(remote))
    run_git(tmp_path, "init", "--quiet", "-b", "main", str(work))
    for name in ("charts", "environments", "dashboards"):
        shutil.copytree(ROOT / name, work / name, symlinks=True)
    for stale in work.glob("environments/*/release.yaml"):
        stale.unlink()
    run_git(work, "config", "user.name", "Test")
    run_git(work, "config", "user.email", "test@example.invalid")
    run_git(work, "add", "-A")
    run_git(work, "commit", "--quiet", "-m", "initial")
    run_git(work, "remote", "add", "origin", str(remote))
    run_git(work, "push", "--quiet", "origin", "main")

    bin_dir.mkdir()
    gh = bin_dir / "gh"
    gh.write_text(f"#!{sys.executable}\n" + (Path(__file__).parent / "fake_gh.py").read_text())
    gh.chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{TOOLS_BIN}{os.pathsep}{os.environ['PATH']}",
        "FAKE_GH_LOG": str(tmp_path / "gh.log"),
        "FAKE_GH_STATE": str(tmp_path / "gh.json"),
        "GIT_TERMINAL_PROMPT": "0",
    }
    for var in ("CI", "MLFLOW_TRACKING_URI"):
        env.pop(var, None)
    return Sandbox(work, remote, env, tmp_path / "gh.log", tmp_path / "gh.json")


@pytest.fixture
def sandbox(tmp_path: Path) -> Sandbox:
    return make_sandbox(tmp_path)


def ok(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def changed_lines(sb: Sandbox, base: str, branch: str, path: str) -> list[str]:
    diff = run_git(sb.remote, "diff", "-U0", base, branch, "--", path)
    return [
        line
        for line in diff.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]


def comments(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.lstrip().startswith("#")]


def release_doc(sb: Sandbox, ref: str, env: str) -> dict:
    return yaml.safe_load(sb.file_on(ref, f"environments/{env}/release.yaml"))


def test_first_release_creates_the_release_file(sandbox: Sandbox, gitops_cli):
    base = sandbox.head("main")
    out = ok(sandbox.release("2"))
    assert "opened a pull request" in out

    assert sandbox.remote_has("gitops/dev")
    branch_head = sandbox.head("gitops/dev")
    assert run_git(sandbox.remote, "rev-parse", f"{branch_head}^") == base, "one commit on main"
    files = run_git(sandbox.remote, "diff", "--name-status", base, branch_head).splitlines()
    assert files == ["A\tenvironments/dev/release.yaml"]
    text = sandbox.file_on("gitops/dev", "environments/dev/release.yaml")
    assert comments(text) == comments(gitops_cli.RELEASE_TEMPLATE.format(env="dev"))
    assert yaml.safe_load(text) == {
        "revision": base,
        "image": {"repository": REPOSITORY, "tag": base, "digest": DIGEST_A},
        "model": {"name": "ml-service", "version": "2"},
    }

    subject = run_git(sandbox.remote, "log", "-1", "--format=%s", branch_head)
    assert subject == f"release(dev): image {base[:12]}, model ml-service v2"
    creates = [c for c in sandbox.gh_calls() if c[:2] == ["pr", "create"]]
    assert len(creates) == 1
    assert creates[0][creates[0].index("--head") + 1] == "gitops/dev"
    assert creates[0][creates[0].index("--base") + 1] == "main"
    body = sandbox.prs()[0]["body"]
    assert "Quality gate: ⚠️ overridden" in body and NO_REGISTRY in body
    assert "MLFLOW_TRACKING_URI is not set" in body

    # The caller's checkout is untouched: still on main, clean, no leftover worktree.
    assert run_git(sandbox.work, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert run_git(sandbox.work, "status", "--porcelain") == ""
    assert len(run_git(sandbox.work, "worktree", "list").splitlines()) == 1


def test_next_release_changes_only_the_values(sandbox: Sandbox):
    tag = sandbox.head("main")
    ok(sandbox.release("2", tag=tag))
    sandbox.merge("gitops/dev")
    base = sandbox.head("main")
    before = sandbox.file_on("main", "environments/dev/release.yaml")
    ok(sandbox.release("3", tag=tag, digest=DIGEST_B))
    # Only the two changed scalars differ; comments, key order and quoting are the file's own.
    assert sorted(changed_lines(sandbox, base, "gitops/dev", "environments/dev/release.yaml")) == [
        f'+  digest: "{DIGEST_B}"',
        '+  version: "3"',
        f'-  digest: "{DIGEST_A}"',
        '-  version: "2"',
    ]
    assert comments(sandbox.file_on("gitops/dev", "environments/dev/release.yaml")) == comments(
        before
    )


def test_release_is_idempotent(sandbox: Sandbox):
    ok(sandbox.release("2"))
    first = sandbox.head("gitops/dev")
    out = ok(sandbox.release("2"))
    assert "nothing pushed" in out
    assert sandbox.head("gitops/dev") == first, "an identical release must not rewrite the branch"
    assert len(sandbox.prs()) == 1
    assert [c[:2] for c in sandbox.gh_calls()].count(["pr", "create"]) == 1


def test_newer_release_updates_the_same_pr(sandbox: Sandbox):
    ok(sandbox.release("2"))
    ok(sandbox.release("3", digest=DIGEST_B))
    assert len(sandbox.prs()) == 1, "one open PR per environment"
    edits = [c for c in sandbox.gh_calls() if c[:2] == ["pr", "edit"]]
    assert edits and edits[-1][2] == "1"
    assert "model ml-service v3" in sandbox.prs()[0]["title"]
    # Force-pushed: still a single commit on top of main, now carrying version 3.
    head = sandbox.head("gitops/dev")
    assert run_git(sandbox.remote, "rev-parse", f"{head}^") == sandbox.head("main")
    assert 'version: "3"' in sandbox.file_on("gitops/dev", "environments/dev/release.yaml")


def test_noop_and_downgrade_are_refused_unless_forced(sandbox: Sandbox):
    ok(sandbox.release("5"))
    sandbox.merge("gitops/dev")
    tag = release_doc(sandbox, "main", "dev")["image"]["tag"]

    noop = sandbox.release("5", tag=tag)
    assert noop.returncode == 3 and "nothing to do" in noop.stderr

    down = sandbox.release("4", tag=tag)
    assert down.returncode == 3 and "downgrade" in down.stderr
    assert "model version 4 < 5" in down.stderr
    main_before = sandbox.head("main")
    assert sandbox.head("gitops/dev") == main_before, "a refused release pushes nothing"

    ok(sandbox.release("4", "--force", tag=tag))
    assert 'version: "4"' in sandbox.file_on("gitops/dev", "environments/dev/release.yaml")


def test_older_commit_is_a_downgrade(sandbox: Sandbox):
    old = sandbox.head("main")
    values = (ROOT / "environments/dev/values.yaml").read_text()
    new = sandbox.commit_on_main("newer", **{"environments/dev/values.yaml": values + "# newer\n"})
    ok(sandbox.release("2", tag=new))
    sandbox.merge("gitops/dev")

    down = sandbox.release("3", tag=old)
    assert down.returncode == 3 and f"commit {old[:12]} is older than {new[:12]}" in down.stderr


def test_without_a_registry_the_gate_stops_the_release(sandbox: Sandbox):
    """No MLflow, no override: the gate cannot run, nothing is pushed."""
    proc = sandbox.release("2", override=False)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "quality gate could not run: MLFLOW_TRACKING_URI is not set" in proc.stderr
    assert not sandbox.remote_has("gitops/dev") and sandbox.prs() == []


def test_promote_copies_release_state_only(sandbox: Sandbox):
    ok(sandbox.release("7"))
    sandbox.merge("gitops/dev")
    base = sandbox.head("main")

    out = ok(sandbox.gitops("promote", "dev", "staging"))
    assert "opened a pull request" in out
    files = run_git(sandbox.remote, "diff", "--name-only", base, "gitops/staging").splitlines()
    assert files == ["environments/staging/release.yaml"], "static settings never move"
    assert release_doc(sandbox, "gitops/staging", "staging") == release_doc(sandbox, "main", "dev")
    title = sandbox.prs()[-1]["title"]
    assert title.startswith("promote(dev->staging):") and "v7" in title

    # Already identical: refused as a no-op once merged.
    sandbox.merge("gitops/staging")
    again = sandbox.gitops("promote", "dev", "staging")
    assert again.returncode == 3 and "nothing to do" in again.stderr


def test_promotion_needs_to_see_the_source_run_its_release(sandbox: Sandbox, tmp_path: Path):
    """What is promoted must have proven itself where it runs: without a cluster to read the
    source environment's Argo CD Application from, the promotion is refused and nothing pushed;
    --skip-rollout-check ships it with the reason in the pull request."""
    ok(sandbox.release("7"))
    sandbox.merge("gitops/dev")
    nowhere = tmp_path / "kubeconfig"
    nowhere.write_text("apiVersion: v1\nkind: Config\nclusters: []\ncontexts: []\nusers: []\n")
    blind = Sandbox(sandbox.work, sandbox.remote, {**sandbox.env, "KUBECONFIG": str(nowhere)},
                    sandbox.gh_log, sandbox.gh_state)  # fmt: skip
    proc = blind.gitops("promote", "dev", "staging", rollout_check=True)
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "cannot see whether dev runs its release fully and healthily" in proc.stderr
    assert "--skip-rollout-check" in proc.stderr
    assert not sandbox.remote_has("gitops/staging")
    ok(sandbox.gitops("promote", "dev", "staging"))
    assert (
        f"**Not checked** that `dev` runs it fully promoted and healthy: {NO_CLUSTER}"
        in (sandbox.prs()[-1]["body"])
    )


def test_rollout_problems_read_the_application(gitops_cli):
    """The source's Application as Argo CD writes it: the pinned state Synced and Healthy passes;
    another state, OutOfSync, or a Rollout still on its steps or aborted does not, and says why."""
    state = gitops_cli.ReleaseState("a" * 40, REPOSITORY, "a" * 40, DIGEST_A, "ml-service", "7")

    def app(sync="Synced", health="Healthy", version="7", rollout=None):
        values = {**state.values_object(), "model": {"name": "ml-service", "version": version}}
        resources = (
            [{"kind": "Rollout", "name": "ml-service", "health": rollout}] if rollout else []
        )
        return {"status": {
            "sync": {"status": sync, "comparedTo": {"sources": [
                {"targetRevision": state.revision, "helm": {"valuesObject": values}}]}},
            "health": {"status": health}, "resources": resources}}  # fmt: skip

    problems = gitops_cli.rollout_problems
    assert problems(app(), "staging", state) == []
    assert problems(app(version="6"), "staging", state) == [
        "Argo CD has not synced staging to what its release.yaml pins yet"
    ]
    assert problems(app(sync="OutOfSync"), "staging", state) == ["staging is OutOfSync"]
    aborted = {
        "status": "Degraded",
        "message": 'RolloutAborted: Metric "class-share" assessed Failed',
    }
    assert problems(app(health="Degraded", rollout=aborted), "staging", state) == [
        'staging is Degraded (Rollout ml-service: RolloutAborted: Metric "class-share" assessed '
        "Failed)"
    ]
    # Argo CD 3 (resource health in the resource tree): the Application's own message
    tree = app(health="Degraded")
    tree["status"]["health"]["message"] = "Caused by argoproj.io/Rollout:ml-service-staging/x"
    assert problems(tree, "staging", state) == [
        "staging is Degraded (Caused by argoproj.io/Rollout:ml-service-staging/x)"
    ]
    stepping = {"status": "Progressing", "message": "more replicas need to be updated"}
    assert problems(app(health="Progressing", rollout=stepping), "staging", state) == [
        "staging is Progressing (Rollout ml-service: more replicas need to be updated)"
    ]


def test_promotion_never_skips_an_environment(sandbox: Sandbox):
    """Dev -> prod is refused, --force or not; backwards needs --force (a rollback)."""
    ok(sandbox.release("2"))
    sandbox.merge("gitops/dev")
    for extra in ((), ("--force",)):
        skip = sandbox.gitops("promote", "dev", "prod", *extra)
        assert skip.returncode == 3, skip.stdout + skip.stderr
        assert "dev -> prod skips staging" in skip.stderr
    assert not sandbox.remote_has("gitops/prod")
    nothing = sandbox.gitops("promote", "staging", "prod")
    assert nothing.returncode == 3 and "nothing is released to staging" in nothing.stderr


def test_promotion_to_prod_and_backwards(sandbox: Sandbox):
    ok(sandbox.release("2"))
    sandbox.merge("gitops/dev")
    ok(sandbox.gitops("promote", "dev", "staging"))
    sandbox.merge("gitops/staging")
    ok(sandbox.gitops("promote", "staging", "prod", "--no-pr"))
    assert sandbox.remote_has("gitops/prod")
    assert not any(c[:2] == ["pr", "create"] and "gitops/prod" in c for c in sandbox.gh_calls())
    body = run_git(sandbox.remote, "log", "-1", "--format=%b", "gitops/prod")
    assert "champion" in body and "synced and healthy" in body

    back = sandbox.gitops("promote", "prod", "dev")
    assert back.returncode == 3 and "backwards" in back.stderr


def test_chart_changes_are_promoted_not_tracked(sandbox: Sandbox):
    """A chart change reaches an environment with its release/promotion, never by merely
    landing on main: each environment renders the chart at the commit its release.yaml pins."""
    ok(sandbox.release("2"))
    sandbox.merge("gitops/dev")
    ok(sandbox.gitops("promote", "dev", "staging"))
    sandbox.merge("gitops/staging")
    values = (sandbox.work / "charts/ml-service/values.yaml").read_text()
    assert "\npodAnnotations: {}\n" in values
    change = sandbox.commit_on_main(
        "chart: annotate pods",
        **{
            "charts/ml-service/values.yaml": values.replace(
                "\npodAnnotations: {}\n", '\npodAnnotations:\n  example.com/chart-change: "1"\n'
            )
        },
    )
    ok(sandbox.release("3", tag=change))
    sandbox.merge("gitops/dev")
    sandbox.sync_work()

    def annotated(env: str) -> bool:
        docs = yaml.safe_load_all(ok(sandbox.gitops("render", env)))
        # the workload: a Deployment, or a Rollout where the environment delivers by canary
        (deploy,) = [d for d in docs if d and d["kind"] in ("Deployment", "Rollout")]
        annotations = deploy["spec"]["template"]["metadata"].get("annotations") or {}
        return annotations.get("example.com/chart-change") == "1"

    assert annotated("dev") and not annotated("staging"), "staging must wait for its promotion"
    ok(sandbox.gitops("promote", "dev", "staging"))
    body = sandbox.prs()[-1]["body"]
    assert "chart: annotate pods" in body, "the promotion PR lists the chart changes it carries"
    sandbox.merge("gitops/staging")
    sandbox.sync_work()
    assert annotated("staging")


def test_promotion_that_does_not_render_is_refused(sandbox: Sandbox):
    # staging's static values carry a key the chart's schema rejects, in the commit dev runs (dev
    # renders): promoted to staging, that commit's staging values would not render.
    values = (ROOT / "environments/staging/values.yaml").read_text()
    typo = sandbox.commit_on_main(
        "typo", **{"environments/staging/values.yaml": values + "replicaCont: 3\n"}
    )
    ok(sandbox.release("2", tag=typo))
    sandbox.merge("gitops/dev")

    proc = sandbox.gitops("promote", "dev", "staging")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert "does not render" in proc.stderr and "replicaCont" in proc.stderr
    assert not sandbox.remote_has("gitops/staging")
    assert [pr["head"] for pr in sandbox.prs()] == ["gitops/dev"]


@pytest.mark.parametrize(
    ("flag", "value"),
    [
        ("--digest", "sha256:xyz"),
        ("--model-version", "007"),
        ("--model-version", "latest"),
        ("--tag", "bad tag"),
        ("--image-repository", "GHCR.io/Owner/x"),
        ("--revision", "main"),
    ],
)
def test_bad_input_is_rejected_without_echo(sandbox: Sandbox, flag: str, value: str):
    args = {
        "--image-repository": REPOSITORY,
        "--tag": "a" * 40,
        "--digest": DIGEST_A,
        "--model-version": "2",
        flag: value,
    }
    proc = sandbox.gitops("release", *[x for kv in args.items() for x in kv])
    assert proc.returncode == 2
    assert proc.stderr.startswith("gitops: invalid ")
    assert value not in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not sandbox.remote_has("gitops/dev")


def test_without_gh_the_branch_is_still_pushed(sandbox: Sandbox):
    path = os.pathsep.join([str(TOOLS_BIN), str(Path(sys.executable).parent), "/usr/bin", "/bin"])
    assert shutil.which("gh", path=path) is None, "a real gh is installed: this test needs none"
    sandbox.env = {**sandbox.env, "PATH": path}
    out = ok(sandbox.release("2"))
    assert "gh not found" in out
    assert sandbox.remote_has("gitops/dev")
    sandbox.env = {**sandbox.env, "CI": "true"}
    ci = sandbox.release("3", digest=DIGEST_B)
    assert ci.returncode == 2 and "gh not found on PATH in CI" in ci.stderr


def test_release_files_round_trip_byte_for_byte(sandbox: Sandbox, gitops_cli):
    """Loading and dumping a written release file gives the same bytes: edits never reformat."""
    ok(sandbox.release("2"))
    text = sandbox.file_on("gitops/dev", "environments/dev/release.yaml") + "\n"
    doc, state = gitops_cli.load_release(text, "dev")
    assert gitops_cli.dump(doc) == text
    state.validate()


def test_values_only_release_keeps_image_and_model(sandbox: Sandbox):
    """A change to environments/ values alone ships as a release of that commit with the image
    and model the environment runs: nothing is retrained or rebuilt."""
    refused = sandbox.gitops("release", "--values-only", "--revision", sandbox.head("main"))
    assert refused.returncode == 3 and "nothing is released to dev yet" in refused.stderr
    ok(sandbox.release("2"))
    sandbox.merge("gitops/dev")
    before = release_doc(sandbox, "main", "dev")
    values = (ROOT / "environments/prod/values.yaml").read_text()
    change = sandbox.commit_on_main(
        "prod values", **{"environments/prod/values.yaml": values + "# tuned\n"}
    )
    mixed = sandbox.gitops("release", "--values-only", "--revision", change, "--digest", DIGEST_B)
    assert mixed.returncode == 2 and "keeps the image and model" in mixed.stderr
    ok(sandbox.gitops("release", "--values-only", "--revision", change))
    after = release_doc(sandbox, "gitops/dev", "dev")
    assert after["revision"] == change
    assert (after["image"], after["model"]) == (before["image"], before["model"])
    assert "values of" in sandbox.prs()[-1]["title"]


def test_rollback_returns_to_the_state_before(sandbox: Sandbox):
    nothing = sandbox.gitops("rollback", "dev")
    assert nothing.returncode == 3 and "nothing is released to dev" in nothing.stderr
    ok(sandbox.release("2"))
    sandbox.merge("gitops/dev")
    first = release_doc(sandbox, "main", "dev")
    only = sandbox.gitops("rollback", "dev")
    assert only.returncode == 3 and "ran no other state" in only.stderr
    ok(sandbox.release("3", digest=DIGEST_B))
    sandbox.merge("gitops/dev")
    ok(sandbox.gitops("rollback", "dev"))
    assert release_doc(sandbox, "gitops/dev", "dev") == first
    assert sandbox.prs()[-1]["title"].startswith("rollback(dev): ")
    unknown = sandbox.gitops("rollback", "dev", "--to", "abcdef1")
    assert unknown.returncode == 3


def abort_notification(**changes) -> dict:
    """What argocd/install/argo-rollouts-notification-cm.yaml makes Argo Rollouts send (the
    cluster tier checks the real controller's)."""
    doc = {
        "namespace": "ml-service-staging",
        "rollout": "ml-service",
        "message": 'RolloutAborted: Rollout aborted update to revision 3: Metric "class-share" '
        "assessed Failed due to failed (2) > failureLimit (1)",
        "image": f"{REPOSITORY}:{'a' * 40}@{DIGEST_A}",
        "model": "models:/ml-service/7",
        "analysis": [{"name": "ml-service-5d8f-3-1", "phase": "Failed", "metrics": [
            {"name": "class-share", "phase": "Failed", "successful": 0, "failed": 2,
             "inconclusive": 1, "value": "[0.1134]"},
            {"name": "latency-p95", "phase": "Running", "successful": 1, "failed": 0,
             "inconclusive": 1, "value": "[0.4]"},
        ]}],
    }  # fmt: skip
    return {**doc, **changes}


def test_abort_notification_is_read_field_by_field(gitops_cli, tmp_path: Path):
    """It arrives through GitHub from anyone holding a token for the repository: only its known
    fields reach the pull request, each one line, bounded, no table or code breaks."""
    path = tmp_path / "aborted.json"
    path.write_text(json.dumps(abort_notification()))
    aborted = gitops_cli.read_abort_notification(path)
    assert aborted.env == "staging"
    state = gitops_cli.ReleaseState("a" * 40, REPOSITORY, "a" * 40, DIGEST_A, "ml-service", "7")
    assert aborted.ran(state)
    assert not aborted.ran(gitops_cli.ReleaseState("a" * 40, REPOSITORY, "a" * 40, DIGEST_A,
                                                   "ml-service", "6"))  # fmt: skip
    table = aborted.markdown().splitlines()
    assert table[2] == "| ml-service-5d8f-3-1 | class-share | Failed | 0 | 2 | 1 | [0.1134] |"
    hostile = abort_notification(message="a | b `rm -rf`\n# heading " + "x" * 1000,
                                 rollout="ignored", extra="ignored")  # fmt: skip
    path.write_text(json.dumps(hostile))
    aborted = gitops_cli.read_abort_notification(path)
    assert "\n" not in aborted.message and "`" not in aborted.message
    assert "a \\| b 'rm -rf' # heading" in aborted.message and len(aborted.message) <= 300
    for bad in ({"namespace": "kube-system"}, {"namespace": "ml-service-qa"}, {"image": None},
                {"analysis": "none"}):  # fmt: skip
        path.write_text(json.dumps({**abort_notification(), **bad}))
        with pytest.raises(gitops_cli.GitopsError, match=r"not an abort notification|no environ"):
            gitops_cli.read_abort_notification(path)


NOTIFICATION_CM = ROOT / "argocd" / "install" / "argo-rollouts-notification-cm.yaml"


def render_abort_notification(tmp_path: Path, analysis_runs: list[dict]) -> dict:
    """The canary-aborted notification's body as the controller renders it at the abort: Argo
    Rollouts' notifications run the template with Go's text/template and sprig, as helm's `tpl`
    does (helm renders it here; the cluster tier checks the real controller's). The Rollout is the
    one the controller sends: as it was before the abort, its message still about progress."""
    data = yaml.safe_load(NOTIFICATION_CM.read_text())["data"]
    body = yaml.safe_load(data["template.ml-service-canary-aborted"])["webhook"]["github-dispatch"]
    rollout = {
        "metadata": {"name": "ml-service", "namespace": "ml-service-staging"},
        "spec": {"template": {"spec": {"containers": [{
            "name": "ml-service", "image": f"{REPOSITORY}:{'a' * 40}@{DIGEST_A}",
            "env": [{"name": "LOG_LEVEL", "value": "info"},
                    {"name": "MODEL_URI", "value": "models:/ml-service/7"}],
        }]}}},
        "status": {"phase": "Progressing", "message": "more replicas need to be updated"},
    }  # fmt: skip
    chart = tmp_path / "render"
    (chart / "templates").mkdir(parents=True)
    (chart / "Chart.yaml").write_text("apiVersion: v2\nname: render\nversion: 0.0.0\n")
    (chart / "templates" / "body.yaml").write_text("{{ tpl .Values.body .Values.vars }}\n")
    values = {"body": body["body"], "vars": {"rollout": rollout, "analysisRuns": analysis_runs}}
    (chart / "values.yaml").write_text(json.dumps(values))
    out = subprocess.run([tool("helm"), "template", "r", str(chart)], capture_output=True,
                         text=True, check=True).stdout  # fmt: skip
    return json.loads(out.split("\n", 2)[2])["client_payload"]


def analysis_run(name: str, phase: str, message: str, metric_phase: str) -> dict:
    return {"metadata": {"name": name}, "status": {"phase": phase, "message": message,
            "metricResults": [{"name": "class-share", "phase": metric_phase, "successful": 1,
                               "failed": 2 if metric_phase == "Failed" else 0,
                               "measurements": [{"value": "[0.1134]"}]}]}}  # fmt: skip


def test_abort_notification_names_the_failed_check(tmp_path: Path, gitops_cli):
    """The reason the revert pull request gives is the failed AnalysisRun's (the Rollout the
    controller sends predates the abort), and what the template renders is what rollback reads."""
    failed = 'Metric "class-share" assessed Failed due to failed (2) > failureLimit (1)'
    runs = [analysis_run("ml-service-5d8f-3-2", "Failed", failed, "Failed"),
            analysis_run("ml-service-5d8f-3-1", "Successful", "", "Successful")]  # fmt: skip
    payload = render_abort_notification(tmp_path, runs)
    assert payload["message"] == failed
    assert payload["model"] == "models:/ml-service/7" and payload["image"].endswith(DIGEST_A)
    path = tmp_path / "aborted.json"
    path.write_text(json.dumps(payload))
    aborted = gitops_cli.read_abort_notification(path)
    assert aborted.env == "staging" and aborted.message == failed
    assert "| ml-service-5d8f-3-2 | class-share | Failed | 1 | 2 | 0 | [0.1134] |" in (
        aborted.markdown()
    )
    # no run failed, and one the controller has not given a status yet
    fresh = {"metadata": {"name": "ml-service-5d8f-3-3"}}
    by_hand = render_abort_notification(tmp_path / "by-hand", [fresh, *runs[1:]])
    assert by_hand["message"].startswith("no analysis run of this revision failed")
    path.write_text(json.dumps(by_hand))
    table = gitops_cli.read_abort_notification(path).markdown()
    assert "| ml-service-5d8f-3-1 | class-share | Successful | 1 | 0 | 0 | [0.1134] |" in table


def test_an_aborted_canary_is_reverted_by_pull_request(sandbox: Sandbox, tmp_path: Path):
    """What the canary-aborted workflow runs: the environment back on the state it ran before,
    the analysis results in the pull request; refused when it pins another release by now."""
    ok(sandbox.release("7"))
    sandbox.merge("gitops/dev")
    before = release_doc(sandbox, "main", "dev")
    ok(sandbox.release("8", digest=DIGEST_B))
    sandbox.merge("gitops/dev")
    aborted = release_doc(sandbox, "main", "dev")
    image = aborted["image"]
    notification = tmp_path / "aborted.json"
    stale = abort_notification(
        namespace="ml-service-dev",
        model="models:/ml-service/7",
        image=f"{image['repository']}:{image['tag']}@{image['digest']}",
    )
    notification.write_text(json.dumps(stale))  # fmt: skip
    proc = sandbox.gitops("rollback", "dev", "--aborted", str(notification))
    assert proc.returncode == 3 and "pins another release than the aborted one" in proc.stderr
    notification.write_text(json.dumps({**stale, "model": "models:/ml-service/8"}))
    wrong_env = sandbox.gitops("rollback", "staging", "--aborted", str(notification))
    assert wrong_env.returncode == 2 and "about dev, not staging" in wrong_env.stderr
    ok(sandbox.gitops("rollback", "dev", "--aborted", str(notification)))
    assert release_doc(sandbox, "gitops/dev", "dev") == before
    pr = sandbox.prs()[-1]
    assert pr["title"] == "revert(dev): canary of model ml-service v8 aborted"
    assert 'Metric "class-share" assessed Failed' in pr["body"]
    assert "| ml-service-5d8f-3-1 | class-share | Failed | 0 | 2 | 1 | [0.1134] |" in pr["body"]
