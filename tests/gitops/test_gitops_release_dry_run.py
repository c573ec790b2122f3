"""`make release-dry-run` as a test: train -> register on a real MLflow server -> `make image` ->
release branch in a local clone -> the dev Application renders, strictly valid, with the new image
and model version (scripts/release_dry_run.py checks each step, exits non-zero on a failure)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from .conftest import ROOT, tool

pytestmark = [pytest.mark.server, pytest.mark.argocd]


def test_release_dry_run():
    tool("helm")
    tool("appset-render")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "release_dry_run.py")],
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        cwd=ROOT,
    )
    assert proc.returncode == 0, f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    lines = proc.stdout.splitlines()
    assert lines[-1].startswith("release-dry-run: ok")
    assert any("valid for Kubernetes" in line for line in lines)
    print("\n".join(lines))
