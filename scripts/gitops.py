#!/usr/bin/env python3
"""Release and promotion by pull request for ml-service (see docs/gitops.md).

    gitops.py release --image-repository R --tag T --digest D --model-version V   # -> dev
    gitops.py promote dev staging                                               # copy release.yaml
    gitops.py set-alias prod                                                    # MLflow alias
    gitops.py render dev                                                        # helm template

`release` and `promote` never touch the caller's work tree: they check out the base branch in a
temporary git worktree, edit `environments/<env>/release.yaml` there (round-trip, comments and
formatting kept), check that the environment still renders, commit on the deterministic branch
`gitops/<env>`, force-push it and open or update the one pull request of that environment with `gh`.
Exit codes: 0 done (or already up to date), 2 bad input or failure, 3 refused (no-op or downgrade
without --force).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.scalarstring import ScalarString

ENVIRONMENTS = ("dev", "staging", "prod")
RELEASE_NAME = "ml-service"
CHART_PATH = "charts/ml-service"
BRANCH_PREFIX = "gitops/"
DEFAULT_ALIAS = "champion"
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


class GitopsError(Exception):
    """A failure with a message for the user (no traceback)."""

    code = EXIT_ERROR


class Refused(GitopsError):
    code = EXIT_REFUSED


# --------------------------------------------------------------------------- release state


@dataclass(frozen=True)
class ReleaseState:
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
                str(image["repository"]),
                str(image["tag"]),
                str(image.get("digest") or ""),
                str(model["name"]),
                str(model["version"]),
            )
        except (KeyError, TypeError) as exc:
            raise GitopsError(
                f"{where}: missing key {exc} (needs image.repository/tag/digest, "
                "model.name/version)"
            ) from None
        return state

    def validate(self) -> None:
        checks = [
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
            f"image {self.image_repository}:{self.image_tag} ({digest}), "
            f"model {self.model_name} v{self.model_version}"
        )


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


def edit_release_text(text: str, state: ReleaseState, where: str) -> str:
    doc, _ = load_release(text, where)
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


def read_at(repo: Path, ref: str, path: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(repo), "show", f"{ref}:{path}"],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
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
    repo: Path, current: ReleaseState, new: ReleaseState, env: str, force: bool
) -> None:
    if current == new:
        raise Refused(
            f"{env} already runs {new.describe()}: nothing to do (use --force to rewrite it anyway)"
        )
    problems = []
    if current.model_name == new.model_name and int(new.model_version) < int(current.model_version):
        problems.append(f"model version {new.model_version} < {current.model_version}")
    if (
        new.image_tag != current.image_tag
        and known_commit(repo, new.image_tag)
        and known_commit(repo, current.image_tag)
        and is_ancestor(repo, new.image_tag, current.image_tag)
    ):
        problems.append(f"image {new.image_tag[:12]} is older than {current.image_tag[:12]}")
    if problems and not force:
        raise Refused(f"refusing to downgrade {env}: " + "; ".join(problems) + " (use --force)")


def helm_args(env: str, root: Path) -> tuple[list[str], Path]:
    """`helm template` args as Argo CD's repo-server builds them for the env's Application.

    tests/gitops checks these against what the ApplicationSet generates."""
    chart = root / CHART_PATH
    args = ["template", ".", "--name-template", RELEASE_NAME, "--namespace", f"ml-service-{env}"]
    for name in ("values.yaml", "release.yaml"):
        args += ["--values", str((chart / ".." / ".." / "environments" / env / name).resolve())]
    return [*args, "--include-crds"], chart


def render(env: str, root: Path) -> str:
    helm = shutil.which("helm")
    helm = os.path.abspath(helm) if helm else None
    if helm is None:
        raise GitopsError("helm not found on PATH: run `make setup` (or pass --no-render-check)")
    args, chart = helm_args(env, root)
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


def bump(
    repo: Path,
    env: str,
    new: ReleaseState,
    *,
    base: str,
    remote: str,
    force: bool,
    no_pr: bool,
    render_check: bool,
    title: str,
    body: str,
) -> str:
    path = f"environments/{env}/release.yaml"
    b = resolve_base(repo, base, remote)
    current_text = read_at(repo, b.ref, path)
    _, current = load_release(current_text, f"{path} on {b.ref}")
    current.validate()
    check_change(repo, current, new, env, force)

    branch = f"{BRANCH_PREFIX}{env}"
    with worktree(repo, branch, b.commit) as wt:
        (wt / path).write_text(edit_release_text(current_text, new, path))
        if render_check:
            render(env, wt)
        git(wt, "add", path)
        if git_ok(wt, "diff", "--cached", "--quiet"):
            raise Refused(f"{path} unchanged after the edit: nothing to commit")
        git(wt, *identity_args(repo), "commit", "--quiet", "-m", title, "-m", body)
        tree = git(wt, "rev-parse", "HEAD^{tree}")
    if b.remote is None:
        return f"committed on local branch {branch} (no remote {remote!r}: not pushed)"
    remote_branch = f"refs/remotes/{b.remote}/{branch}"
    git(repo, "fetch", "--quiet", b.remote, f"+refs/heads/{branch}:{remote_branch}", check=False)
    if git_ok(repo, "rev-parse", "--verify", "--quiet", remote_branch):
        same_tree = git(repo, "rev-parse", f"{remote_branch}^{{tree}}") == tree
        same_base = git(repo, "rev-parse", f"{remote_branch}^") == b.commit
        if same_tree and same_base:
            # Keep the pushed commit (and its CI run) rather than push an identical new one.
            git(repo, "branch", "--force", branch, remote_branch)
            return (
                f"{branch} already holds this change on {b.remote}: nothing pushed; "
                + open_or_update_pr(repo, branch, base, title, body, no_pr)
            )
    # One branch per environment: a newer bump replaces the older one in the same PR.
    git(repo, "push", "--quiet", "--force", b.remote, f"refs/heads/{branch}:refs/heads/{branch}")
    return open_or_update_pr(repo, branch, base, title, body, no_pr)


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


def bump_from_args(
    a: argparse.Namespace, env: str, new: ReleaseState, title: str, body: str
) -> str:
    """`bump` with the options every PR-opening command shares."""
    return bump(
        a.repo,
        env,
        new,
        base=a.base,
        remote=a.remote,
        force=a.force,
        no_pr=a.no_pr,
        render_check=a.render_check,
        title=title,
        body=body,
    )


def cmd_release(a: argparse.Namespace) -> str:
    new = ReleaseState(a.image_repository, a.tag, a.digest, a.model_name, str(a.model_version))
    new.validate()
    title = f"release({a.env}): image {a.tag[:12]}, model {a.model_name} v{a.model_version}"
    body = (
        f"Automated release of {new.describe()} to `{a.env}`.\n\n"
        f"Only `environments/{a.env}/release.yaml` changes. Written by `scripts/gitops.py "
        "release`; a newer release force-pushes this branch and updates this pull request."
    )
    return bump_from_args(a, a.env, new, title, body)


def cmd_promote(a: argparse.Namespace) -> str:
    if a.source == a.target:
        raise GitopsError("from and to are the same environment")
    if ENVIRONMENTS.index(a.target) < ENVIRONMENTS.index(a.source) and not a.force:
        raise Refused(
            f"promotion goes {' -> '.join(ENVIRONMENTS)}; {a.source} -> {a.target} "
            "goes backwards (use --force)"
        )
    b = resolve_base(a.repo, a.base, a.remote)
    src_path = f"environments/{a.source}/release.yaml"
    _, new = load_release(read_at(a.repo, b.ref, src_path), f"{src_path} on {b.ref}")
    new.validate()
    title = (
        f"promote({a.source}->{a.target}): image {new.image_tag[:12]}, "
        f"model {new.model_name} v{new.model_version}"
    )
    body = (
        f"Promotes what `{a.source}` runs to `{a.target}`: {new.describe()}.\n\n"
        f"Only `environments/{a.target}/release.yaml` changes; static settings stay."
    )
    if a.target == "prod":
        body += (
            "\n\nMerging this moves the MLflow alias `champion` to model version "
            f"{new.model_version} (workflow `champion-alias`)."
        )
    return bump_from_args(a, a.target, new, title, body)


def cmd_set_alias(a: argparse.Namespace) -> str:
    path = a.repo / "environments" / a.env / "release.yaml"
    if not path.is_file():
        raise GitopsError(f"{path.relative_to(a.repo)} not found")
    _, state = load_release(path.read_text(), str(path.relative_to(a.repo)))
    state.validate()
    if not os.environ.get("MLFLOW_TRACKING_URI"):
        raise GitopsError("MLFLOW_TRACKING_URI is not set")
    from mlflow import MlflowClient
    from mlflow.exceptions import MlflowException

    client = MlflowClient()
    try:
        client.get_model_version(state.model_name, state.model_version)
    except MlflowException:
        raise GitopsError(
            f"model {state.model_name} version {state.model_version} is not in the registry"
        ) from None
    try:
        before = client.get_model_version_by_alias(state.model_name, a.alias).version
    except MlflowException:
        before = None
    if str(before) == state.model_version:
        return f"alias {a.alias} already on {state.model_name} v{state.model_version}"
    client.set_registered_model_alias(state.model_name, a.alias, state.model_version)
    return f"alias {a.alias}: {state.model_name} v{before or '-'} -> v{state.model_version}"


def cmd_render(a: argparse.Namespace) -> str:
    out = render(a.env, a.repo)
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

    def bump_opts(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--base", default="main", help="branch the PR targets (default main)")
        sp.add_argument("--remote", default="origin", help="remote to push to (default origin)")
        sp.add_argument("--force", action="store_true", help="allow a no-op or a downgrade")
        sp.add_argument("--no-pr", action="store_true", help="push the branch, open no PR")
        sp.add_argument(
            "--no-render-check",
            dest="render_check",
            action="store_false",
            help="skip `helm template` of the changed environment",
        )

    r = sub.add_parser("release", help="bump an environment (dev) to a new image and model version")
    r.add_argument("--env", default="dev", choices=ENVIRONMENTS)
    r.add_argument("--image-repository", required=True)
    r.add_argument("--tag", required=True, help="image tag (the commit it was built from)")
    r.add_argument("--digest", required=True, help="image digest sha256:...")
    r.add_argument("--model-name", default="ml-service")
    r.add_argument("--model-version", required=True)
    bump_opts(r)
    r.set_defaults(func=cmd_release)

    pr = sub.add_parser("promote", help="copy release.yaml from one environment to the next")
    pr.add_argument("source", choices=ENVIRONMENTS, metavar="FROM")
    pr.add_argument("target", choices=ENVIRONMENTS, metavar="TO")
    bump_opts(pr)
    pr.set_defaults(func=cmd_promote)

    s = sub.add_parser("set-alias", help="point an MLflow alias at the env's model version")
    s.add_argument("env", choices=ENVIRONMENTS)
    s.add_argument("--alias", default=DEFAULT_ALIAS)
    s.set_defaults(func=cmd_set_alias)

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
