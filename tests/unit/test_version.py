"""One version: the app's, which the package metadata and the chart follow."""

from __future__ import annotations

from importlib.metadata import version
from pathlib import Path

import yaml
from ml_service import __version__

ROOT = Path(__file__).resolve().parents[2]


def test_chart_and_package_follow_the_app_version() -> None:
    chart = yaml.safe_load((ROOT / "charts" / "ml-service" / "Chart.yaml").read_text())
    assert chart["appVersion"] == __version__
    assert chart["version"] == __version__
    assert version("ml-service") == __version__
