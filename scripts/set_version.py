"""`make version V=x.y.z`: the one command that changes the project's version.

The version lives in app/ml_service/__init__.py (pyproject.toml reads it from there); the chart's
`version` and `appVersion` follow it. tests/unit/test_version.py fails when they disagree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
INIT = ROOT / "app" / "ml_service" / "__init__.py"
CHART = ROOT / "charts" / "ml-service" / "Chart.yaml"
SEMVER = re.compile(r"^\d+\.\d+\.\d+(?:-[0-9A-Za-z.-]+)?$")


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not SEMVER.match(argv[0]):
        print("usage: make version V=<major.minor.patch>", file=sys.stderr)
        return 2
    version = argv[0]
    INIT.write_text(
        re.sub(r'__version__ = "[^"]*"', f'__version__ = "{version}"', INIT.read_text())
    )
    chart = re.sub(r"(?m)^version: .*$", f"version: {version}", CHART.read_text())
    CHART.write_text(re.sub(r"(?m)^appVersion: .*$", f'appVersion: "{version}"', chart))
    print(f"version {version}: {INIT.relative_to(ROOT)}, {CHART.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
