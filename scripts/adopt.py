#!/usr/bin/env python3
"""Point the Argo CD objects and the images at your repository: `make adopt REPO=<owner>/<name>`.

Argo CD reads the repository from the URL `argocd/bootstrap.yaml` names (the Applications' repoURL,
the AppProjects' sourceRepos, the ApplicationSet's git generator) and Argo CD Notifications tells
the GitHub repository named in the notification's dispatch path
(`/repos/<owner>/<name>/dispatches`); the release approvers of .github/CODEOWNERS are a team of the
repository's owner (an organisation), or whoever `--code-owners` names; every image under charts/
and argocd/ is `ghcr.io/<owner>/<name>` in lower case or below it: where the release and
platform-images workflows push (`ghcr.io/${GITHUB_REPOSITORY,,}` and its `/mlflow-*` images).
`adopt` replaces the URL, the repository, the owner and the image path it finds there, whatever they
are (the template's `OWNER/ml-service` or an earlier adoption), and nothing else; the tests read
them from the same files, so they keep passing after it (tests/gitops/test_gitops_adoption.py).
Running it again with the same arguments changes nothing and succeeds; with other arguments it
re-points the objects. Commit, push.

`--repo-url URL` (`make adopt REPO=<owner>/<name> REPO_URL=...`): Argo CD reads the repository
from another address than https://github.com/<owner>/<name>.git (a mirror, GitHub Enterprise, a
git server inside the network); the GitHub repository still receives the notification. No
credential in the URL: Argo CD takes them from a repository Secret (docs/gitops.md, step 4).

`--code-owners "@alice @bob"` (`make adopt ... CODE_OWNERS="@alice @bob"`): the code owners of
every rule of .github/CODEOWNERS, users or teams of the repository's owner: a personal account has
no teams. Without it, a later adoption keeps them (it only moves teams to the new owner).

Exit codes: 0 adopted (or already adopted so), 2 bad input or argocd/ not as expected.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
BOOTSTRAP = Path("argocd/bootstrap.yaml")
NOTIFICATIONS = Path("argocd/install/argocd-notifications-cm.patch.yaml")
CODEOWNERS = Path(".github/CODEOWNERS")
# GitHub: owner 1-39 of [A-Za-z0-9-], repository [A-Za-z0-9._-]; a code owner @user or @org/team
REPO_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")
CODE_OWNER_RE = re.compile(r"@([A-Za-z0-9](?:[A-Za-z0-9-]{0,38}))(/[A-Za-z0-9._-]{1,100})?")
REPO_URL_LINE = re.compile(r"^\s*repoURL:\s*(\S+)\s*$", re.M)
DISPATCH = re.compile(r"/repos/([A-Za-z0-9-]+/[A-Za-z0-9._-]+)/dispatches\b")
URL_SCHEMES = ("https", "http", "ssh", "git")


def valid_url(url: str) -> bool:
    """A git URL Argo CD can read, without a password or token in it (never echoed back)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        return False
    return (
        parts.scheme in URL_SCHEMES
        and bool(parts.hostname)
        and parts.password is None
        and (parts.username is None or parts.scheme == "ssh")
        and len(parts.path) > 1
        and not parts.query
        and not parts.fragment
        and not re.search(r"\s", url)
    )


def github_url(repo: str) -> str:
    return f"https://github.com/{repo}.git"


def image_path(repo: str) -> str:
    """Where the workflows push `repo`'s images (GHCR wants lower case)."""
    return f"ghcr.io/{repo.lower()}"


def current(root: Path) -> tuple[str, str]:
    """(the URL Argo CD reads the repository from, the GitHub repository notified) as argocd/
    says now."""
    urls = REPO_URL_LINE.findall((root / BOOTSTRAP).read_text())
    repos = set(DISPATCH.findall((root / NOTIFICATIONS).read_text()))
    if len(urls) != 1 or len(repos) != 1:
        raise ValueError(
            f"expected one repoURL in {BOOTSTRAP} and one dispatch path in {NOTIFICATIONS}"
        )
    return urls[0], repos.pop()


def code_owners(value: str, repo: str) -> list[str] | None:
    """`--code-owners`: @users, or @teams of the repository's owner; None when not valid."""
    owners = value.replace(",", " ").split()
    matches = [CODE_OWNER_RE.fullmatch(o) for o in owners]
    owner = repo.split("/")[0].lower()
    valid = all(m and (not m[2] or m[1].lower() == owner) for m in matches)
    return owners if owners and valid else None


def owned_by(text: str, owners: list[str]) -> str:
    """CODEOWNERS with every rule's owners set to `owners` (patterns and comments kept)."""
    return "".join(
        f"{line.split()[0]} {' '.join(owners)}\n" if line.strip() and not line.startswith("#")
        else line
        for line in text.splitlines(keepends=True)
    )  # fmt: skip


def adopt(root: Path, repo: str, url: str, owners: list[str] | None = None) -> list[str]:
    """Rewrite argocd/, the images under charts/ and CODEOWNERS from the current URL and
    repository to `url` and `repo` (and CODEOWNERS' owners to `owners`); the files changed (none
    when already adopted so)."""
    old_url, old_repo = current(root)
    old_owner, owner = old_repo.split("/")[0], repo.split("/")[0]
    old_image = re.compile(rf"{re.escape(image_path(old_repo))}(?![\w.-])")
    changed = []
    paths = [p for top in ("argocd", "charts") for p in sorted((root / top).rglob("*"))
             if p.suffix in (".yaml", ".md") and p.is_file() and not p.is_symlink()]  # fmt: skip
    for path in [*paths, root / CODEOWNERS]:
        if not path.is_file():
            continue
        text = path.read_text()
        if path.name == CODEOWNERS.name:
            new = re.sub(rf"@{re.escape(old_owner)}/", f"@{owner}/", text)
            new = owned_by(new, owners) if owners else new
        else:
            new = old_image.sub(image_path(repo), text)
            if path.relative_to(root).parts[0] == "argocd":
                new = new.replace(old_url, url).replace(
                    f"/repos/{old_repo}/dispatches", f"/repos/{repo}/dispatches"
                )
        if new != text:
            path.write_text(new)
            changed.append(str(path.relative_to(root)))
    if current(root) != (url, repo):
        raise ValueError(f"{BOOTSTRAP} does not read {url} after the rewrite")
    return changed


def main(argv: list[str], root: Path = ROOT) -> int:
    p = argparse.ArgumentParser(prog="adopt.py", add_help=True)
    p.add_argument("repo", nargs="?", default="")
    p.add_argument("--repo-url", default="")
    p.add_argument("--code-owners", default=None)
    args, extra = p.parse_known_args(argv)
    if extra or not REPO_RE.match(args.repo) or args.repo.endswith(".git"):
        print("usage: adopt.py <owner>/<name> [--repo-url URL] [--code-owners '@user ...']  "
              "(a GitHub repository, no .git)",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.repo_url and not valid_url(args.repo_url):
        print("usage: --repo-url takes an https://, http://, ssh:// or git:// URL of the "
              "repository, without credentials", file=sys.stderr)  # fmt: skip
        return 2
    owners = None if args.code_owners is None else code_owners(args.code_owners, args.repo)
    if args.code_owners is not None and owners is None:
        print("usage: --code-owners takes @user or @<owner>/<team> names, separated by spaces "
              "(a team of the repository's owner)", file=sys.stderr)  # fmt: skip
        return 2
    url = args.repo_url or github_url(args.repo)
    try:
        changed = adopt(root, args.repo, url, owners)
    except (OSError, ValueError) as exc:
        print(f"adopt: {exc}", file=sys.stderr)
        return 2
    if not changed:
        print(f"adopt: already adopted: Argo CD reads {url}, notifies {args.repo}")
    else:
        print(f"adopted {args.repo} (Argo CD reads {url}): " + ", ".join(changed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
