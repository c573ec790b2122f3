""".github/: actionlint (with shellcheck) on every workflow, actions pinned by commit SHA, least
privilege, a concurrency group per environment, App tokens for PRs that must trigger CI,
Dependabot."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
import yaml

from .conftest import ROOT, tool

pytestmark = pytest.mark.gitops

WORKFLOWS = sorted((ROOT / ".github" / "workflows").glob("*.y*ml"))
USES_RE = re.compile(r"^\s*(?:-\s+)?uses:\s*(\S+)(.*)$")


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
        assert re.search(r"#\s*v\d+\.\d+\.\d+", comment), f"{ref}: say which version (# vX.Y.Z)"


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
    """#13.5: the workflow asks only where to promote to; it promotes from the environment before
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
    """#15: the step that opens the PR runs the gate: it needs the registry, and a person can
    override it with a reason from the Actions UI (workflow_dispatch input)."""
    doc = workflow(ROOT / f".github/workflows/{name}.yml")
    assert "quality-gate-override" in doc["on"]["workflow_dispatch"]["inputs"]
    (step,) = [s for s in doc["jobs"][job]["steps"] if "scripts/gitops.py" in s.get("run", "")]
    env = step["env"]
    assert env["MLFLOW_TRACKING_URI"] == "${{ secrets.MLFLOW_TRACKING_URI }}"
    assert env["GATE_OVERRIDE"] == "${{ inputs.quality-gate-override }}"
    assert '--override-quality-gate "$GATE_OVERRIDE"' in step["run"]


def test_champion_moves_when_prod_serves_not_when_it_merges():
    """#13.5: the alias follows Argo CD's report that prod is synced and healthy (a
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
    assert set(ci["on"]) == {"pull_request", "push"}
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
