""".github/: actionlint (with shellcheck) and zizmor on every workflow, actions pinned by commit SHA
to releases that run on Node 24, least privilege (App tokens narrowed, credentials never stored
by checkout), a concurrency group per environment, App tokens for PRs that must trigger CI, the
suite split into jobs that a release PR skips, Dependabot; and the setup a GitHub runner runs
leaving the runner's own Docker alone."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, tool

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
USES_RE = re.compile(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$")
# The first release of each action whose action.yml says `runs: using: node24` (read in each
# action's repository at its tags). GitHub runs node20 actions on Node 24 only by force, then
# not at all: a pin below these is a workflow that stops one day.
NODE24_SINCE = {
    "actions/checkout": (5, 0, 0),
    "actions/setup-python": (6, 0, 0),
    "actions/setup-go": (6, 2, 0),
    "actions/cache": (5, 0, 0),
    "actions/create-github-app-token": (3, 0, 0),
    "docker/setup-buildx-action": (4, 0, 0),
    "docker/login-action": (4, 0, 0),
    "docker/build-push-action": (7, 0, 0),
}


def workflow(path: Path) -> dict:
    doc = yaml.safe_load(path.read_text())
    # YAML 1.1 reads the `on:` key as True.
    doc["on"] = doc.pop(True, doc.get("on"))
    return doc


def test_the_expected_workflows_exist():
    assert {p.stem for p in WORKFLOWS} >= {"ci", "release", "promote", "champion-alias"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actionlint(path: Path):
    tool("shellcheck")  # actionlint silently skips `run:` scripts without it
    proc = subprocess.run(
        [tool("actionlint"), "-no-color", str(path)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_actions_are_pinned_by_commit_sha(path: Path):
    uses = [USES_RE.match(line) for line in path.read_text().splitlines()]
    uses = [m for m in uses if m]
    assert uses or path.stem == "none"
    for m in uses:
        ref, comment = m.group(1), m.group(2)
        if ref.startswith("./"):
            continue
        assert re.fullmatch(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}", ref), f"not pinned by SHA: {ref}"
        version = re.search(r"#\s*v(\d+)\.(\d+)\.(\d+)", comment)
        assert version, f"{ref}: say which version (# vX.Y.Z)"
        action = ref.split("@")[0]
        assert action in NODE24_SINCE, f"{action}: which release runs on Node 24? (NODE24_SINCE)"
        assert tuple(map(int, version.groups())) >= NODE24_SINCE[action], f"{ref} runs on node20"


def test_zizmor_finds_nothing():
    """zizmor (offline, its default persona): no credential left in .git by checkout, App tokens
    narrowed, no template injection, no excessive permissions..."""
    zizmor = Path(sys.executable).parent / "zizmor"
    proc = subprocess.run(
        [str(zizmor), "--offline", "--no-progress", str(ROOT / ".github" / "workflows")],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
    assert "No findings to report" in proc.stdout + proc.stderr


def steps_using(action: str):
    for path in WORKFLOWS:
        for job_id, job in workflow(path)["jobs"].items():
            for step in job.get("steps", []):
                if step.get("uses", "").startswith(f"{action}@"):
                    yield path.name, job_id, step


def test_app_tokens_are_narrowed_and_checkout_stores_no_credential():
    """The App token can push a branch and open a pull request, nothing else (it would inherit
    every permission of the App's installation); no checkout writes a token into .git, where any
    later step could read it: the one step that pushes gets the token in its environment."""
    apps = list(steps_using("actions/create-github-app-token"))
    assert apps
    for where, job, step in apps:
        narrowed = {k: v for k, v in step["with"].items() if k.startswith("permission-")}
        assert narrowed == {"permission-contents": "write", "permission-pull-requests": "write"}, (
            where,
            job,
        )
        assert "client-id" in step["with"] and "app-id" not in step["with"], "app-id is deprecated"
    for where, job, step in steps_using("actions/checkout"):
        assert step.get("with", {}).get("persist-credentials") is False, (where, job)
        assert "token" not in step.get("with", {}), (where, job)


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_least_privilege(path: Path):
    doc = workflow(path)
    assert "permissions" in doc, "set top-level permissions (default token is read/write)"
    top = doc["permissions"]
    assert top == {} or set(top.values()) <= {"read"}, f"top-level permissions too wide: {top}"
    for name, job in doc["jobs"].items():
        for scope, level in (job.get("permissions") or {}).items():
            assert level in ("read", "write", "none"), (name, scope)
        assert job.get("timeout-minutes"), f"job {name} has no timeout"


def test_writers_use_an_app_token_and_a_per_environment_concurrency_group():
    groups = {}
    for path in WORKFLOWS:
        doc, text = workflow(path), path.read_text()
        groups[path.stem] = doc.get("concurrency", {}).get("group", "")
        if "scripts/gitops.py release" in text or "scripts/gitops.py promote" in text:
            # A PR opened with GITHUB_TOKEN triggers no workflow, so its CI would never run.
            assert "actions/create-github-app-token@" in text, path.name
            assert "GH_TOKEN: ${{ steps.app-token.outputs.token }}" in text, path.name
            assert "secrets.GITHUB_TOKEN" not in text.split("bump-dev:")[-1], path.name
    assert groups["release"] == "gitops-dev"
    assert groups["promote"] == "gitops-${{ inputs.to }}"
    assert groups["champion-alias"].startswith("gitops-prod")


def test_promote_goes_to_the_next_environment_only():
    """The workflow asks only where to promote to; it promotes from the environment before
    it (gitops.py refuses a skip anyway)."""
    doc = workflow(ROOT / ".github/workflows/promote.yml")
    inputs = doc["on"]["workflow_dispatch"]["inputs"]
    assert set(inputs) == {"to", "quality-gate-override", "rollout-check-skip"}
    assert inputs["to"]["type"] == "choice" and inputs["to"]["required"]
    assert inputs["to"]["options"] == ["staging", "prod"]
    assert inputs["quality-gate-override"]["required"] is False
    step = doc["jobs"]["promote"]["steps"][-1]
    script = step["run"]
    assert "staging) from=dev ;;" in script and "prod) from=staging ;;" in script
    # the source's rollout is read with the reader's kubeconfig; skipping it takes a reason
    assert step["env"]["ARGOCD_KUBECONFIG"] == "${{ secrets.ARGOCD_KUBECONFIG }}"
    assert inputs["rollout-check-skip"]["required"] is False
    assert '--skip-rollout-check "$ROLLOUT_CHECK_SKIP"' in script


@pytest.mark.parametrize(("name", "job"), [("release", "bump-dev"), ("promote", "promote")])
def test_the_quality_gate_gets_mlflow_and_an_override_input(name: str, job: str):
    """The step that opens the PR runs the gate: it needs the registry, and a person can
    override it with a reason from the Actions UI (workflow_dispatch input)."""
    doc = workflow(ROOT / f".github/workflows/{name}.yml")
    assert "quality-gate-override" in doc["on"]["workflow_dispatch"]["inputs"]
    (step,) = [s for s in doc["jobs"][job]["steps"] if "scripts/gitops.py" in s.get("run", "")]
    env = step["env"]
    assert env["MLFLOW_TRACKING_URI"] == "${{ secrets.MLFLOW_TRACKING_URI }}"
    assert env["GATE_OVERRIDE"] == "${{ inputs.quality-gate-override }}"
    assert '--override-quality-gate "$GATE_OVERRIDE"' in step["run"]


def test_champion_moves_when_prod_serves_not_when_it_merges():
    """The alias follows Argo CD's report that prod is synced and healthy (a
    repository_dispatch from Argo CD Notifications), or a person; never a push to main."""
    doc = workflow(ROOT / ".github/workflows/champion-alias.yml")
    assert set(doc["on"]) == {"repository_dispatch", "workflow_dispatch"}
    assert doc["on"]["repository_dispatch"]["types"] == ["ml-service-deployed"]
    job = doc["jobs"]["set-alias"]
    assert "client_payload.environment == 'prod'" in job["if"]
    (step,) = [s for s in job["steps"] if "set-alias" in s.get("run", "")]
    assert step["env"]["VERSION"] == "${{ github.event.client_payload.version || inputs.version }}"
    assert '--version "$VERSION"' in step["run"]
    checkout = next(s for s in job["steps"] if "actions/checkout@" in s.get("uses", ""))
    assert checkout["with"]["fetch-depth"] == 0, "set-alias reads the release file's history"


def test_pull_requests_build_the_image_without_pushing():
    ci = workflow(ROOT / ".github/workflows/ci.yml")
    assert {"pull_request", "push", "schedule"} <= set(ci["on"])
    steps = ci["jobs"]["image"]["steps"]
    builds = [s for s in steps if "docker/build-push-action@" in s.get("uses", "")]
    assert builds and all(s["with"]["push"] is False for s in builds)
    assert "packages" not in (ci.get("permissions") or {})


def test_no_secret_values_in_workflows():
    for path in WORKFLOWS:
        for line in path.read_text().splitlines():
            key = re.match(r"^\s*(?:-\s+)?([\w-]+)\s*:\s*(\S.*)$", line)
            if key and re.search(r"password|token|private-key|secret", key.group(1), re.I):
                assert "${{" in line, f"{path.name}: literal credential? {line.strip()}"


def test_dependabot_covers_actions_pip_and_docker():
    cfg = yaml.safe_load((ROOT / ".github" / "dependabot.yml").read_text())
    assert cfg["version"] == 2
    ecosystems = {u["package-ecosystem"] for u in cfg["updates"]}
    assert {"github-actions", "pip", "docker"} <= ecosystems


def pytest_args(run: str) -> list[str]:
    """The arguments of the one pytest command in a step's `run` script."""
    words = shlex.split(run.replace("\\\n", " "))
    (at,) = [i for i, word in enumerate(words) if Path(word).name == "pytest"]
    return words[at + 1 :]


def collected(args: list[str]) -> list[str]:
    """The test ids `pytest args` selects (collection only)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTEST_ADDOPTS"}
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", "-p", "no:cacheprovider", *args],
        cwd=ROOT, env=env, capture_output=True, text=True, check=False, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, f"pytest {shlex.join(args)}:\n{proc.stdout[-3000:]}{proc.stderr}"
    return [line for line in proc.stdout.splitlines() if "::" in line]


def test_ci_splits_the_suite_and_a_release_pr_skips_it():
    """ci.yml's jobs run every test of .ci/run (`make test`: the whole suite) exactly once: the
    first signal (lint, unit, and the chart and gitops tests that start no server and need no
    Argo CD build), every other tier, cluster; pytest itself collects each job's selection. Each
    job runs only when the pull request changes more than release files, and nightly; the Go and
    uv caches are keyed by the files that pin what they hold."""
    ci = workflow(ROOT / ".github/workflows/ci.yml")
    jobs = ci["jobs"]
    assert "schedule" in ci["on"], "nightly, on main as it is"
    script = jobs["changes"]["steps"][-1]["run"]
    assert "environments/[^/]+/release\\.yaml" in script
    for name, job in jobs.items():
        if name != "changes":
            assert job["needs"] == "changes" and "needs.changes.outputs.code == 'true'" in job["if"]
    runs = {name: " ".join(s.get("run", "") for s in job["steps"]) for name, job in jobs.items()}
    assert "make lint" in runs["lint-unit-chart-gitops"]
    testing = {name: pytest_args(run) for name, run in runs.items() if "pytest" in run}
    assert sorted(testing) == ["cluster", "integration", "lint-unit-chart-gitops"]
    with ThreadPoolExecutor() as pool:
        whole = pool.submit(collected, [])
        per_job = dict(zip(testing, pool.map(collected, testing.values()), strict=True))
    runs_in: dict[str, list[str]] = {}
    for name, ids in per_job.items():
        for test in ids:
            runs_in.setdefault(test, []).append(name)
    assert not {t: n for t, n in runs_in.items() if len(n) > 1}, "a test runs in two jobs"
    assert set(runs_in) == set(whole.result()), "every test runs in some job"
    for name in ("lint-unit-chart-gitops", "integration", "cluster"):
        (cache,) = [
            s for s in jobs[name]["steps"] if s.get("uses", "").startswith("actions/cache@")
        ]
        paths = set(cache["with"]["path"].split())
        assert {ci["env"]["GOCACHE"], ci["env"]["GOMODCACHE"], ci["env"]["UV_CACHE_DIR"]} <= paths
        assert "hashFiles(" in cache["with"]["key"]


def test_cluster_job_cache_follows_every_pin_of_make_setup():
    """The cluster job runs the whole `make setup` (Kubernetes, Argo CD, Argo Rollouts... from
    their Go modules): its cache key hashes every mk file and every Go module's go.sum."""
    job = workflow(ROOT / ".github/workflows/ci.yml")["jobs"]["cluster"]
    assert any(s.get("run", "").endswith("make setup") for s in job["steps"])
    (cache,) = [s for s in job["steps"] if s.get("uses", "").startswith("actions/cache@")]
    patterns = re.findall(r"'([^']+)'", cache["with"]["key"])
    hashed = {path for pattern in patterns for path in ROOT.glob(pattern)}
    pins = {*ROOT.glob("mk/*.mk"), *ROOT.glob("tests/**/go.sum")}
    assert ROOT / "tests/cluster/gobuild/rollouts/go.sum" in pins
    assert not pins - hashed, sorted(str(p.relative_to(ROOT)) for p in pins - hashed)


def test_the_first_signal_builds_no_argo_cd():
    """CI's first job sets up what its tests use and not Argo CD (the longest build of all): the
    tests that need it are marked `argocd` and run in the integration job."""
    steps = workflow(ROOT / ".github/workflows/ci.yml")["jobs"]["lint-unit-chart-gitops"]["steps"]
    (setup,) = [shlex.split(s["run"]) for s in steps if "setup-" in s.get("run", "")]
    targets = setup[setup.index("make") + 1 :]
    assert "setup-workflows" in targets and "setup-chart" in targets

    def dry_run(*targets: str) -> str:  # every command, as if nothing were built yet
        return subprocess.run(["make", "-nB", *targets], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout  # fmt: skip

    assert "github.com/argoproj/argo-cd" in dry_run("setup-gitops")
    assert "github.com/argoproj/argo-cd" not in dry_run(*targets)


def test_release_check_runs_on_every_pull_request():
    doc = workflow(ROOT / ".github/workflows/release-check.yml")
    assert set(doc["on"]) == {"pull_request"} and not doc["on"]["pull_request"]
    (job,) = doc["jobs"].values()
    assert job["timeout-minutes"] <= 10
    (step,) = [s for s in job["steps"] if "scripts/gitops.py check" in s.get("run", "")]
    assert '--base "origin/$BASE_REF"' in step["run"] and '--head "$HEAD"' in step["run"]
    assert step["env"]["MLFLOW_TRACKING_URI"] == "${{ secrets.MLFLOW_TRACKING_URI }}"


def test_release_workflow_ships_values_only_changes():
    """A push that changes environments/<env>/values.yaml only releases them (no training, no
    image); a merged release file or the gate's thresholds release nothing."""
    doc = workflow(ROOT / ".github/workflows/release.yml")
    ignored = doc["on"]["push"]["paths-ignore"]
    assert "environments/*/release.yaml" in ignored and "environments/**" not in ignored
    jobs = doc["jobs"]
    assert jobs["train"]["if"] == jobs["image"]["if"] == "needs.plan.outputs.mode == 'full'"
    bump = jobs["bump-dev"]
    assert "needs.plan.outputs.mode == 'values'" in bump["if"]
    run = bump["steps"][-1]["run"]
    assert '--values-only --revision "$GITHUB_SHA"' in run


# --------------------------------------------------------------------------- a GitHub runner


def fake_runner(tmp_path: Path, *present: str) -> tuple[Path, dict]:
    """A PATH holding only fake commands (`present`, and an apt-get that records its calls): the
    layout of a runner image without touching the machine's own packages."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "apt.log"
    for name in present:
        (bin_dir / name).write_text("#!/bin/sh\nexit 0\n")
        (bin_dir / name).chmod(0o755)
    (bin_dir / "apt-get").write_text(f'#!/bin/sh\necho "$*" >> {log}\n')
    (bin_dir / "apt-get").chmod(0o755)
    env = {"PATH": str(bin_dir), "DOCKER": str(bin_dir / "docker"), "HOME": str(tmp_path)}
    return log, env


@pytest.mark.parametrize(
    ("present", "installed"),
    [
        # ubuntu-24.04 runner: Docker CE (dockerd, docker), no debootstrap
        (("dockerd", "docker"), ["debootstrap"]),
        ((), ["docker.io", "debootstrap"]),  # a fresh Debian machine
        (("dockerd", "docker", "debootstrap"), []),  # everything there: apt is not even called
    ],
    ids=["runner-docker-ce", "fresh-debian", "complete"],
)
def test_setup_leaves_an_installed_docker_alone(tmp_path: Path, present, installed):
    """`make setup-image` on a GitHub runner: docker.io is never installed over the runner's
    Docker CE (apt would remove docker-ce and containerd.io for it), debootstrap still is."""
    log, env = fake_runner(tmp_path, *present)
    bash = "/bin/bash"
    proc = subprocess.run(
        [bash, str(ROOT / "scripts" / "docker" / "install-engine.sh")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    calls = log.read_text().splitlines() if log.exists() else []
    if not installed:
        assert calls == []
        return
    install = [c for c in calls if " install " in f" {c} "]
    assert len(install) == 1, calls
    assert install[0].split()[-len(installed) :] == installed
    assert "docker.io" not in install[0] or "dockerd" not in present


def test_setup_names_a_missing_client_instead_of_replacing_the_engine(tmp_path: Path):
    log, env = fake_runner(tmp_path, "dockerd", "debootstrap")
    proc = subprocess.run(
        ["/bin/bash", str(ROOT / "scripts" / "docker" / "install-engine.sh")],
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1 and "its client" in proc.stderr
    assert not log.exists()


def test_the_image_tier_installs_through_that_script():
    mk = (ROOT / "mk" / "image.mk").read_text()
    assert "$(DOCKER_SCRIPTS)/install-engine.sh" in mk
    recipe = mk.split("\nsetup-image:")[1].split("\n\n")[0].splitlines()[1:]
    assert not [line for line in recipe if "apt-get" in line], "apt only through the script"
    assert os.access(ROOT / "scripts" / "docker" / "install-engine.sh", os.X_OK)
