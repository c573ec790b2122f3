"""Generated parts of the docs are current (`make docs` regenerates them)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_docs_are_current() -> None:
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_docs.py"), "--check"],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr


def test_every_alert_has_a_row_in_the_thresholds_table() -> None:
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        from gen_docs import ALERT_ROWS
    finally:
        sys.path.remove(str(ROOT / "scripts"))
    rules = (ROOT / "charts" / "ml-service" / "templates" / "_rules.tpl").read_text()
    alerts = re.findall(r"^\s*- alert: (\w+)$", rules, re.M)
    assert alerts, "no alert found in _rules.tpl"
    assert list(ALERT_ROWS) == list(dict.fromkeys(alerts)), "scripts/gen_docs.py ALERT_ROWS"


def test_every_setting_is_described() -> None:
    from ml_service.serving.settings import Settings

    undocumented = [n for n, f in Settings.model_fields.items() if not f.description]
    assert not undocumented, undocumented
