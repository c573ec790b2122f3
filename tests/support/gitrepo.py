"""A git repository made from this work tree, for tests that run the GitOps flow on a copy."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def run_git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True
    ).stdout.strip()


def snapshot_repo(
    dest: Path, *, author: tuple[str, str] = ("Test", "test@example.invalid"), message="snapshot"
) -> str:
    """The work tree as it is (tracked + untracked, not ignored) committed into a new git repo at
    `dest`; returns the commit."""
    files = run_git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    dest.mkdir(parents=True)
    for rel in filter(None, files.split("\0")):
        src = ROOT / rel
        if not src.exists() and not src.is_symlink():
            continue  # deleted, not yet committed
        dst = dest / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if src.is_symlink():
            dst.symlink_to(os.readlink(src))
        else:
            shutil.copy2(src, dst)
    run_git(dest.parent, "init", "--quiet", "-b", "main", str(dest))
    run_git(dest, "config", "user.name", author[0])
    run_git(dest, "config", "user.email", author[1])
    run_git(dest, "add", "-A")
    run_git(dest, "commit", "--quiet", "-m", message)
    return run_git(dest, "rev-parse", "HEAD")


def adopted_clone(work: Path, served: Path, url: str, repo: str) -> None:
    """A snapshot of the work tree at `work` pushed to a new bare repository `served` (what a git
    server publishes at `url`) after `make adopt REPO=<repo> REPO_URL=<url>`, as a user adopts it
    (docs/gitops.md, step 1), committed."""
    snapshot_repo(work)
    run_git(served.parent, "init", "--quiet", "--bare", "-b", "main", str(served))
    run_git(work, "remote", "add", "origin", str(served))
    proc = subprocess.run(
        ["make", "--no-print-directory", "adopt", f"REPO={repo}", f"REPO_URL={url}"],
        cwd=work, capture_output=True, text=True, check=False,
    )  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(proc.stdout + proc.stderr)
    run_git(work, "commit", "--quiet", "-am", f"Adopt: Argo CD reads {url}")


def forget_releases(repo: Path) -> None:
    """Remove every environments/<env>/release.yaml from the copy `repo` (one commit, if any).

    A copy that trains against a new, empty MLflow server cannot keep the pins it was made with:
    they name model versions of the team's registry (the gate would look them up, and a fresh
    registry's version 1 would be a downgrade). The copy then starts where a new team starts:
    nothing released to any environment yet."""
    pins = sorted((repo / "environments").glob("*/release.yaml"))
    if not pins:
        return
    for path in pins:
        path.unlink()
    run_git(repo, "add", "-A")
    run_git(repo, "commit", "--quiet", "-m", "scratch registry: no release pinned yet")
