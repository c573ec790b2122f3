"""CONTRIBUTING.md's module map names every module of the package, so a newcomer can always find
the tests that cover the file they change."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "app" / "ml_service"


def module_map() -> str:
    text = (ROOT / "CONTRIBUTING.md").read_text()
    section = text.split("## Which tests cover which module", 1)[1]
    return section.split("\n## ", 1)[0]


def named_modules(table: str) -> set[str]:
    """Modules a row names: `serving/api.py`, and the bare names that follow it in the same cell
    (`schemas.py`) belong to the same directory."""
    names: set[str] = set()
    for line in table.splitlines():
        if not line.startswith("| `"):
            continue
        cell = line.split("|")[1]
        directory = ""
        for name in re.findall(r"`([\w/]+\.py)`", cell):
            if "/" in name:
                directory = name.rsplit("/", 1)[0] + "/"
                names.add(name)
            else:
                names.add(directory + name)
    return names


def test_every_module_has_a_row_in_the_module_map() -> None:
    # A subpackage's __init__.py only marks the package (and says what it holds).
    modules = {
        p.relative_to(PACKAGE).as_posix()
        for p in PACKAGE.rglob("*.py")
        if p.name != "__init__.py" or p.parent == PACKAGE
    }
    named = named_modules(module_map())
    assert named, "the module map of CONTRIBUTING.md is empty or moved"
    assert modules - named == set(), "modules without a row in CONTRIBUTING.md's module map"
    assert named - modules == set(), "rows of CONTRIBUTING.md's module map name no module"


def test_the_parser_reads_a_directory_from_the_first_name_of_a_cell() -> None:
    table = "| `serving/api.py`, `schemas.py` | x |\n| `redact.py` | y |\n| prose | z |"
    assert named_modules(table) == {"serving/api.py", "serving/schemas.py", "redact.py"}
