"""A stand-in for the `gh` CLI on PATH: the GitHub API cannot be reached from here.

It records every call (one JSON line each in $FAKE_GH_LOG) and keeps the pull requests (head,
base, title, body, open) in $FAKE_GH_STATE, answering only the calls scripts/gitops.py makes:
`pr list --head B --base M --state open --json number --jq .[0].number`,
`pr create --head B --base M --title T --body X`, `pr edit N --title T --body X`.
Anything else exits 1 so a new call cannot pass unnoticed.
"""

import json
import os
import sys
from pathlib import Path


def opt(args: list[str], name: str) -> str:
    return args[args.index(name) + 1]


def main() -> int:
    args = sys.argv[1:]
    log, state_path = Path(os.environ["FAKE_GH_LOG"]), Path(os.environ["FAKE_GH_STATE"])
    with log.open("a") as fh:
        fh.write(json.dumps(args) + "\n")
    state = json.loads(state_path.read_text()) if state_path.exists() else {"prs": []}
    if args[:2] == ["pr", "list"]:
        head, base = opt(args, "--head"), opt(args, "--base")
        hits = [p for p in state["prs"] if p["head"] == head and p["base"] == base and p["open"]]
        print(hits[0]["number"] if hits else "")
        return 0
    if args[:2] == ["pr", "create"]:
        number = len(state["prs"]) + 1
        state["prs"].append(
            {
                "number": number,
                "head": opt(args, "--head"),
                "base": opt(args, "--base"),
                "title": opt(args, "--title"),
                "body": opt(args, "--body"),
                "open": True,
            }
        )
        state_path.write_text(json.dumps(state))
        print(f"https://github.invalid/pull/{number}")
        return 0
    if args[:2] == ["pr", "edit"]:
        number = int(args[2])
        for pr in state["prs"]:
            if pr["number"] == number:
                pr["title"] = opt(args, "--title")
                pr["body"] = opt(args, "--body")
        state_path.write_text(json.dumps(state))
        print(f"https://github.invalid/pull/{number}")
        return 0
    print(f"fake gh: unsupported call {args}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
