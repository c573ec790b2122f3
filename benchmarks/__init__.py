"""The benchmark harness behind `make bench` (docs/benchmarks.md).

run.py is the command line; servers.py starts and stops the servers; harness.py drives the load
(wrk closed loop, vegeta open loop) and the other measurements; report.py turns results into the
JSON, Markdown and plot. Process and port helpers come from tests/support, shared with the tests.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HERE = ROOT / "benchmarks"

# tests/support (free ports, process groups, log tails, HTTP waits) is importable as `support`,
# as in the test suite (pytest puts tests/ on the path through its rootdir conftest).
if str(ROOT / "tests") not in sys.path:
    sys.path.append(str(ROOT / "tests"))


class BenchError(RuntimeError):
    """A benchmark cannot run or a server misbehaved; the message says what to do."""
