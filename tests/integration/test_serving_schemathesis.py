"""Schemathesis over the live /openapi.json: no generated request (valid or not) gets a 5xx."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
from support.app_server import app_server


def test_schemathesis_finds_no_server_errors(local_model_dir: Path, tmp_path: Path) -> None:
    cli = Path(sys.executable).with_name("schemathesis")
    assert cli.exists(), "schemathesis is missing from .venv: run `make setup`"
    with app_server(model_uri=str(local_model_dir), wait_ready=True, log_dir=tmp_path) as app:
        # the schema names the model's features only once it is loaded
        schema = httpx.get(app.url("/openapi.json")).json()
        assert "Instance" in schema["components"]["schemas"]
        cmd = [
            str(cli), "run", app.url("/openapi.json"),
            # 5xx, bodies that break their documented content type or schema
            "--checks", "not_a_server_error,content_type_conformance,response_schema_conformance",
            "--mode", "all",  # valid and invalid (negative) requests
            "--max-examples", "40",
            "--seed", "20261126",
            "--workers", "1",
            "--report", "junit",
            "--report-dir", str(tmp_path / "report"),
        ]  # fmt: skip
        proc = subprocess.run(
            cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, check=False
        )
        log = app.log_tail()
    assert proc.returncode == 0, f"{proc.stdout[-6000:]}\n{proc.stderr[-2000:]}\n{log}"
    assert "Traceback" not in log, log
    assert "passed" in proc.stdout
