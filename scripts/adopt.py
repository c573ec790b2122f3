#!/usr/bin/env python3
"""Point the Argo CD objects at your repository: `make adopt REPO=<owner>/<name>`.

Replaces the placeholder `OWNER/ml-service` in every file under argocd/ (the Applications'
repoURL, the AppProject's sourceRepos, the ApplicationSet's git generator, the GitHub dispatch path
of the notification) and nothing else; the tests read the URL from argocd/bootstrap.yaml, so they
keep passing after it (tests/gitops/test_gitops_adoption.py). Run it once, commit, push.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PLACEHOLDER = "OWNER/ml-service"
# GitHub: owner 1-39 of [A-Za-z0-9-], repository [A-Za-z0-9._-]
REPO_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,38})/[A-Za-z0-9._-]{1,100}$")


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not REPO_RE.match(argv[0]) or argv[0].endswith(".git"):
        print("usage: adopt.py <owner>/<name>  (a GitHub repository, no .git)", file=sys.stderr)
        return 2
    changed = []
    for path in sorted((ROOT / "argocd").rglob("*.yaml")):
        text = path.read_text()
        if PLACEHOLDER in text:
            path.write_text(text.replace(PLACEHOLDER, argv[0]))
            changed.append(str(path.relative_to(ROOT)))
    if not changed:
        print(f"adopt: no {PLACEHOLDER} left under argocd/ (already adopted?)", file=sys.stderr)
        return 1
    print("adopted " + argv[0] + ": " + ", ".join(changed))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
