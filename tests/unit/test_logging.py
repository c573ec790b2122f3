"""The log's rules (ml_service.redact): every line redacted and bounded, repeated lines limited by
what they say, floods of distinct lines limited by size."""

from __future__ import annotations

import logging
import subprocess
import sys
import time

from ml_service.redact import MAX_LINE_CHARS, RateLimit, RedactingFormatter, truncate


def record(msg: str, *args: object, name: str = "uvicorn.access") -> logging.LogRecord:
    return logging.LogRecord(name, logging.INFO, __file__, 1, msg, args, None)


def test_identical_lines_are_limited_by_content_not_by_template() -> None:
    limit = RateLimit(burst=3, period=60)
    template = '%s - "%s %s HTTP/%s" %d'  # uvicorn's access log: one template for every request
    distinct = [
        limit.filter(record(template, "c:1", "GET", f"/p{i}", "1.1", 404)) for i in range(20)
    ]
    same = [limit.filter(record(template, "c:1", "GET", "/health", "1.1", 200)) for _ in range(20)]
    assert all(distinct)
    assert sum(same) == 3


def test_a_flood_of_distinct_lines_is_limited_by_size_and_counted() -> None:
    limit = RateLimit(bytes_per_second=50_000, burst_bytes=10_000)
    passed = [limit.filter(record("x" * 900 + str(i))) for i in range(100)]
    assert 5 <= sum(passed) <= 12
    time.sleep(0.2)  # the budget refills
    last = record("after the flood")
    assert limit.filter(last)
    assert "log lines dropped over the rate limit" in last.getMessage()


def test_long_lines_are_cut_without_leaving_half_a_secret() -> None:
    url = "http://user:" + "s3cret" * 10 + "@host/path"
    text = "x " * (MAX_LINE_CHARS // 2 - 20) + url + " tail"
    cut = truncate(text)
    assert len(cut) < MAX_LINE_CHARS + 64
    assert "s3cret" not in cut and "more characters" in cut
    formatter = RedactingFormatter("%(message)s")
    assert "s3cret" not in formatter.format(record("%s", url + "x" * MAX_LINE_CHARS))


def test_mlflow_and_warnings_log_through_the_one_handler() -> None:
    """`python -m ml_service`'s setup, then MLflow's import: its logger keeps no handler of
    its own, so its lines reach the redacting, rate-limited root handler."""
    code = (
        "import os, logging, warnings\n"
        "from ml_service.__main__ import MLFLOW_LOGGING\n"
        "os.environ.update(MLFLOW_LOGGING)\n"
        "from ml_service.redact import configure_logging\n"
        "configure_logging('info')\n"
        "import mlflow\n"
        "logging.getLogger('mlflow.models.utils').warning('key http://u:pw-123456@h/ seen')\n"
        "warnings.warn('a library warning')\n"
        "print(logging.getLogger('mlflow').handlers, flush=True)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
    assert "mlflow.models.utils: key http://***@h/ seen" in out.stderr
    assert "pw-123456" not in out.stderr
    assert "py.warnings" in out.stderr and "a library warning" in out.stderr
