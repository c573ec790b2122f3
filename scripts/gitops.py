#!/usr/bin/env python3
"""Release and promotion by pull request for ml-service (see docs/gitops.md).

    gitops.py release --image-repository R --tag T --digest D --model-version V   # -> dev
    gitops.py release --values-only --revision C        # dev: C's chart+values, same image+model
    gitops.py promote dev staging                                               # copy release.yaml
    gitops.py rollback prod                             # back to the state prod ran before
    gitops.py rollback staging --aborted NOTIFICATION   # a canary the analysis aborted
    gitops.py check --base origin/main --head HEAD      # a release PR's required check
    gitops.py set-alias prod [--version V]                                      # MLflow alias
    gitops.py render dev                                                        # helm template
    gitops.py pin-platform --image mlflow-server=REF@DIGEST ...                 # platform images

`release` and `promote` never touch the caller's work tree: they check out the base branch in a
temporary git worktree, write `environments/<env>/release.yaml` there (round-trip, comments and
formatting kept; created on the first release to an environment), run the quality gate
(ml_service.release.quality_gate: the new model against the one the environment runs), check
that the environment still renders, commit on the deterministic branch `gitops/<env>`,
force-push it and open or update the one pull request of that environment with `gh`.
`check` is what a release or promotion pull request must pass (workflow release-check): it
proves from git and the MLflow registry what the tool that wrote the PR promised, so a hand-edited
bot branch or a hand-written PR fails it.
Exit codes: 0 done (or already up to date), 2 bad input or failure, 3 refused (no-op, downgrade
without --force, a skipped environment, a failed quality gate without --override-quality-gate, a
pull request the check rejects).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.scalarstring import ScalarString

ROOT = Path(__file__).resolve().parents[1]
# The quality gate lives in the app package of this same checkout (ml_service.release.quality_gate).
if (ROOT / "app" / "ml_service").is_dir() and str(ROOT / "app") not in sys.path:
    sys.path.insert(0, str(ROOT / "app"))

# Promotion order: a release goes to dev, each promotion to the next environment only.
ENVIRONMENTS = ("dev", "staging", "prod")
RELEASE_NAME = "ml-service"
CHART_PATH = "charts/ml-service"
BRANCH_PREFIX = "gitops/"
DEFAULT_ALIAS = "champion"
GATE_CONFIG = "environments/quality-gate.yaml"
# Where Argo CD keeps the environments' Applications (`promote` reads the source's).
ARGOCD_NAMESPACE = "argocd"
# Bot identity used only when git has none configured (fresh CI runners).
BOT_NAME = "ml-service-gitops"
BOT_EMAIL = "ml-service-gitops@users.noreply.github.com"

EXIT_ERROR = 2
EXIT_REFUSED = 3

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")
REPOSITORY_RE = re.compile(r"^[a-z0-9]+([._/-][a-z0-9]+)*(:[0-9]+)?(/[a-z0-9]+([._-][a-z0-9]+)*)*$")
VERSION_RE = re.compile(r"^[1-9][0-9]{0,8}$")
MODEL_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
COMMIT_RE = re.compile(r"^[0-9a-f]{7,40}$")
REVISION_RE = re.compile(r"^[0-9a-f]{40}$")

# Written on the first release to an environment (then edited round-trip, comments kept).
RELEASE_TEMPLATE = """\
# Promotable state of {env}: what runs here. Written by scripts/gitops.py (release / promote) and
# changed only by pull request; promotion copies it to the next environment. The ApplicationSet
# reads it (argocd/apps/applicationset.yaml): no file, no Application. Static settings live in
# values.yaml beside this file.
# The commit of this repository the environment runs: Argo CD renders charts/ml-service from it.
revision: ""
image:
  repository: ""
  # The commit the image was built from; the digest pins the exact image that runs.
  tag: ""
  digest: ""
model:
  name: ""
  # An exact registered version, never an alias: what runs is what was reviewed.
  version: ""
"""


class GitopsError(Exception):
    """A failure with a message for the user (no traceback)."""

    code = EXIT_ERROR


class Refused(GitopsError):
    code = EXIT_REFUSED


# --------------------------------------------------------------------------- release state


@dataclass(frozen=True)
class ReleaseState:
    revision: str
    image_repository: str
    image_tag: str
    image_digest: str
    model_name: str
    model_version: str

    @classmethod
    def from_doc(cls, doc: dict, where: str) -> ReleaseState:
        try:
            image, model = doc["image"], doc["model"]
            state = cls(
                str(doc["revision"]),
                str(image["repository"]),
                str(image["tag"]),
                str(image.get("digest") or ""),
                str(model["name"]),
                str(model["version"]),
            )
        except (KeyError, TypeError) as exc:
            raise GitopsError(
                f"{where}: missing key {exc} (needs revision, image.repository/tag/digest, "
                "model.name/version)"
            ) from None
        return state

    def validate(self) -> None:
        checks = [
            ("revision (full commit sha)", self.revision, REVISION_RE),
            ("image repository", self.image_repository, REPOSITORY_RE),
            ("image tag", self.image_tag, TAG_RE),
            ("model name", self.model_name, MODEL_NAME_RE),
            ("model version", self.model_version, VERSION_RE),
        ]
        if self.image_digest:
            checks.append(("image digest", self.image_digest, DIGEST_RE))
        for what, value, pattern in checks:
            if not pattern.match(value):
                # The value itself is not echoed back: it may come from an untrusted workflow input.
                raise GitopsError(f"invalid {what} (expected {pattern.pattern})")

    def describe(self) -> str:
        digest = self.image_digest[:19] + "…" if self.image_digest else "no digest"
        return (
            f"chart at {self.revision[:12]}, image {self.image_repository}:{self.image_tag} "
            f"({digest}), model {self.model_name} v{self.model_version}"
        )

    def record(self) -> str:
        """The state as the registry records it next to the gate's verdict (one string)."""
        image = f"{self.image_repository}:{self.image_tag}@{self.image_digest}"
        model = f"{self.model_name}/{self.model_version}"
        return json.dumps({"revision": self.revision, "image": image, "model": model})

    def values_object(self) -> dict:
        """The chart values the ApplicationSet template builds from these keys (valuesObject)."""
        return {
            "image": {
                "repository": self.image_repository,
                "tag": self.image_tag,
                "digest": self.image_digest,
            },
            "model": {"name": self.model_name, "version": self.model_version},
        }


def _yaml() -> YAML:
    yaml = YAML()  # round-trip: comments, key order, quoting kept
    yaml.preserve_quotes = True
    yaml.width = 4096
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def load_release(text: str, where: str) -> tuple[dict, ReleaseState]:
    doc = _yaml().load(text)
    if not isinstance(doc, dict):
        raise GitopsError(f"{where}: not a YAML mapping")
    return doc, ReleaseState.from_doc(doc, where)


def _like(old, new: str):
    """`new` in the scalar style of `old`: quoted stays quoted, an int stays an int."""
    if isinstance(old, bool):
        raise GitopsError("release file holds a boolean where a string is expected")
    if isinstance(old, int):
        return int(new)
    if isinstance(old, ScalarString):
        return type(old)(new)
    return new


def apply_state(doc: dict, state: ReleaseState) -> None:
    doc["revision"] = _like(doc.get("revision"), state.revision)
    for section, key, value in (
        ("image", "repository", state.image_repository),
        ("image", "tag", state.image_tag),
        ("image", "digest", state.image_digest),
        ("model", "name", state.model_name),
        ("model", "version", state.model_version),
    ):
        block = doc[section]
        block[key] = _like(block.get(key), value)


def dump(doc: dict) -> str:
    buf = io.StringIO()
    _yaml().dump(doc, buf)
    return buf.getvalue()


def edit_release_text(text: str | None, state: ReleaseState, where: str, env: str) -> str:
    """`text` with the new state (None: the environment's first release, from the template)."""
    doc = _yaml().load(text if text is not None else RELEASE_TEMPLATE.format(env=env))
    if not isinstance(doc, dict):
        raise GitopsError(f"{where}: not a YAML mapping")
    apply_state(doc, state)
    return dump(doc)


# --------------------------------------------------------------------------- git


def git(repo: Path, *args: str, check: bool = True, env: dict | None = None) -> str:
    proc = subprocess.run(
        ["git", "-C", str(repo), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, **(env or {})},
    )
    if check and proc.returncode != 0:
        raise GitopsError(f"git {' '.join(args[:3])} failed: {proc.stderr.strip()[-800:]}")
    return proc.stdout.strip()


def git_ok(repo: Path, *args: str) -> bool:
    return (
        subprocess.run(["git", "-C", str(repo), *args], capture_output=True, check=False).returncode
        == 0
    )


def identity_args(repo: Path) -> list[str]:
    args = []
    if not git(repo, "config", "user.name", check=False):
        args += ["-c", f"user.name={BOT_NAME}"]
    if not git(repo, "config", "user.email", check=False):
        args += ["-c", f"user.email={BOT_EMAIL}"]
    return args


@dataclass
class Base:
    ref: str  # what the branch starts from: <remote>/<base> or the local branch
    commit: str
    remote: str | None


def resolve_base(repo: Path, base: str, remote: str) -> Base:
    remotes = git(repo, "remote").split()
    if remote in remotes:
        git(repo, "fetch", "--quiet", remote, f"+refs/heads/{base}:refs/remotes/{remote}/{base}")
        ref = f"{remote}/{base}"
        return Base(ref, git(repo, "rev-parse", f"{ref}^{{commit}}"), remote)
    if not git_ok(repo, "rev-parse", "--verify", f"{base}^{{commit}}"):
        raise GitopsError(f"base branch {base!r} not found (and no remote {remote!r})")
    return Base(base, git(repo, "rev-parse", f"{base}^{{commit}}"), None)


def read_at(repo: Path, ref: str, path: str, missing_ok: bool = False) -> str | None:
    proc = subprocess.run(
        ["git", "-C", str(repo), "show", f"{ref}:{path}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        if missing_ok and not git_ok(repo, "cat-file", "-e", f"{ref}:{path}"):
            return None
        raise GitopsError(f"{path} not found on {ref}")
    return proc.stdout


@contextlib.contextmanager
def worktree(repo: Path, branch: str, start: str) -> Iterator[Path]:
    tmp = Path(tempfile.mkdtemp(prefix="gitops-"))
    wt = tmp / "wt"
    git(repo, "worktree", "add", "--quiet", "-B", branch, str(wt), start)
    try:
        yield wt
    finally:
        git(repo, "worktree", "remove", "--force", str(wt), check=False)
        git(repo, "worktree", "prune", check=False)
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- checks


def is_ancestor(repo: Path, older: str, newer: str) -> bool:
    return git_ok(repo, "merge-base", "--is-ancestor", older, newer)


def known_commit(repo: Path, sha: str) -> bool:
    return bool(COMMIT_RE.match(sha)) and git_ok(repo, "cat-file", "-e", f"{sha}^{{commit}}")


def check_change(
    repo: Path, current: ReleaseState | None, new: ReleaseState, env: str, force: bool
) -> None:
    if current is None:
        return  # the environment's first release
    if current == new:
        raise Refused(
            f"{env} already runs {new.describe()}: nothing to do (use --force to rewrite it anyway)"
        )
    problems = []
    if current.model_name == new.model_name and int(new.model_version) < int(current.model_version):
        problems.append(f"model version {new.model_version} < {current.model_version}")
    if (
        new.revision != current.revision
        and known_commit(repo, new.revision)
        and known_commit(repo, current.revision)
        and is_ancestor(repo, new.revision, current.revision)
    ):
        problems.append(f"commit {new.revision[:12]} is older than {current.revision[:12]}")
    if problems and not force:
        raise Refused(f"refusing to downgrade {env}: " + "; ".join(problems) + " (use --force)")


def helm_args(env: str, chart_root: Path, values_object: Path) -> tuple[list[str], Path]:
    """`helm template` args as Argo CD's repo-server builds them for the env's Application.

    The chart and environments/<env>/values.yaml come from the commit release.yaml pins
    (`chart_root`: that commit's tree), then the valuesObject the ApplicationSet builds from
    release.yaml (`values_object`, written to a file: the repo-server passes it last).
    tests/gitops checks these against the generated Application."""
    chart = chart_root / CHART_PATH
    args = ["template", ".", "--name-template", RELEASE_NAME, "--namespace", f"ml-service-{env}"]
    args += ["--values", str((chart_root / "environments" / env / "values.yaml").resolve())]
    args += ["--values", str(values_object)]
    return [*args, "--include-crds"], chart


def tree_at(repo: Path, revision: str, dest: Path) -> Path:
    """The repository's tree at `revision`, extracted to `dest` (the chart source Argo CD uses)."""
    if not known_commit(repo, revision):
        raise GitopsError(
            f"commit {revision[:12]} (release.yaml `revision`) is not in this clone: fetch it"
        )
    proc = subprocess.run(
        ["git", "-C", str(repo), "archive", "--format=tar", revision],
        capture_output=True,
        check=False,
    )
    if proc.returncode != 0:
        raise GitopsError(f"git archive {revision[:12]} failed: {proc.stderr.decode()[-500:]}")
    with tarfile.open(fileobj=io.BytesIO(proc.stdout)) as tar:
        tar.extractall(dest, filter="tar")
    return dest


def render(env: str, work: Path, state: ReleaseState, repo: Path | None = None) -> str:
    """The environment as its Application renders: chart and values.yaml at state.revision (from
    the repository `repo`, else the work tree `work`), image/model from `state`."""
    helm = shutil.which("helm")
    helm = os.path.abspath(helm) if helm else None
    if helm is None:
        raise GitopsError("helm not found on PATH: run `make setup` (or pass --no-render-check)")
    with tempfile.TemporaryDirectory(prefix="gitops-render-") as tmp:
        chart_root = tree_at(repo or work, state.revision, Path(tmp) / "tree")
        values_object = Path(tmp) / "values-object.yaml"
        values_object.write_text(dump(state.values_object()))
        args, chart = helm_args(env, chart_root, values_object)
        if not (chart / "Chart.yaml").is_file():
            raise GitopsError(f"{CHART_PATH} does not exist at {state.revision[:12]}")
        proc = subprocess.run([helm, *args], cwd=chart, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise GitopsError(f"environment {env} does not render: {proc.stderr.strip()[-2000:]}")
    return proc.stdout


# --------------------------------------------------------------------------- pull requests


def open_or_update_pr(
    repo: Path, branch: str, base: str, title: str, body: str, no_pr: bool
) -> str:
    if no_pr:
        return f"branch {branch} pushed; no pull request (--no-pr)"
    gh = shutil.which("gh")
    if gh is None:
        if os.environ.get("CI"):
            raise GitopsError("gh not found on PATH in CI: cannot open the pull request")
        return f"branch {branch} pushed; gh not found, open the pull request by hand"
    existing = subprocess.run(
        [
            gh,
            "pr",
            "list",
            "--head",
            branch,
            "--base",
            base,
            "--state",
            "open",
            "--json",
            "number",
            "--jq",
            ".[0].number",
        ],
        cwd=repo,
        capture_output=True,
        text=True,
        check=False,
    )
    if existing.returncode != 0:
        raise GitopsError(f"gh pr list failed: {existing.stderr.strip()[-500:]}")
    number = existing.stdout.strip()
    if number:
        cmd = [gh, "pr", "edit", number, "--title", title, "--body", body]
        verb = f"updated pull request #{number}"
    else:
        cmd = [
            gh,
            "pr",
            "create",
            "--head",
            branch,
            "--base",
            base,
            "--title",
            title,
            "--body",
            body,
        ]
        verb = "opened a pull request"
    proc = subprocess.run(cmd, cwd=repo, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise GitopsError(f"gh pr {cmd[2]} failed: {proc.stderr.strip()[-500:]}")
    return f"{verb} for {branch}: {proc.stdout.strip()}"


# --------------------------------------------------------------------------- the bump


@dataclass
class Target:
    """An environment's release state on the base branch (state None: nothing released yet)."""

    env: str
    base: Base
    path: str
    text: str | None
    state: ReleaseState | None


def target(repo: Path, env: str, base: str, remote: str) -> Target:
    path = f"environments/{env}/release.yaml"
    b = resolve_base(repo, base, remote)
    text = read_at(repo, b.ref, path, missing_ok=True)
    state = None
    if text is not None:
        _, state = load_release(text, f"{path} on {b.ref}")
        state.validate()
    return Target(env, b, path, text, state)


def bump(
    repo: Path,
    t: Target,
    new: ReleaseState,
    *,
    no_pr: bool,
    render_check: bool,
    title: str,
    body: str,
    commit_body: str,
    before_push=None,
) -> str:
    def edit(wt: Path) -> None:
        (wt / t.path).parent.mkdir(parents=True, exist_ok=True)
        (wt / t.path).write_text(edit_release_text(t.text, new, t.path, t.env))
        if render_check:
            render(t.env, wt, new, repo)

    return push_change(
        repo, t.base, f"{BRANCH_PREFIX}{t.env}", t.path, edit,
        no_pr=no_pr, title=title, body=body, commit_body=commit_body, before_push=before_push,
    )  # fmt: skip


def push_change(
    repo: Path,
    base: Base,
    branch: str,
    path: str,
    edit,
    *,
    no_pr: bool,
    title: str,
    body: str,
    commit_body: str,
    before_push=None,
) -> str:
    """`edit(worktree)` changes `path` on a fresh `branch` from `base`: commit it, call
    `before_push()`, force-push the branch and open or update its one pull request (nothing pushed
    when the remote already holds the same change)."""
    with worktree(repo, branch, base.commit) as wt:
        edit(wt)
        git(wt, "add", path)
        if git_ok(wt, "diff", "--cached", "--quiet"):
            raise Refused(f"{path} unchanged after the edit: nothing to commit")
        git(wt, *identity_args(repo), "commit", "--quiet", "-m", title, "-m", commit_body)
        tree = git(wt, "rev-parse", "HEAD^{tree}")
    if before_push is not None:
        before_push()
    base_name = base.ref.removeprefix(f"{base.remote}/") if base.remote else base.ref
    if base.remote is None:
        return f"committed on local branch {branch} (no remote: not pushed)"
    remote_branch = f"refs/remotes/{base.remote}/{branch}"
    git(repo, "fetch", "--quiet", base.remote, f"+refs/heads/{branch}:{remote_branch}", check=False)
    if git_ok(repo, "rev-parse", "--verify", "--quiet", remote_branch):
        same_tree = git(repo, "rev-parse", f"{remote_branch}^{{tree}}") == tree
        same_base = git(repo, "rev-parse", f"{remote_branch}^") == base.commit
        if same_tree and same_base:
            # Keep the pushed commit (and its CI run) rather than push an identical new one.
            git(repo, "branch", "--force", branch, remote_branch)
            return (
                f"{branch} already holds this change on {base.remote}: nothing pushed; "
                + open_or_update_pr(repo, branch, base_name, title, body, no_pr)
            )
    # One branch per environment: a newer bump replaces the older one in the same PR.
    git(repo, "push", "--quiet", "--force", base.remote, f"refs/heads/{branch}:refs/heads/{branch}")
    return open_or_update_pr(repo, branch, base_name, title, body, no_pr)


# --------------------------------------------------------------------------- live state


def recorded_reason(reason: str, flag: str) -> str:
    """A person's reason as a pull request records it (one printable line, bounded)."""
    from ml_service.release import quality_gate as qg

    try:
        return qg.clean_reason(reason)
    except qg.GateError:
        raise GitopsError(f"{flag} needs a reason") from None


def live_application(env: str) -> dict:
    """env's Argo CD Application as the cluster reports it (`kubectl get application`, with the
    caller's KUBECONFIG: read access to Applications in the argocd namespace is enough)."""
    kubectl = shutil.which("kubectl")
    name = f"{RELEASE_NAME}-{env}"
    why = "kubectl is not on PATH"
    if kubectl:
        proc = subprocess.run(
            [kubectl, "get", "application", name, "-n",
             os.environ.get("ARGOCD_NAMESPACE", ARGOCD_NAMESPACE), "-o", "json"],
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        if proc.returncode == 0:
            return json.loads(proc.stdout)
        why = proc.stderr.strip()[-300:] or f"kubectl exited {proc.returncode}"
    raise Refused(
        f"cannot see whether {env} runs its release fully and healthily (Argo CD Application "
        f"{name}): {why}. Promote where kubectl reads Argo CD's Applications (KUBECONFIG), or "
        "pass --skip-rollout-check 'reason' (recorded in the pull request)"
    )


def rollout_problems(app: dict, env: str, state: ReleaseState) -> list[str]:
    """Why env does not run `state` (what its release.yaml pins) fully promoted and healthy, from
    its Application: [] when Argo CD synced exactly that state and finds every resource healthy
    (a Rollout is Healthy only once its canary reached 100 %; aborted, it is Degraded)."""
    status = app.get("status") or {}
    compared = ((status.get("sync") or {}).get("comparedTo") or {}).get("sources") or [{}]
    source = compared[0]
    values = (source.get("helm") or {}).get("valuesObject")
    if (source.get("targetRevision"), values) != (state.revision, state.values_object()):
        return [f"Argo CD has not synced {env} to what its release.yaml pins yet"]
    problems = []
    sync = (status.get("sync") or {}).get("status", "Unknown")
    if sync != "Synced":
        problems.append(f"{env} is {sync}")
    health = (status.get("health") or {}).get("status", "Unknown")
    if health != "Healthy":
        why = [
            f"{r['kind']} {r['name']}: {r['health'].get('message') or r['health'].get('status')}"
            for r in status.get("resources") or []
            if (r.get("health") or {}).get("status") not in (None, "Healthy")
        ]
        # Argo CD 3 keeps resource health in the resource tree, not in status.resources: then
        # the Application's own health message names the resource that degrades it
        if not why and (status.get("health") or {}).get("message"):
            why = [status["health"]["message"]]
        problems.append(f"{env} is {health}" + (f" ({'; '.join(why)})" if why else ""))
    return problems


# --------------------------------------------------------------------------- aborted canaries

# The notification Argo Rollouts sends when an environment's canary is aborted
# (argocd/install/argo-rollouts-notification-cm.yaml) reaches the canary-aborted workflow through
# GitHub, from anyone holding a token for the repository: every field is checked and bounded
# before it reaches a pull request.
MAX_FIELD = 300
MAX_RUNS, MAX_CHECKS = 10, 20


def one_line(value, limit: int = MAX_FIELD) -> str:
    """A notification field as a pull request may show it: a printable line, no table breaks."""
    text = " ".join("".join(ch if ch.isprintable() else " " for ch in str(value)).split())
    return text.replace("|", "\\|").replace("`", "'")[:limit]


@dataclass(frozen=True)
class AbortedCanary:
    env: str
    image: str  # what the aborted pods ran
    model_uri: str
    message: str  # the Rollout's: which check failed, how
    checks: tuple[tuple[str, str, str, str, str, str, str], ...]  # run, check, phase, counts, value

    def ran(self, state: ReleaseState) -> bool:
        """Whether the aborted pods ran `state` (image and registry model)."""
        image = f"{state.image_repository}:{state.image_tag}"
        if state.image_digest:
            image += f"@{state.image_digest}"
        model = f"models:/{state.model_name}/{state.model_version}"
        return (self.image, self.model_uri) == (image, model)

    def markdown(self) -> str:
        rows = [
            "| analysis run | check | result | passed | failed | inconclusive | last value |",
            "|---|---|---|---|---|---|---|",
            *(f"| {' | '.join(c)} |" for c in self.checks),
        ]
        return "\n".join(rows)


def read_abort_notification(path: Path) -> AbortedCanary:
    try:
        doc = json.loads(path.read_text())
        namespace = doc["namespace"]
        env = namespace.removeprefix(f"{RELEASE_NAME}-")
        if not isinstance(namespace, str) or env not in ENVIRONMENTS or env == namespace:
            raise GitopsError(f"namespace {one_line(namespace, 80)!r} is no environment's")
        checks = []
        for run in doc.get("analysis") or []:
            for m in (run.get("metrics") or [])[:MAX_CHECKS]:
                counts = [str(int(m.get(k) or 0)) for k in ("successful", "failed", "inconclusive")]
                checks.append((one_line(run.get("name", ""), 80), one_line(m["name"], 40),
                               one_line(m.get("phase", ""), 20), *counts,
                               one_line(m.get("value", ""), 60)))  # fmt: skip
            if len(checks) >= MAX_RUNS * MAX_CHECKS:
                break
        image, model = doc["image"], doc["model"]
        if not (isinstance(image, str) and isinstance(model, str)):
            raise TypeError("image and model are strings")
        return AbortedCanary(env, one_line(image), one_line(model),
                             one_line(doc.get("message", "")), tuple(checks))  # fmt: skip
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise GitopsError(f"{path}: not an abort notification ({type(exc).__name__})") from None


# --------------------------------------------------------------------------- platform images

PLATFORM_APP = "argocd/apps/mlflow-platform.yaml"
PLATFORM_CHART = "charts/mlflow-platform"
# platform.Dockerfile target -> its image block in charts/mlflow-platform's values
PLATFORM_IMAGES = {"mlflow-server": "mlflow", "postgresql": "postgresql", "minio": "s3"}


def parse_image(spec: str) -> tuple[str, str, str, str]:
    """`TARGET=REPOSITORY:TAG@DIGEST` (what the platform-images workflow pushed)."""
    target, _, ref = spec.partition("=")
    if target not in PLATFORM_IMAGES:
        raise GitopsError(f"--image TARGET=REPOSITORY:TAG@DIGEST: TARGET is one of "
                          f"{', '.join(PLATFORM_IMAGES)}")  # fmt: skip
    name, _, digest = ref.partition("@")
    repository, _, tag = name.rpartition(":")
    if not (REPOSITORY_RE.match(repository) and TAG_RE.match(tag) and DIGEST_RE.match(digest)):
        raise GitopsError(f"--image {target}: invalid repository, tag or digest (sha256:<64 hex>)")
    return target, repository, tag, digest


def pin_platform_text(text: str, images: list[tuple[str, str, str, str]]) -> str:
    """The mlflow-platform Application with each image's tag and digest in its valuesObject (the
    repository stays the chart's default: check_platform checks the pushed one is it)."""
    doc = _yaml().load(text)
    values = doc["spec"]["source"]["helm"].setdefault("valuesObject", {})
    for target, _repository, tag, digest in images:
        block = values.setdefault(PLATFORM_IMAGES[target], {}).setdefault("image", {})
        block["tag"] = _like(block.get("tag"), tag)
        block["digest"] = _like(block.get("digest"), digest)
    return dump(doc)


def check_platform(wt: Path, images: list[tuple[str, str, str, str]]) -> None:
    """The images are the chart's defaults (where the workflow pushes for this repository) and
    the Application still renders with them."""
    helm = shutil.which("helm")
    if helm is None:
        raise GitopsError("helm not found on PATH: run `make setup` (or pass --no-render-check)")
    defaults = _yaml().load((wt / PLATFORM_CHART / "values.yaml").read_text())
    for target, repository, _tag, _digest in images:
        expected = defaults[PLATFORM_IMAGES[target]]["image"]["repository"]
        if repository != expected:
            raise GitopsError(
                f"--image {target}: {repository} is not the chart's image {expected} "
                "(run `make adopt`, or push where the chart points)"
            )
    app = _yaml().load((wt / PLATFORM_APP).read_text())
    with tempfile.TemporaryDirectory(prefix="gitops-render-") as tmp:
        values = Path(tmp) / "values-object.yaml"
        values.write_text(dump(app["spec"]["source"]["helm"]["valuesObject"]))
        proc = subprocess.run(
            [helm, "template", "mlflow", str(wt / PLATFORM_CHART), "--namespace", "mlflow",
             "--values", str(values)],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
    if proc.returncode != 0:
        raise GitopsError(f"{PLATFORM_APP} does not render: {proc.stderr.strip()[-2000:]}")


def cmd_pin_platform(a: argparse.Namespace) -> str:
    images = [parse_image(spec) for spec in a.image]
    if len({i[0] for i in images}) != len(images):
        raise GitopsError("--image names each target once")
    if a.revision and not REVISION_RE.match(a.revision):
        raise GitopsError("--revision is a full commit sha")
    base = resolve_base(a.repo, a.base, a.remote)
    text = read_at(a.repo, base.ref, PLATFORM_APP)

    def edit(wt: Path) -> None:
        (wt / PLATFORM_APP).write_text(pin_platform_text(text, images))
        if a.render_check:
            check_platform(wt, images)

    lines = "\n".join(f"- `{t}`: `{r}:{g}@{d}`" for t, r, g, d in images)
    built = f" built from {a.revision}" if a.revision else ""
    title = "platform images: " + ", ".join(f"{t} {g}@{d[7:19]}" for t, _r, g, d in images)
    intro = f"Pins the images of charts/mlflow-platform{built}, as pushed by `platform-images`:"
    return push_change(
        a.repo, base, f"{BRANCH_PREFIX}platform-images", PLATFORM_APP, edit,
        no_pr=a.no_pr, title=title, body=f"{intro}\n\n{lines}\n", commit_body=f"{intro}\n{lines}",
    )  # fmt: skip


# --------------------------------------------------------------------------- quality gate


def quality_gate(a: argparse.Namespace, t: Target, new: ReleaseState):
    """The quality gate against what t.env runs, with the thresholds of the base branch.

    Returns the result (its markdown goes into the PR); a failure without an override is Refused
    (exit 3, nothing pushed)."""
    # The gate downloads both models. Through the proxied platform (charts/mlflow-platform) the
    # bucket is not reachable from CI runners: keep MLflow 3.x from switching to presigned bucket
    # URLs.
    os.environ.setdefault("MLFLOW_ENABLE_PROXY_MULTIPART_DOWNLOAD", "false")
    from ml_service.release import quality_gate as qg

    config_text = read_at(a.repo, t.base.ref, GATE_CONFIG, missing_ok=True)
    if config_text is None:
        raise GitopsError(f"{GATE_CONFIG} not found on {t.base.ref}: the quality gate needs it")
    baseline = (t.state.model_name, t.state.model_version) if t.state else None
    with tempfile.TemporaryDirectory(prefix="gitops-gate-") as tmp:
        config = Path(tmp) / GATE_CONFIG
        config.parent.mkdir(parents=True)
        config.write_text(config_text)
        try:
            result = qg.run_gate(
                t.env,
                (new.model_name, new.model_version),
                baseline,
                config_path=config,
                config_name=GATE_CONFIG,
                override_reason=a.override_gate,
            )
        except qg.GateError as exc:
            raise GitopsError(str(exc)) from None
    if not result.passed and result.error:
        raise GitopsError(
            result.failure_text()
            + "\nNothing pushed (--override-quality-gate 'reason' ships anyway)."
        )
    if not result.passed:
        raise Refused(
            result.failure_text()
            + "\nNothing pushed. A person may override with --override-quality-gate 'reason' "
            "(recorded in the MLflow run and the pull request)."
        )
    print(f"quality gate {result.verdict} for {t.env}", file=sys.stderr)
    return result


def gate_tag(env: str, key: str) -> str:
    from ml_service.release import quality_gate as qg

    return f"{qg.TAG_PREFIX}.{env}.{key}"


def record_release(env: str, gate, state: ReleaseState) -> None:
    """Record on the candidate's MLflow run, next to the gate's verdict for `env`, the exact state
    the verdict admits (commit, image digest, model): `check` accepts a pull request only for a
    state recorded so. Nothing to record when the gate never reached the registry."""
    if not gate.candidate.run_id:
        return
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    try:
        MlflowClient().set_tag(gate.candidate.run_id, gate_tag(env, "release"), state.record())
    except MlflowException as exc:
        raise GitopsError(f"could not record the release in the registry: {exc.message}") from None


# --------------------------------------------------------------------------- commands


def repo_root(start: Path) -> Path:
    out = subprocess.run(
        ["git", "-C", str(start), "rev-parse", "--show-toplevel"],
        capture_output=True,
        text=True,
        check=False,
    )
    if out.returncode != 0:
        raise GitopsError(f"{start} is not inside a git repository")
    return Path(out.stdout.strip())


def chart_changes(repo: Path, env: str, old: ReleaseState | None, new: ReleaseState) -> str:
    """What the environment's chart gains: the commits touching charts/ (and the dashboards and
    the environment's values.yaml, read at the same commit) between the two pins."""
    if old is None or old.revision == new.revision:
        return "Chart: unchanged." if old else f"Chart: `{CHART_PATH}` at {new.revision[:12]}."
    if not (known_commit(repo, old.revision) and known_commit(repo, new.revision)):
        return f"Chart: {old.revision[:12]} -> {new.revision[:12]}."
    log = git(
        repo,
        "log",
        "--format=- %h %s",
        "-n",
        "30",
        f"{old.revision}..{new.revision}",
        "--",
        "charts/",
        "dashboards/",
        f"environments/{env}/values.yaml",
    )
    head = f"Chart: {old.revision[:12]} -> {new.revision[:12]}"
    where = f"charts/ or environments/{env}/values.yaml"
    return f"{head}, changes under {where}:\n{log}" if log else f"{head} (no change under {where})."


def pr_body(intro: str, t: Target, new: ReleaseState, gate, repo: Path) -> str:
    parts = [intro, "", chart_changes(repo, t.env, t.state, new), "", gate.markdown(), ""]
    parts.append(
        f"Only `{t.path}` changes. Written by `scripts/gitops.py`; a newer run force-pushes "
        f"this branch and updates this pull request."
    )
    return "\n".join(parts)


def open_bump(
    a: argparse.Namespace, t: Target, new: ReleaseState, gate, title: str, intro: str
) -> str:
    """The bump commit and its PR (body with the quality gate table), for release and promote."""
    return bump(
        a.repo,
        t,
        new,
        no_pr=a.no_pr,
        render_check=a.render_check,
        title=title,
        body=pr_body(intro, t, new, gate, a.repo),
        commit_body=f"{intro}\nQuality gate: {gate.verdict}.",
        before_push=lambda: record_release(t.env, gate, new),
    )


def cmd_release(a: argparse.Namespace) -> str:
    t = target(a.repo, a.env, a.base, a.remote)
    given = (a.image_repository, a.tag, a.digest, a.model_version)
    if a.values_only:
        # A change to environments/ alone (values): the chart and values of the new commit, the
        # image and model the environment runs now. Nothing is rebuilt or retrained.
        if any(given):
            raise GitopsError("--values-only keeps the image and model: drop the image/model flags")
        if t.state is None:
            raise Refused(
                f"nothing is released to {a.env} yet: its first release carries these values"
            )
        if not a.revision:
            raise GitopsError("--values-only needs --revision (the commit whose values ship)")
        new = ReleaseState(
            a.revision, t.state.image_repository, t.state.image_tag, t.state.image_digest,
            t.state.model_name, t.state.model_version,
        )  # fmt: skip
    else:
        if not all(given):
            raise GitopsError(
                "release needs --image-repository, --tag, --digest and --model-version "
                "(or --values-only)"
            )
        new = ReleaseState(
            a.revision or a.tag, a.image_repository, a.tag, a.digest, a.model_name,
            str(a.model_version),
        )  # fmt: skip
    new.validate()
    check_change(a.repo, t.state, new, a.env, a.force)
    gate = quality_gate(a, t, new)
    if a.values_only:
        title = f"release({a.env}): values of {new.revision[:12]}, same image and model"
        intro = (
            f"Release of the chart and values of {new.revision[:12]} to `{a.env}`, with the image "
            f"and model it runs: {new.describe()}."
        )
    else:
        title = f"release({a.env}): image {a.tag[:12]}, model {a.model_name} v{a.model_version}"
        intro = f"Release of {new.describe()} to `{a.env}`."
    return open_bump(a, t, new, gate, title, intro)


def cmd_promote(a: argparse.Namespace) -> str:
    src, dst = ENVIRONMENTS.index(a.source), ENVIRONMENTS.index(a.target)
    if src == dst:
        raise GitopsError("from and to are the same environment")
    if dst > src + 1:
        # Never skipped, not even with --force: each environment is where the next one's
        # release is proven.
        raise Refused(
            f"promotion goes {' -> '.join(ENVIRONMENTS)} one environment at a time: "
            f"{a.source} -> {a.target} skips {', '.join(ENVIRONMENTS[src + 1 : dst])}"
        )
    if dst < src and not a.force:
        raise Refused(
            f"promotion goes {' -> '.join(ENVIRONMENTS)}; {a.source} -> {a.target} "
            "goes backwards (use --force for a rollback)"
        )
    source = target(a.repo, a.source, a.base, a.remote)
    if source.state is None:
        raise Refused(f"nothing is released to {a.source} yet: nothing to promote")
    new = source.state
    if a.skip_rollout_check is None:
        # What a promotion copies must have proven itself where it runs: every canary step
        # passed, 100 % of the pods, healthy.
        problems = rollout_problems(live_application(a.source), a.source, new)
        if problems:
            raise Refused(
                f"refusing to promote {a.source} -> {a.target}: {a.source} does not run its "
                f"release fully and healthily: {'; '.join(problems)}"
            )
    t = target(a.repo, a.target, a.base, a.remote)
    check_change(a.repo, t.state, new, a.target, a.force)
    gate = quality_gate(a, t, new)
    title = (
        f"promote({a.source}->{a.target}): image {new.image_tag[:12]}, "
        f"model {new.model_name} v{new.model_version}"
    )
    intro = f"Promotes what `{a.source}` runs to `{a.target}`: {new.describe()}."
    if a.skip_rollout_check is None:
        intro += (
            f"\n\n`{a.source}` runs it fully promoted and healthy (its Argo CD Application: "
            "Synced, Healthy)."
        )
    else:
        intro += (
            f"\n\n**Not checked** that `{a.source}` runs it fully promoted and healthy: "
            f"{recorded_reason(a.skip_rollout_check, '--skip-rollout-check')}"
        )
    if a.target == "prod":
        intro += (
            "\n\nprod syncs only by hand, inside its sync window. The MLflow alias `champion` "
            f"moves to version {new.model_version} once Argo CD reports prod synced and healthy "
            "with it (workflow `champion-alias`), not when this merges."
        )
    return open_bump(a, t, new, gate, title, intro)


def history(repo: Path, env: str, ref: str) -> list[tuple[str, ReleaseState]]:
    """(commit, state) for every change of env's release.yaml on `ref`, newest first."""
    path = f"environments/{env}/release.yaml"
    commits = git(repo, "log", "--format=%H", "-n", "500", ref, "--", path).split()
    states = []
    for commit in commits:
        text = read_at(repo, commit, path, missing_ok=True)
        if text is None:
            continue
        try:
            _, state = load_release(text, f"{path} at {commit[:12]}")
        except GitopsError:
            continue
        states.append((commit, state))
    return states


def pinned_versions(repo: Path, env: str, ref: str) -> set[tuple[str, str]]:
    """Every (model name, version) env's release.yaml has pinned on `ref` (its git history)."""
    return {(s.model_name, s.model_version) for _, s in history(repo, env, ref)}


def cmd_rollback(a: argparse.Namespace) -> str:
    """env back to a state it ran before (the one before the current, or the one `--to` names):
    no quality gate (that state passed it when it first shipped here), render check, PR.
    With --aborted (the canary-aborted workflow): only while env still pins the release whose
    canary the notification reports aborted, and with its analysis results in the PR."""
    aborted = read_abort_notification(a.aborted) if a.aborted else None
    if aborted and aborted.env != a.env:
        raise GitopsError(f"the notification is about {aborted.env}, not {a.env}")
    t = target(a.repo, a.env, a.base, a.remote)
    if t.state is None:
        raise Refused(f"nothing is released to {a.env}: nothing to roll back")
    if aborted and not aborted.ran(t.state):
        raise Refused(
            f"{a.env} pins another release than the aborted one ({aborted.model_uri}) by now: "
            "nothing to revert"
        )
    earlier = [(c, s) for c, s in history(a.repo, a.env, t.base.ref) if s != t.state]
    if a.to:
        if not COMMIT_RE.match(a.to):
            raise GitopsError(f"invalid --to (expected {COMMIT_RE.pattern})")
        earlier = [(c, s) for c, s in earlier if c.startswith(a.to)]
    if not earlier:
        raise Refused(f"{a.env} ran no other state on {t.base.ref}: nothing to roll back to")
    commit, new = earlier[0]
    title = (
        f"rollback({a.env}): image {new.image_tag[:12]}, "
        f"model {new.model_name} v{new.model_version}"
    )
    intro = (
        f"Rolls `{a.env}` back to the state its release.yaml pinned at {commit[:12]}: "
        f"{new.describe()}. No quality gate: that state passed it when it first shipped here."
    )
    parts = [intro, "", chart_changes(a.repo, a.env, t.state, new), ""]
    if aborted:
        aborted_model = f"{t.state.model_name} v{t.state.model_version}"
        title = f"revert({a.env}): canary of model {aborted_model} aborted"
        parts = [
            f"The canary analysis aborted `{a.env}`'s release of {t.state.describe()}: "
            f"{aborted.message}",
            "",
            "Every pod of the environment runs the previous release again; Argo CD shows it "
            "Degraded until this merges (git still pins the aborted release).",
            "",
            aborted.markdown(),
            "",
            *parts,
        ]
    body = "\n".join([*parts, f"Only `{t.path}` changes. Written by `scripts/gitops.py rollback`."])
    return bump(
        a.repo, t, new, no_pr=a.no_pr, render_check=a.render_check, title=title, body=body,
        commit_body=intro,
    )  # fmt: skip


# --------------------------------------------------------------------------- check


@dataclass
class Finding:
    ok: bool
    what: str


def changed_files(repo: Path, base: str, head: str) -> list[str]:
    """What the pull request changes (GitHub's three-dot diff: from the merge base)."""
    return git(repo, "diff", "--name-only", f"{base}...{head}").split()


def gate_record(name: str, version: str) -> dict[str, str] | None:
    """The tags of the model version's run (the gate's verdicts and release records), None when
    the registry has no such version."""
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        raise GitopsError("MLFLOW_TRACKING_URI is not set: the check reads the gate's verdicts")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        run_id = client.get_model_version(name, version).run_id
        return dict(client.get_run(run_id).data.tags) if run_id else {}
    except MlflowException as exc:
        if exc.error_code == "RESOURCE_DOES_NOT_EXIST":
            return None
        raise GitopsError(f"the registry did not answer: {exc.message}") from None


def check_registry(env: str, old: ReleaseState | None, new: ReleaseState) -> list[Finding]:
    """The gate's verdict for env on the arriving model, against what env runs, for this state."""
    label = f"{new.model_name} v{new.model_version}"
    tags = gate_record(new.model_name, new.model_version)
    if tags is None:
        return [Finding(False, f"{label} is not in the registry")]
    verdict = tags.get(gate_tag(env, "verdict"))
    reason = tags.get(gate_tag(env, "override_reason"))
    admitted = verdict == "passed" or (verdict == "overridden" and bool(reason))
    said = verdict or "never ran"
    if verdict == "overridden":
        said += f", override reason: {reason or 'none'}"
    leaving = f"{old.model_name} v{old.model_version}" if old else "none"
    baseline = tags.get(gate_tag(env, "baseline"), "nothing")
    record = tags.get(gate_tag(env, "release"))
    recorded = "" if record == new.record() else f" (it records {record or 'none'})"
    return [
        Finding(admitted, f"quality gate for {env} on {label}: {said}"),
        Finding(baseline == leaving, f"the gate compared it with {baseline}; {env} runs {leaving}"),
        Finding(
            record == new.record(),
            f"the registry records this state (commit, image digest, model) for {env}{recorded}",
        ),
    ]


def check_pull_request(repo: Path, base: str, head: str, image_repository: str | None):
    """(env or None, findings) for the pull request base...head."""
    base_commit = git(repo, "rev-parse", f"{base}^{{commit}}")
    head_commit = git(repo, "rev-parse", f"{head}^{{commit}}")
    files = changed_files(repo, base_commit, head_commit)
    releases = [f for f in files if re.fullmatch(r"environments/[^/]+/release\.yaml", f)]
    if not releases:
        return None, [Finding(True, "no release file changes: nothing for this check")]
    if len(files) > 1:
        return None, [
            Finding(False, "a release pull request changes one environments/<env>/release.yaml "
                    "and nothing else; this one changes: " + ", ".join(files))
        ]  # fmt: skip
    (path,) = releases
    env = path.split("/")[1]
    if env not in ENVIRONMENTS:
        return env, [Finding(False, f"{env} is not an environment ({', '.join(ENVIRONMENTS)})")]
    text = read_at(repo, head_commit, path, missing_ok=True)
    if text is None:
        return env, [Finding(False, f"{path} is deleted: only an admin removes an environment")]
    try:
        doc, new = load_release(text, path)
        new.validate()
        if set(doc) != {"revision", "image", "model"} or not new.image_digest:
            raise GitopsError("only revision, image (repository, tag, digest) and model")
    except GitopsError as exc:
        return env, [Finding(False, f"{path}: {exc}")]
    old_text = read_at(repo, base_commit, path, missing_ok=True)
    old = load_release(old_text, f"{path} on {base}")[1] if old_text is not None else None
    if old == new:
        return env, [Finding(False, f"{path} pins what {env} runs already")]

    findings: list[Finding] = []

    def add(ok: bool, what: str) -> None:
        findings.append(Finding(bool(ok), what))

    def on_base(commit: str) -> bool:
        return known_commit(repo, commit) and is_ancestor(repo, commit, base_commit)

    earlier = {state: commit for commit, state in reversed(history(repo, env, base_commit))}
    if new in earlier:
        # A rollback: a state env ran before, merged then through this same check.
        add(True, f"a rollback to the state {env} ran at {earlier[new][:12]}")
        registered = gate_record(new.model_name, new.model_version) is not None
        add(registered, f"{new.model_name} v{new.model_version} is in the registry")
        return env, findings
    add(on_base(new.revision), f"revision {new.revision[:12]} is a commit of {base}")
    try:
        check_change(repo, old, new, env, force=False)
        add(True, "nothing is lowered (model version, commit)")
    except Refused as exc:
        add(False, str(exc).removesuffix(" (use --force)"))
    position = ENVIRONMENTS.index(env)
    if position == 0:
        add(on_base(new.image_tag), f"image tag {new.image_tag[:12]} is a commit of {base}")
        if image_repository:
            add(new.image_repository == image_repository, f"image from {image_repository}")
    else:
        source = ENVIRONMENTS[position - 1]
        src_path = f"environments/{source}/release.yaml"
        src_text = read_at(repo, base_commit, src_path, missing_ok=True)
        src = load_release(src_text, src_path)[1] if src_text is not None else None
        runs = src.describe() if src else "nothing"
        add(new == src, f"the promotion copies what {source} runs now ({runs})")
    findings.extend(check_registry(env, old, new))
    return env, findings


def cmd_check(a: argparse.Namespace) -> str:
    env, findings = check_pull_request(a.repo, a.base, a.head, a.image_repository)
    lines = [f"{'ok  ' if f.ok else 'FAIL'} {f.what}" for f in findings]
    report = f"release-check ({env or 'no release'}):\n" + "\n".join(lines)
    if not all(f.ok for f in findings):
        raise Refused(report)
    return report


def released(repo: Path, env: str, missing: str) -> ReleaseState:
    """The validated release of `env` in the work tree; GitopsError(`missing`) if there is none."""
    path = repo / "environments" / env / "release.yaml"
    if not path.is_file():
        raise GitopsError(missing)
    _, state = load_release(path.read_text(), str(path.relative_to(repo)))
    state.validate()
    return state


def cmd_set_alias(a: argparse.Namespace) -> str:
    missing = f"environments/{a.env}/release.yaml not found: nothing released to {a.env}"
    state = released(a.repo, a.env, missing)
    name, version = state.model_name, state.model_version
    if a.version is not None:
        # The version Argo CD reports as synced and healthy (champion-alias.yml). It must be one a
        # reviewed pull request pinned for this environment, whatever the caller sends.
        if not VERSION_RE.match(a.version):
            raise GitopsError(f"invalid model version (expected {VERSION_RE.pattern})")
        if (name, a.version) not in pinned_versions(a.repo, a.env, "HEAD"):
            raise Refused(
                f"{name} version {a.version} was never pinned by environments/{a.env}/release.yaml"
            )
        version = a.version
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        raise GitopsError("MLFLOW_TRACKING_URI is not set")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.get_model_version(name, version)
    except MlflowException:
        raise GitopsError(f"model {name} version {version} is not in the registry") from None
    try:
        before = client.get_model_version_by_alias(name, a.alias).version
    except MlflowException:
        before = None
    if str(before) == version:
        return f"alias {a.alias} already on {name} v{version}"
    client.set_registered_model_alias(name, a.alias, version)
    return f"alias {a.alias}: {name} v{before or '-'} -> v{version}"


def cmd_render(a: argparse.Namespace) -> str:
    missing = f"nothing released to {a.env}: no Application, nothing to render"
    state = released(a.repo, a.env, missing)
    out = render(a.env, a.repo, state)
    if a.output:
        Path(a.output).write_text(out)
        return f"rendered {a.env} to {a.output}"
    sys.stdout.write(out)
    return ""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="gitops.py", description=__doc__.split("\n")[0])
    p.add_argument(
        "-C",
        dest="repo",
        type=Path,
        default=Path.cwd(),
        help="repository (default: current directory)",
    )
    sub = p.add_subparsers(dest="command", required=True)

    def pr_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--base", default="main", help="branch the PR targets (default main)")
        sp.add_argument("--remote", default="origin", help="remote to push to (default origin)")
        sp.add_argument("--no-pr", action="store_true", help="push the branch, open no PR")
        sp.add_argument(
            "--no-render-check",
            dest="render_check",
            action="store_false",
            help="skip `helm template` of the changed environment",
        )

    def bump_opts(sp: argparse.ArgumentParser) -> None:
        pr_opts(sp)
        sp.add_argument("--force", action="store_true", help="allow a no-op, downgrade, rollback")
        sp.add_argument(
            "--override-quality-gate",
            dest="override_gate",
            metavar="REASON",
            help="ship even if the quality gate fails; REASON goes into the MLflow run and the PR",
        )

    r = sub.add_parser("release", help="bump an environment (dev) to a new image and model version")
    r.add_argument("--env", default="dev", choices=ENVIRONMENTS)
    r.add_argument("--image-repository")
    r.add_argument("--tag", help="image tag (the commit it was built from)")
    r.add_argument("--digest", help="image digest sha256:...")
    r.add_argument(
        "--revision", help="commit whose chart the environment runs (default: --tag, a full sha)"
    )
    r.add_argument("--model-name", default="ml-service")
    r.add_argument("--model-version")
    r.add_argument(
        "--values-only",
        action="store_true",
        help="ship --revision's chart and values with the image and model the env runs now",
    )
    bump_opts(r)
    r.set_defaults(func=cmd_release)

    pr = sub.add_parser("promote", help="copy release.yaml from one environment to the next")
    pr.add_argument("source", choices=ENVIRONMENTS, metavar="FROM")
    pr.add_argument("target", choices=ENVIRONMENTS, metavar="TO")
    pr.add_argument(
        "--skip-rollout-check",
        metavar="REASON",
        help="promote without reading FROM's Argo CD Application; REASON goes into the PR",
    )
    bump_opts(pr)
    pr.set_defaults(func=cmd_promote)

    rb = sub.add_parser("rollback", help="put an environment back on a state it ran before")
    rb.add_argument("env", choices=ENVIRONMENTS)
    rb.add_argument("--to", help="the commit that pinned the state (default: the one before)")
    rb.add_argument(
        "--aborted",
        type=Path,
        metavar="NOTIFICATION",
        help="Argo Rollouts' abort notification (JSON): revert only the release it reports",
    )
    pr_opts(rb)
    rb.set_defaults(func=cmd_rollback)

    c = sub.add_parser("check", help="the required check of a release or promotion PR")
    c.add_argument("--base", required=True, help="the branch the PR merges into (origin/main)")
    c.add_argument("--head", default="HEAD", help="the PR's head commit (default HEAD)")
    c.add_argument("--image-repository", help="the repository release.yml pushes images to")
    c.set_defaults(func=cmd_check)

    s = sub.add_parser("set-alias", help="point an MLflow alias at the env's model version")
    s.add_argument("env", choices=ENVIRONMENTS)
    s.add_argument("--alias", default=DEFAULT_ALIAS)
    s.add_argument(
        "--version", help="the version the environment serves (must be one it pinned by PR)"
    )
    s.set_defaults(func=cmd_set_alias)

    pp = sub.add_parser("pin-platform", help="pin charts/mlflow-platform's images by digest (PR)")
    pp.add_argument("--image", action="append", required=True, metavar="TARGET=REF@DIGEST",
                    help=f"a pushed image; TARGET one of {', '.join(PLATFORM_IMAGES)}")  # fmt: skip
    pp.add_argument("--revision", help="the commit the images were built from (for the PR)")
    pp.add_argument("--base", default="main", help="branch the PR targets (default main)")
    pp.add_argument("--remote", default="origin", help="remote to push to (default origin)")
    pp.add_argument("--no-pr", action="store_true", help="push the branch, open no PR")
    pp.add_argument("--no-render-check", dest="render_check", action="store_false",
                    help="skip the image and `helm template` check")  # fmt: skip
    pp.set_defaults(func=cmd_pin_platform)

    rd = sub.add_parser("render", help="helm template the env as its Argo CD Application would")
    rd.add_argument("env", choices=ENVIRONMENTS)
    rd.add_argument("-o", "--output")
    rd.set_defaults(func=cmd_render)
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        args.repo = repo_root(args.repo)
        msg = args.func(args)
    except GitopsError as exc:
        print(f"gitops: {exc}", file=sys.stderr)
        return exc.code
    if msg:
        print(msg)
    return 0


if __name__ == "__main__":
    sys.exit(main())
