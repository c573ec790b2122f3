"""The pinned tools the tiers run (helm, promtool, checkov, act, hadolint...): `make setup` puts
them under .tools; a few come from apt (promtool, node, shellcheck) and are found on PATH. A missing
tool fails the test with the `make` target that installs it, never a skip: a skipped tier hides a
gap."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools"


HADOLINT = TOOLS / "hadolint" / "bin" / "hadolint"


def hadolint_problems(dockerfile: Path) -> list[str]:
    """hadolint's findings on `dockerfile`, and every `hadolint ignore=` pragma without a comment
    line right above it that says why."""
    proc = subprocess.run(
        [tool(HADOLINT, "setup-image"), "--no-color", dockerfile.name],
        cwd=dockerfile.parent, capture_output=True, text=True, check=False,
    )  # fmt: skip
    problems = [] if proc.returncode == 0 else [proc.stdout + proc.stderr]
    lines = dockerfile.read_text().splitlines()
    for number, line in enumerate(lines):
        if "hadolint ignore=" in line:
            above = lines[number - 1].strip() if number else ""
            if not (above.startswith("#") and "hadolint" not in above and len(above) > 15):
                problems.append(f"{dockerfile.name}:{number + 1}: ignore without a reason above it")
    return problems


def tool(wanted: str | Path, setup: str = "setup") -> Path:
    """`wanted` as an exact path, or a name looked up in .tools/bin, then on PATH."""
    if isinstance(wanted, Path):
        found = wanted if wanted.exists() else None
    else:
        hit = shutil.which(wanted, path=f"{TOOLS / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}")
        found = Path(hit) if hit else None
    if found is None:
        hint = "`make setup`" if setup == "setup" else f"`make setup` (or `make {setup}`)"
        pytest.fail(f"{wanted} not found: run {hint}")
    return found
