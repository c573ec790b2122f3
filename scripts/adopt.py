#!/usr/bin/env python3
"""Point the Argo CD objects and the images at your repository: `make adopt REPO=<owner>/<name>`.

Replaces the placeholder `OWNER/ml-service` in every file under argocd/ (the Applications'
repoURL, the AppProject's sourceRepos, the ApplicationSet's git generator, the GitHub dispatch path
of the notification), and the image placeholder `ghcr.io/owner/ml-service` under charts/ and argocd/
by `ghcr.io/<owner>/<name>` in lower case: where the release and platform-images workflows push
(`ghcr.io/${GITHUB_REPOSITORY,,}` and its `/mlflow-*` images). Nothing else changes; the tests
read the URL from argocd/bootstrap.yaml, so they keep passing after it
(tests/gitops/test_gitops_adoption.py). Run it once, commit, push.

`--repo-url URL` (`make adopt REPO=<owner>/<name> REPO_URL=...`): Argo CD reads the repository
from another address than https://github.com/<owner>/<name>.git (a mirror, GitHub Enterprise, a
git server inside the network); the GitHub repository still receives the notification. No
credential in the URL: Argo CD takes them from a repository Secret (docs/gitops.md, step 4).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from urllib.parse import urlsplit

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER = "OWNER/ml-service"
PLACEHOLDER_URL = f"https://github.com/{PLACEHOLDER}.git"
# GitHub: owner 1-39 of [A-Za-z0-9-], repository [A-Za-z0-9._-]
REPO_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")
URL_SCHEMES = ("https", "http", "ssh", "git")
# The registry path of every image the repository deploys (charts' defaults, Applications' values).
IMAGE_PLACEHOLDER = re.compile(r"ghcr\.io/owner/ml-service(?![\w.-])")


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


def adopt_images(repo: str) -> list[str]:
    """Point every image under charts/ and argocd/ at `ghcr.io/<repo>`; the files changed."""
    registry = f"ghcr.io/{repo.lower()}"
    changed = []
    for top in ("charts", "argocd"):
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_symlink() or not path.is_file() or path.suffix not in (".yaml", ".md"):
                continue
            text = path.read_text()
            new = IMAGE_PLACEHOLDER.sub(registry, text)
            if new != text:
                path.write_text(new)
                changed.append(str(path.relative_to(ROOT)))
    return changed


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="adopt.py", add_help=True)
    p.add_argument("repo", nargs="?", default="")
    p.add_argument("--repo-url", default="")
    args, extra = p.parse_known_args(argv)
    if extra or not REPO_RE.match(args.repo) or args.repo.endswith(".git"):
        print("usage: adopt.py <owner>/<name> [--repo-url URL]  (a GitHub repository, no .git)",
              file=sys.stderr)  # fmt: skip
        return 2
    if args.repo_url and not valid_url(args.repo_url):
        print("usage: --repo-url takes an https://, http://, ssh:// or git:// URL of the "
              "repository, without credentials", file=sys.stderr)  # fmt: skip
        return 2
    changed = []
    for path in sorted((ROOT / "argocd").rglob("*.yaml")):
        text = path.read_text()
        if PLACEHOLDER in text:
            if args.repo_url:
                text = text.replace(PLACEHOLDER_URL, args.repo_url)
            path.write_text(text.replace(PLACEHOLDER, args.repo))
            changed.append(str(path.relative_to(ROOT)))
    changed += [c for c in adopt_images(args.repo) if c not in changed]
    if not changed:
        print(f"adopt: no {PLACEHOLDER} left under argocd/ (already adopted?)", file=sys.stderr)
        return 1
    where = f" (Argo CD reads {args.repo_url})" if args.repo_url else ""
    print(f"adopted {args.repo}{where}: " + ", ".join(changed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
