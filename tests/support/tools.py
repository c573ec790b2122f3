"""The pinned tools the tiers run (helm, promtool, checkov, act, hadolint...): `make setup` puts
them under .tools; a few come from apt (promtool, node, shellcheck) and are found on PATH. A missing
tool fails the test with the `make` target that installs it, never a skip: a skipped tier hides a
gap."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ROOT / ".tools"


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
