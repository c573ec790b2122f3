"""The workflows' jobs that can run off GitHub, run by `act` (github.com/nektos/act, built by
`make setup-gitops`) on this machine (`-P ubuntu-24.04=-self-hosted`), against a real MLflow
server and a local bare git remote:

- release.yml: `train` (real training + registration) and `bump-dev` (quality gate, release
  branch, PR) as written; its `image` job (buildx + push to GHCR) only runs on GitHub, so the
  test runs a copy of the workflow where that one job is a stub emitting the same outputs;
- promote.yml: `promote` (the environment before `to`, the gate, the PR);
- champion-alias.yml: `set-alias` on a `repository_dispatch` like Argo CD Notifications sends;
- platform-images.yml: `pin` (the digests into argocd/apps/mlflow-platform.yaml, PR); its pushes
  (buildx + GHCR) only run on GitHub and are stubs emitting a digest each.

What cannot run here is replaced, and named so: actions/setup-python and actions/setup-go by
local stand-ins that check the runner's own Python and Go, actions/create-github-app-token by a
FAKE returning a placeholder token (tests/gitops/act/actions/, wired with act's
--local-repository), `gh` by the FAKE tests/gitops/fake_gh.py (the GitHub API cannot be reached),
actions/checkout by act's own local checkout (it copies the work tree). The jobs get their own
virtualenv (the shared .venv must never see the `pip install -e .` of `make venv`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from support.gitrepo import forget_releases

from .conftest import ROOT, TOOLS_BIN, run_git, snapshot_repo, tool

pytestmark = pytest.mark.server

# act runs the workflows without a cluster: the promotion's rollout check cannot look.
NO_CLUSTER = "act: no Argo CD here"

ACT_ACTIONS = Path(__file__).parent / "act" / "actions"
FAKE_DIGEST = "sha256:" + "e" * 64


def pinned(action: str) -> str:
    """`owner/name@sha` as the workflows pin it (so the stand-in replaces exactly that)."""
    for path in (ROOT / ".github" / "workflows").glob("*.yml"):
        for line in path.read_text().splitlines():
            if f"uses: {action}@" in line:
                return line.split("uses:")[1].split("#")[0].strip()
    raise AssertionError(f"{action} is not used by any workflow")


@dataclass
class ActRepo:
    work: Path  # the repository act runs in (copied by act's local checkout)
    remote: Path  # its origin (a bare repository standing in for GitHub)
    tmp: Path
    env: dict[str, str]
    tracking_uri: str

    def act(self, event: str, workflow: Path, *args: str, payload: dict | None = None):
        event_file = self.tmp / f"event-{event}.json"
        event_file.write_text(json.dumps(payload or {}))
        cmd = [
            tool("act"),
            event,
            "-W",
            str(workflow),
            "-e",
            str(event_file),
            "-P",
            "ubuntu-24.04=-self-hosted",
            "--no-cache-server",
            "--pull=false",
            # The checkout copies .venv and .tools too: they are git-ignored links to the shared
            # ones (copying only what git tracks would rebuild every tool inside each job).
            "--use-gitignore=false",
            "--defaultbranch",
            "main",
            "-s",
            f"MLFLOW_TRACKING_URI={self.tracking_uri}",
            "-s",
            "MLFLOW_TRACKING_USERNAME=",
            "-s",
            "MLFLOW_TRACKING_PASSWORD=",
            "-s",
            "GITOPS_APP_PRIVATE_KEY=fake-private-key",
            "--var",
            "GITOPS_APP_CLIENT_ID=Iv23li0fake",
        ]
        for name in ("setup-python", "setup-go", "create-github-app-token"):
            cmd += ["--local-repository", f"{pinned('actions/' + name)}={ACT_ACTIONS / name}"]
        proc = subprocess.Popen(
            [*cmd, *args],
            cwd=self.work,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            start_new_session=True,
        )
        try:
            out, _ = proc.communicate(timeout=900)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            out, _ = proc.communicate()
            pytest.fail(f"act timed out:\n{out[-6000:]}")
        return proc.returncode, out

    def prs(self) -> list[dict]:
        state = Path(self.env["FAKE_GH_STATE"])
        return json.loads(state.read_text())["prs"] if state.exists() else []

    def merge(self, branch: str) -> None:
        run_git(self.remote, "update-ref", "refs/heads/main", f"refs/heads/{branch}")
        state = Path(self.env["FAKE_GH_STATE"])
        prs = self.prs()
        for pr in prs:
            pr["open"] = pr["open"] and pr["head"] != branch
        state.write_text(json.dumps({"prs": prs}))
        run_git(self.work, "fetch", "--quiet", "origin", "main")
        run_git(self.work, "reset", "--quiet", "--hard", "origin/main")

    def release_on(self, ref: str, env: str) -> dict:
        path = f"{ref}:environments/{env}/release.yaml"
        return yaml.safe_load(run_git(self.remote, "show", path))


@pytest.fixture(scope="module")
def act_venv(tmp_path_factory) -> Path:
    """A virtualenv of the lock file for the jobs (uv's cache makes it quick)."""
    venv = tmp_path_factory.mktemp("act-venv") / "venv"
    uv = ROOT / ".tools" / "uv" / "bin" / "uv"
    subprocess.run([str(uv), "venv", "-q", "--python", sys.executable, str(venv)], check=True)
    subprocess.run(
        [str(uv), "pip", "sync", "-q", "--compile-bytecode", "--require-hashes",
         str(ROOT / "requirements" / "dev.txt")],
        env={**os.environ, "VIRTUAL_ENV": str(venv)},
        check=True,
        timeout=900,
    )  # fmt: skip
    return venv


@pytest.fixture(scope="module")
def story(act_venv: Path, tmp_path_factory):
    """A repository with a bare remote, its own MLflow server, a fake gh: one release story."""
    from support.mlflow import mlflow_env, mlflow_server

    tmp = tmp_path_factory.mktemp("act")
    remote, work = tmp / "remote.git", tmp / "work"
    run_git(tmp, "init", "--quiet", "--bare", "-b", "main", str(remote))
    snapshot_repo(work)
    forget_releases(work)  # the jobs train against this test's own, empty MLflow server
    run_git(work, "remote", "add", "origin", str(remote))
    run_git(work, "push", "--quiet", "origin", "main")
    # Symlinks are copied as they are by act's checkout: the jobs' .venv is the private one.
    os.symlink(act_venv, work / ".venv")
    os.symlink(ROOT / ".tools", work / ".tools")
    assert (work / ".venv").resolve() != (ROOT / ".venv").resolve()
    bin_dir = tmp / "bin"
    bin_dir.mkdir()
    gh = bin_dir / "gh"
    gh.write_text(f"#!{sys.executable}\n" + (Path(__file__).parent / "fake_gh.py").read_text())
    gh.chmod(0o755)
    env = {
        **mlflow_env(),
        "PATH": os.pathsep.join([str(bin_dir), str(TOOLS_BIN), os.environ["PATH"]]),
        "FAKE_GH_LOG": str(tmp / "gh.log"),
        "FAKE_GH_STATE": str(tmp / "gh.json"),
        "XDG_CACHE_HOME": str(tmp / "xdg-cache"),
        "XDG_CONFIG_HOME": str(tmp / "xdg-config"),
        "GIT_TERMINAL_PROMPT": "0",
        "GIT_AUTHOR_NAME": "act",
        "GIT_AUTHOR_EMAIL": "act@example.invalid",
        "GIT_COMMITTER_NAME": "act",
        "GIT_COMMITTER_EMAIL": "act@example.invalid",
    }
    for var in ("CI", "MLFLOW_TRACKING_URI", "PYTHONPATH", "VIRTUAL_ENV"):
        env.pop(var, None)
    with mlflow_server(tmp / "mlflow") as server:
        yield ActRepo(work, remote, tmp, env, server.tracking_uri)


def release_workflow_without_image_push(tmp: Path) -> Path:
    """release.yml with its `image` job (buildx + GHCR push: GitHub only) replaced by a stub
    that emits the same outputs; every other job is the file as committed."""
    doc = yaml.safe_load((ROOT / ".github/workflows/release.yml").read_text())
    doc["on"] = doc.pop(True)  # YAML 1.1 reads the key `on` as a boolean
    image = doc["jobs"]["image"]
    assert set(image["outputs"]) == {"repository", "digest"}
    image["steps"] = [
        {"id": "name", "run": 'echo "repository=ghcr.io/owner/ml-service" >> "$GITHUB_OUTPUT"'},
        {"id": "build", "run": f'echo "digest={FAKE_DIGEST}" >> "$GITHUB_OUTPUT"'},
    ]
    path = tmp / "release-stub-image.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_release_workflow_trains_gates_and_opens_the_dev_pr(story: ActRepo):
    head = run_git(story.work, "rev-parse", "HEAD")
    workflow = release_workflow_without_image_push(story.tmp)
    code, out = story.act("push", workflow, payload={"ref": "refs/heads/main"})
    assert code == 0, out[-8000:]
    assert "Job succeeded" in out
    release = story.release_on("gitops/dev", "dev")
    assert release["revision"] == head == release["image"]["tag"]
    assert release["image"] == {"repository": "ghcr.io/owner/ml-service", "tag": head,
                                "digest": FAKE_DIGEST}  # fmt: skip
    assert release["model"] == {"name": "ml-service", "version": "1"}
    (pr,) = story.prs()
    assert pr["head"] == "gitops/dev" and pr["title"].startswith("release(dev): ")
    assert "### Quality gate: ✅ passed" in pr["body"]
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=story.tracking_uri)
    run = client.get_run(client.get_model_version("ml-service", "1").run_id)
    assert run.data.tags["quality_gate.dev.verdict"] == "passed"
    story.merge("gitops/dev")


def test_promote_workflow_promotes_from_the_environment_before(story: ActRepo):
    workflow = ROOT / ".github/workflows/promote.yml"
    # prod comes from staging, which has nothing yet: refused.
    code, out = story.act("workflow_dispatch", workflow, "--input", "to=prod",
                          payload={"inputs": {"to": "prod"}})  # fmt: skip
    assert code != 0 and "nothing is released to staging yet" in out, out[-6000:]
    # No cluster to read dev's Application from (no ARGOCD_KUBECONFIG here): refused...
    code, out = story.act("workflow_dispatch", workflow, "--input", "to=staging",
                          payload={"inputs": {"to": "staging"}})  # fmt: skip
    assert code != 0 and "cannot see whether dev runs its release fully" in out, out[-6000:]
    # ...unless a person says why to promote anyway.
    skip = {"to": "staging", "rollout-check-skip": NO_CLUSTER}
    code, out = story.act("workflow_dispatch", workflow, "--input", "to=staging", "--input",
                          f"rollout-check-skip={NO_CLUSTER}", payload={"inputs": skip})  # fmt: skip
    assert code == 0, out[-8000:]
    assert story.release_on("gitops/staging", "staging") == story.release_on("main", "dev")
    pr = story.prs()[-1]
    assert pr["head"] == "gitops/staging" and "### Quality gate: ✅ passed" in pr["body"]
    assert (
        f"**Not checked** that `dev` runs it fully promoted and healthy: {NO_CLUSTER}"
        in (pr["body"])
    )
    story.merge("gitops/staging")


def test_champion_alias_follows_the_dispatch_of_a_synced_prod(story: ActRepo):
    from mlflow import MlflowClient

    workflow = ROOT / ".github/workflows/champion-alias.yml"
    skip = {"to": "prod", "rollout-check-skip": NO_CLUSTER}
    code, out = story.act("workflow_dispatch", ROOT / ".github/workflows/promote.yml",
                          "--input", "to=prod", "--input", f"rollout-check-skip={NO_CLUSTER}",
                          payload={"inputs": skip})  # fmt: skip
    assert code == 0, out[-8000:]
    story.merge("gitops/prod")
    client = MlflowClient(tracking_uri=story.tracking_uri)

    def dispatch(environment: str, version: str):
        payload = {"action": "ml-service-deployed",
                   "client_payload": {"environment": environment, "version": version}}  # fmt: skip
        return story.act("repository_dispatch", workflow, payload=payload)

    # Another environment's notification moves nothing (the job is skipped).
    code, out = dispatch("staging", "1")
    assert code == 0, out[-6000:]
    assert not client.get_registered_model("ml-service").aliases
    # A version prod never pinned is refused.
    code, out = dispatch("prod", "7")
    assert code != 0 and "version 7 was never pinned" in out, out[-6000:]
    assert not client.get_registered_model("ml-service").aliases
    code, out = dispatch("prod", "1")
    assert code == 0, out[-8000:]
    assert "alias champion: ml-service v- -> v1" in out
    assert client.get_model_version_by_alias("ml-service", "champion").version == "1"


def test_release_workflow_ships_a_values_only_change(story: ActRepo):
    """A push that changes environments/prod/values.yaml only: release.yml trains and builds
    nothing and opens the dev PR pinning the new commit with the image and model dev runs."""
    before = run_git(story.work, "rev-parse", "HEAD")
    dev = story.release_on("main", "dev")
    values = story.work / "environments/prod/values.yaml"
    values.write_text(values.read_text().replace("  maxReplicas: 10\n", "  maxReplicas: 12\n"))
    run_git(story.work, "commit", "--quiet", "-am", "prod: up to 12 replicas")
    run_git(story.work, "push", "--quiet", "origin", "main")
    head = run_git(story.work, "rev-parse", "HEAD")
    workflow = release_workflow_without_image_push(story.tmp)
    payload = {"ref": "refs/heads/main", "before": before, "after": head}
    code, out = story.act("push", workflow, payload=payload)
    assert code == 0, out[-8000:]
    assert "Train and register" not in out, "nothing is trained"
    release = story.release_on("gitops/dev", "dev")
    assert release["revision"] == head
    assert (release["image"], release["model"]) == (dev["image"], dev["model"])
    assert story.prs()[-1]["title"].startswith("release(dev): values of ")


def test_canary_aborted_workflow_opens_the_revert_pr(story: ActRepo):
    """Argo Rollouts' abort notification (repository_dispatch, as
    argocd/install/argo-rollouts-notification-cm.yaml sends it): the pull request that puts the
    environment back on the state it ran before, the analysis results in its body; a notification
    about a release the environment no longer pins changes nothing."""
    workflow = ROOT / ".github/workflows/canary-aborted.yml"
    story.merge("gitops/dev")  # dev has run two states: the first release, the values-only one
    dev = story.release_on("main", "dev")
    image, model = dev["image"], dev["model"]
    notification = {
        "namespace": "ml-service-dev",
        "rollout": "ml-service",
        "message": 'RolloutAborted: Metric "class-share" assessed Failed',
        "image": f"{image['repository']}:{image['tag']}@{image['digest']}",
        "model": f"models:/{model['name']}/{model['version']}",
        "analysis": [{"name": "ml-service-5d8f-3-1", "phase": "Failed", "metrics": [
            {"name": "class-share", "phase": "Failed", "successful": 0, "failed": 2,
             "inconclusive": 0, "value": "[0.1134]"}]}],
    }  # fmt: skip

    def dispatch(client_payload: dict):
        payload = {"action": "ml-service-canary-aborted", "client_payload": client_payload}
        return story.act("repository_dispatch", workflow, payload=payload)

    stale = {**notification, "model": f"models:/{model['name']}/{int(model['version']) + 1}"}
    code, out = dispatch(stale)
    assert code != 0 and "pins another release than the aborted one" in out, out[-6000:]
    opened = len(story.prs())
    code, out = dispatch(notification)
    assert code == 0, out[-8000:]
    assert len(story.prs()) == opened + 1
    pr = story.prs()[-1]
    assert pr["head"] == "gitops/dev"
    aborted = f"{model['name']} v{model['version']}"
    assert pr["title"] == f"revert(dev): canary of model {aborted} aborted"
    assert "| ml-service-5d8f-3-1 | class-share | Failed | 0 | 2 | 0 | [0.1134] |" in pr["body"]
    assert story.release_on("gitops/dev", "dev")["revision"] != dev["revision"]


def platform_workflow_without_push(tmp: Path) -> Path:
    """platform-images.yml with the pushes of its `images` job (buildx + GHCR: GitHub only)
    replaced by steps emitting a made-up digest each; the job's checkout and its `refs` step (the
    image names, `make platform-image-refs`) run as written, and so does the `pin` job."""
    doc = yaml.safe_load((ROOT / ".github/workflows/platform-images.yml").read_text())
    doc["on"] = doc.pop(True)  # YAML 1.1 reads the key `on` as a boolean
    images = doc["jobs"]["images"]
    kept = [s for s in images["steps"]
            if "actions/checkout@" in s.get("uses", "") or s.get("id") == "refs"]  # fmt: skip
    pushes = [s["id"] for s in images["steps"] if "build-push-action@" in s.get("uses", "")]
    images["steps"] = kept + [
        {"id": step, "run": f'echo "digest=sha256:{i + 1}{"0" * 63}" >> "$GITHUB_OUTPUT"'}
        for i, step in enumerate(pushes)
    ]
    path = tmp / "platform-images-stub-push.yml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_platform_images_workflow_pins_what_it_pushed(story: ActRepo):
    """The `pin` job as written: the images' names from the `refs` step, their digests from the
    (stubbed) pushes, written into argocd/apps/mlflow-platform.yaml on gitops/platform-images and
    a pull request opened."""
    workflow = platform_workflow_without_push(story.tmp)
    code, out = story.act("workflow_dispatch", workflow, "--env",
                          "GITHUB_REPOSITORY=owner/ml-service", payload={})  # fmt: skip
    assert code == 0, out[-8000:]
    (app,) = yaml.safe_load_all(
        run_git(story.remote, "show", "gitops/platform-images:argocd/apps/mlflow-platform.yaml")
    )
    values = app["spec"]["source"]["helm"]["valuesObject"]
    digests = {block: values[block]["image"]["digest"] for block in ("mlflow", "postgresql", "s3")}
    assert digests == {"mlflow": f"sha256:1{'0' * 63}", "postgresql": f"sha256:2{'0' * 63}",
                       "s3": f"sha256:3{'0' * 63}"}  # fmt: skip
    pr = story.prs()[-1]
    assert pr["head"] == "gitops/platform-images" and pr["title"].startswith("platform images:")
