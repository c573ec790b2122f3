"""The three products keep to their rooms: serving never imports training or release code (the
image ships without them), training never imports serving or release, release never imports
serving. Shared: the package root's `model_format`, `payload_format` and `redact`."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "app" / "ml_service"
PRODUCTS = ("serving", "training", "release")
FORBIDDEN = {
    "serving": ("ml_service.training", "ml_service.release"),
    "training": ("ml_service.serving", "ml_service.release"),
    "release": ("ml_service.serving",),
}


def imported_modules(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Every module a file imports, function-level imports included, relative ones resolved
    (`root` holds the top-level package)."""
    package = ".".join(path.relative_to(root).with_suffix("").parts[:-1])
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


@pytest.mark.parametrize("product", PRODUCTS)
def test_no_file_imports_across_the_boundary(product: str) -> None:
    files = sorted((PACKAGE / product).rglob("*.py"))
    assert files, f"ml_service/{product} has no modules"
    crossing = {
        f"{path.relative_to(PACKAGE)}: {name}"
        for path in files
        for name in imported_modules(path)
        if name.startswith(FORBIDDEN[product])
    }
    assert not crossing, sorted(crossing)


def test_the_shared_modules_import_no_product() -> None:
    for name in ("__init__.py", "model_format.py", "payload_format.py", "redact.py"):
        crossing = {
            n
            for n in imported_modules(PACKAGE / name)
            if n.startswith(tuple(f"ml_service.{p}" for p in PRODUCTS))
        }
        assert not crossing, (name, sorted(crossing))


def test_serving_app_loads_without_training_or_release() -> None:
    """What `python -m ml_service` imports, transitively, in a fresh interpreter."""
    probe = (
        "import sys, ml_service.__main__, ml_service.serving.app, ml_service.serving.server,"
        " ml_service.serving.preflight;"
        "print(sorted(m for m in sys.modules"
        " if m.startswith(('ml_service.training', 'ml_service.release'))))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=120
    ).stdout
    assert out.strip() == "[]", out


def test_the_checker_resolves_relative_and_late_imports(tmp_path: Path) -> None:
    path = tmp_path / "ml_service" / "serving" / "x.py"
    path.parent.mkdir(parents=True)
    path.write_text(
        "from ..release import quality_gate\nfrom .model import LoadedModel\n"
        "def f():\n    import ml_service.training.train\n"
    )
    names = imported_modules(path, root=tmp_path)
    assert {"ml_service.release.quality_gate", "ml_service.serving.model"} <= names
    assert "ml_service.training.train" in names


@pytest.mark.parametrize(
    ("product", "stage"), [("serving", "serving-code"), ("training", "demo-model")]
)
def test_the_image_copies_every_shared_module_a_product_imports(product: str, stage: str) -> None:
    """The Dockerfile copies the package root's modules file by file: a shared module serving
    (or the demo model's training) imports but the stage leaves out fails only in the image."""
    dockerfile = (PACKAGE.parents[1] / "Dockerfile").read_text()
    block = dockerfile.split(f" AS {stage}\n", 1)[1].split("\nFROM ", 1)[0].replace("\\\n", " ")
    copied = {
        word.removeprefix("app/ml_service/").removesuffix(".py")
        for line in block.splitlines()
        if line.startswith("COPY ")
        for word in line.split()
        if word.startswith("app/ml_service/") and word.endswith(".py")
    }
    shared = {
        name.split(".")[1]
        for path in (PACKAGE / product).rglob("*.py")
        for name in imported_modules(path)
        if name.count(".") >= 1 and (PACKAGE / f"{name.split('.')[1]}.py").is_file()
    }
    assert shared, f"{product} imports no shared module: the check would prove nothing"
    assert shared <= copied, f"Dockerfile stage {stage} lacks {sorted(shared - copied)}"
