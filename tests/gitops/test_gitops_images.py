"""Every image Argo CD would run is one a workflow of this repository publishes, in the repository
as it is and once adopted (`make adopt`); and the platform-images workflow's pull request
(`scripts/gitops.py pin-platform`) pins what it pushed.

"What Argo CD would apply" is followed from argocd/bootstrap.yaml: the Applications of argocd/apps
rendered as the repo-server renders them (chart + valuesObject), and the Applications the
ApplicationSet generates (Argo CD's own generator code, appset-render) for the released
environments, and for a first release of each environment as release.yml writes it. Applications of
third-party Helm repositories (kube-prometheus-stack) run images their maintainers publish: named,
not checked. "What a workflow publishes" is read from the workflows themselves: every
docker/build-push-action step with `push: true`, its `tags` expanded with the outputs of the steps
that compute them, run here with bash as the runner would (GITHUB_REPOSITORY = the repository the
Argo CD notification names)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from support import kube

from .conftest import ROOT, generate, load_all, run_git, snapshot_repo, tool
from .test_gitops_release import make_sandbox, ok

WORKFLOWS = ROOT / ".github" / "workflows"
FAKE_DIGEST = "sha256:" + "f" * 64
EXPR = re.compile(r"\$\{\{\s*([\w.-]+)\s*\}\}")


def github_repository(tree: Path) -> str:
    """owner/name on GitHub: where Argo CD Notifications sends its dispatch (set by adopt)."""
    text = (tree / "argocd" / "install" / "argocd-notifications-cm.patch.yaml").read_text()
    m = re.search(r"path: /repos/([^/\s]+/[^/\s]+)/dispatches", text)
    assert m, "no GitHub dispatch path in the notification template"
    return m[1]


def run_step(tree: Path, step: dict, repository: str, tmp: Path) -> dict[str, str]:
    """A `run:` step run as the runner does (bash -e, GITHUB_REPOSITORY, GITHUB_OUTPUT): outputs."""
    out = tmp / f"output-{step['id']}"
    out.write_text("")
    env = {**os.environ, "GITHUB_REPOSITORY": repository, "GITHUB_OUTPUT": str(out)}
    proc = subprocess.run(["bash", "-e", "-c", step["run"]], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert proc.returncode == 0, f"step {step['id']}: {proc.stderr}"
    return dict(line.split("=", 1) for line in out.read_text().splitlines() if "=" in line)


def tag_pattern(tag: str, step_outputs) -> str:
    """A `tags:` entry as a regex: `${{ github.sha }}` any commit, `${{ steps.S.outputs.O }}` the
    value step S computes."""
    parts, pos = [], 0
    for m in EXPR.finditer(tag):
        parts.append(re.escape(tag[pos : m.start()]))
        if m[1] == "github.sha":
            parts.append("[0-9a-f]{40}")
        else:
            kind, step, outputs, name = m[1].split(".")
            assert (kind, outputs) == ("steps", "outputs"), f"cannot expand {m[0]}"
            parts.append(re.escape(step_outputs(step)[name]))
        pos = m.end()
    return "".join(parts) + re.escape(tag[pos:])


def published(tree: Path, repository: str, tmp: Path) -> dict[str, str]:
    """`image:tag` regex -> where it is pushed, for every docker/build-push-action step with
    `push: true` of every workflow, for the GitHub repository `repository`."""
    patterns = {}
    for path in sorted((tree / ".github" / "workflows").glob("*.yml")):
        for job_id, job in yaml.safe_load(path.read_text())["jobs"].items():
            steps = {s["id"]: s for s in job.get("steps", []) if "id" in s}
            ran: dict[str, dict[str, str]] = {}

            def step_outputs(step_id, steps=steps, ran=ran):
                if step_id not in ran:
                    ran[step_id] = run_step(tree, steps[step_id], repository, tmp)
                return ran[step_id]

            for step in job.get("steps", []):
                with_ = step.get("with") or {}
                if (
                    "docker/build-push-action@" in step.get("uses", "")
                    and with_.get("push") is True
                ):
                    for tag in filter(None, map(str.strip, re.split(r"[\n,]", with_["tags"]))):
                        patterns[tag_pattern(tag, step_outputs)] = f"{path.name} {job_id}"
    return patterns


def pod_images(docs: list[dict]) -> set[str]:
    """Every container image of every pod template (helm test hooks are not synced)."""
    found: set[str] = set()

    def walk(node):
        if isinstance(node, dict):
            for key in ("containers", "initContainers", "ephemeralContainers"):
                found.update(c["image"] for c in node.get(key) or [] if isinstance(c, dict))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    for doc in docs:
        if "test" not in (doc["metadata"].get("annotations") or {}).get("helm.sh/hook", ""):
            walk(doc)
    return found


def render_application(app: dict, checkout: Path) -> list[dict]:
    """The repo-server's `helm template` of a one-source Application of this repository."""
    src = app["spec"]["sources"][0] if "sources" in app["spec"] else app["spec"]["source"]
    chart = checkout / src["path"]
    helm = src.get("helm") or {}
    values = checkout.parent / f"values-{app['metadata']['name']}.json"
    values.write_text(json.dumps(helm.get("valuesObject") or {}))
    args = ["template", ".", "--name-template", helm.get("releaseName", app["metadata"]["name"]),
            "--namespace", app["spec"]["destination"]["namespace"]]  # fmt: skip
    for f in helm.get("valueFiles", []):
        args += ["--values", str((chart / f).resolve())]
    proc = kube.run_helm([*args, "--values", str(values)], cwd=chart)
    assert proc.returncode == 0, f"{app['metadata']['name']}: {proc.stderr}"
    return kube.load_documents(proc.stdout)


def with_first_releases(tree: Path, repository: str, gitops_cli) -> None:
    """Each environment's release.yaml as release.yml's bump-dev and promote.yml write it: the
    image release.yml pushed (`ghcr.io/<repository>:<commit>@<digest>`), chart of that commit."""
    release = yaml.safe_load((WORKFLOWS / "release.yml").read_text())["jobs"]["image"]
    (name_step,) = [s for s in release["steps"] if s.get("id") == "name"]
    image = run_step(tree, name_step, repository, tree.parent)["repository"]
    commit = run_git(tree, "rev-parse", "HEAD")
    state = gitops_cli.ReleaseState(commit, image, commit, FAKE_DIGEST, "ml-service", "1")
    for env in ("dev", "staging", "prod"):
        path = tree / "environments" / env / "release.yaml"
        if not path.exists():
            path.write_text(gitops_cli.edit_release_text(None, state, str(path), env))
    run_git(tree, "add", "-A")
    run_git(tree, "commit", "--quiet", "--allow-empty", "-m", "first releases")


def deployed_images(tree: Path) -> dict[str, set[str]]:
    """image -> the Applications that run it, for everything argocd/bootstrap.yaml leads to."""
    (boot,) = load_all(tree / "argocd" / "bootstrap.yaml")
    ours = boot["spec"]["source"]["repoURL"]
    checkout = tree.parent / "checkout"
    if not checkout.exists():
        shutil.copytree(tree, checkout, symlinks=True, ignore=shutil.ignore_patterns(".git"))
    images: dict[str, set[str]] = {}

    def add(app: dict, checkout: Path) -> None:
        for image in pod_images(render_application(app, checkout)):
            images.setdefault(image, set()).add(app["metadata"]["name"])

    apps = [d for f in sorted((tree / boot["spec"]["source"]["path"]).glob("*.yaml"))
            for d in load_all(f) if d["kind"] == "Application"]  # fmt: skip
    for app in apps:
        src = app["spec"]["source"]
        if src["repoURL"] != ours:
            assert "chart" in src, f"{app['metadata']['name']}: another git repository"
            continue  # a third-party Helm chart: its maintainers publish its images
        add(app, checkout)
    for app in generate(tree, tree / "argocd/apps/applicationset.yaml",
                             tree / "argocd/apps/projects.yaml").values():  # fmt: skip
        rev = app["spec"]["sources"][0]["targetRevision"]
        at = tree.parent / f"checkout-{rev[:12]}"
        if not at.exists():
            run_git(tree, "worktree", "add", "--quiet", "--detach", str(at), rev)
        add(app, at)
    return images


def adopted_copy(tmp: Path) -> Path:
    tree = tmp / "repo"
    snapshot_repo(tree)
    if "OWNER/ml-service" not in (tree / "argocd" / "bootstrap.yaml").read_text():
        pytest.skip("this repository is adopted already: the case `as it is` checks it")
    proc = subprocess.run([sys.executable, "scripts/adopt.py", "acme-corp/Fraud-Model"], cwd=tree,
                          capture_output=True, text=True, check=False)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run_git(tree, "commit", "--quiet", "-am", "adopt")
    return tree


@pytest.mark.argocd
@pytest.mark.parametrize("state", ["as it is", "adopted"])
def test_every_image_argocd_runs_is_published_by_a_workflow(state, tmp_path: Path, gitops_cli):
    tool("appset-render")
    if state == "adopted":
        tree = adopted_copy(tmp_path)
    else:
        tree = tmp_path / "repo"
        snapshot_repo(tree)
    repository = github_repository(tree)
    with_first_releases(tree, repository, gitops_cli)
    patterns = published(tree, repository, tmp_path)
    deployed = deployed_images(tree)
    apps = set().union(*deployed.values())
    assert apps >= {"mlflow-platform", "ml-service-dev", "ml-service-staging", "ml-service-prod"}
    unpublished = {
        image: app for image, app in deployed.items()
        if not any(re.fullmatch(p, image.partition("@")[0]) for p in patterns)
    }  # fmt: skip
    assert not unpublished, (
        f"images no workflow publishes for {repository}: {unpublished}\npublished: {patterns}"
    )
    for image in deployed:
        assert image.startswith(f"ghcr.io/{repository.lower()}"), image


@pytest.mark.argocd
def test_the_check_catches_an_image_nobody_publishes(tmp_path: Path, gitops_cli):
    """A tag the platform-images workflow does not push (the chart's MinIO tag behind
    mk/platform.mk's MINIO_VERSION) is reported."""
    tree = tmp_path / "repo"
    snapshot_repo(tree)
    values = tree / "charts" / "mlflow-platform" / "values.yaml"
    values.write_text(re.sub(r"(\n    tag: )(v0\.0\.0-\S+)", r"\1v0.0.0-stale", values.read_text()))
    run_git(tree, "commit", "--quiet", "-am", "stale MinIO tag")
    repository = github_repository(tree)
    patterns = published(tree, repository, tmp_path)
    stale = [i for i in deployed_images(tree) if i.endswith(":v0.0.0-stale")]
    assert stale and not any(re.fullmatch(p, stale[0]) for p in patterns)


# ---------------------------------------------------------------------------- pin-platform

PLATFORM_APP = "argocd/apps/mlflow-platform.yaml"
DIGEST = "sha256:" + "1" * 64


def platform_refs(tree: Path, registry: str | None = None) -> dict[str, str]:
    """What the workflow's `refs` step prints (`make platform-image-refs`)."""
    args = ["make", "-s", "platform-image-refs"] + (
        [f"PLATFORM_REGISTRY={registry}"] if registry else []
    )
    out = subprocess.run(args, cwd=tree, capture_output=True, text=True, check=True).stdout
    return dict(line.split("=", 1) for line in out.split())


@pytest.fixture
def platform_sandbox(tmp_path: Path):
    sandbox = make_sandbox(tmp_path)
    for name in ("argocd", "mk", "requirements"):
        shutil.copytree(ROOT / name, sandbox.work / name, symlinks=True)
    shutil.copy2(ROOT / "Makefile", sandbox.work / "Makefile")
    run_git(sandbox.work, "add", "-A")
    run_git(sandbox.work, "commit", "--quiet", "-m", "argocd")
    run_git(sandbox.work, "push", "--quiet", "origin", "main")
    return sandbox


def pins(sandbox, seed: int = 1) -> list[str]:
    """`--image TARGET=REF@DIGEST` for what the workflow would push (made-up digests)."""
    refs = sorted(platform_refs(sandbox.work).items())
    return [f"--image={t}={ref}@sha256:{str(seed + i) * 64}" for i, (t, ref) in enumerate(refs)]


def test_pin_platform_opens_a_pr_pinning_tag_and_digest(platform_sandbox):
    sb = platform_sandbox
    before = (sb.work / PLATFORM_APP).read_text()
    ok(sb.gitops("pin-platform", *pins(sb), "--revision", "a" * 40))
    after = sb.file_on("gitops/platform-images", PLATFORM_APP)
    assert run_git(sb.remote, "rev-list", "--count", "main..gitops/platform-images") == "1"
    # comments and everything else kept: the change is the image blocks
    for line in before.splitlines():
        assert line in after.splitlines(), line
    (app,) = yaml.safe_load_all(after)
    values = app["spec"]["source"]["helm"]["valuesObject"]
    images = pod_images(render_application(app, sb.work))
    refs = platform_refs(sb.work)
    for flag in pins(sb):
        target, ref = flag.removeprefix("--image=").split("=", 1)
        assert ref in images, (ref, images)
        block = {"mlflow-server": "mlflow", "postgresql": "postgresql", "minio": "s3"}[target]
        assert values[block]["image"] == {"tag": refs[target].rsplit(":", 1)[1],
                                          "digest": ref.rsplit("@", 1)[1]}  # fmt: skip
    (pr,) = sb.prs()
    assert pr["head"] == "gitops/platform-images" and pr["title"].startswith("platform images: ")
    assert "a" * 40 in pr["body"] and all(f.split("=", 2)[2] in pr["body"] for f in pins(sb))
    # the same images again: nothing pushed, the one PR kept
    head = sb.head("gitops/platform-images")
    ok(sb.gitops("pin-platform", *pins(sb), "--revision", "a" * 40))
    assert sb.head("gitops/platform-images") == head and len(sb.prs()) == 1
    # newer images: the same branch and PR, force-pushed
    ok(sb.gitops("pin-platform", *pins(sb, 2)))
    assert sb.head("gitops/platform-images") != head and len(sb.prs()) == 1


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (f"mlflow-server=ghcr.io/x/y/mlflow-server:3@{DIGEST}", "is not the chart's image"),
        ("mlflow-server=ghcr.io/x/y/mlflow-server:3@sha256:s3cr3t", "invalid repository, tag or"),
        (f"redis=ghcr.io/x/y/redis:7@{DIGEST}", "TARGET is one of"),
    ],
)  # fmt: skip
def test_pin_platform_refuses_what_the_chart_does_not_run(platform_sandbox, spec, message):
    sb = platform_sandbox
    proc = sb.gitops("pin-platform", "--image", spec)
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr
    assert "s3cr3t" not in proc.stderr
    assert not sb.remote_has("gitops/platform-images")


def test_the_workflow_builds_each_target_and_pins_what_it_pushed():
    """platform-images.yml: one push per platform.Dockerfile target, tagged with the names
    `make platform-image-refs` gives for this repository, and the pin step gets each
    `name:tag@digest` (the step outputs of that push)."""
    doc = yaml.safe_load((WORKFLOWS / "platform-images.yml").read_text())
    triggers = doc[True]
    assert set(triggers) == {"push", "workflow_dispatch"}
    assert {"platform.Dockerfile", "requirements/mlflow-server.txt"} <= set(
        triggers["push"]["paths"]
    )
    images, pin = doc["jobs"]["images"], doc["jobs"]["pin"]
    assert images["permissions"] == {"contents": "read", "packages": "write"}
    assert pin["permissions"] == {} and pin["needs"] == "images"
    targets = re.findall(r"^FROM \S+ AS (\S+)$", (ROOT / "platform.Dockerfile").read_text(), re.M)
    pushes = {
        s["with"]["target"]: s for s in images["steps"] if "build-push-action" in s.get("uses", "")
    }
    assert set(pushes) == set(platform_refs(ROOT)) == set(targets) - {"mlflow-builder"}
    for target, step in pushes.items():
        assert step["with"]["file"] == "platform.Dockerfile" and step["with"]["push"] is True
        assert step["with"]["tags"] == f"${{{{ steps.refs.outputs.{target} }}}}"
        assert images["outputs"][target] == (
            f"${{{{ steps.refs.outputs.{target} }}}}@${{{{ steps.{step['id']}.outputs.digest }}}}"
        )
    (run,) = [s for s in pin["steps"] if "pin-platform" in s.get("run", "")]
    for target in pushes:
        var = target.upper().replace("-", "_")
        assert run["env"][var] == f"${{{{ needs.images.outputs.{target} }}}}"
        assert f'--image "{target}=${var}"' in run["run"]
