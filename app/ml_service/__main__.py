"""`python -m ml_service`: serve the model with one uvicorn worker (see server.py)."""

from __future__ import annotations

import gc
import os
import signal
import sys
from types import FrameType

# Our loader owns retries/backoff; MLflow's defaults (7 retries, 120 s timeout) would hide them.
MLFLOW_CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}
# Not defaults but rules: every line the process writes goes through our redacting, rate-limited
# handler, so MLflow must neither install a handler of its own nor draw progress bars on stderr.
MLFLOW_LOGGING = {
    "MLFLOW_CONFIGURE_LOGGING": "false",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def _quiet_exit(signum: int, frame: FrameType | None) -> None:
    # uvicorn re-raises the signal it handled once it has shut down gracefully; a graceful
    # shutdown is a success, so exit 0 instead of dying by the signal (exit 143).
    raise SystemExit(0)


def main() -> int:
    # As PID 1 in a container, a signal without a handler is ignored: handle SIGTERM before the
    # slow imports below, so a pod stopped during start-up exits at once instead of being killed.
    signal.signal(signal.SIGTERM, _quiet_exit)
    signal.signal(signal.SIGINT, _quiet_exit)
    # SIGHUP would kill the process; the server logs and ignores it once it runs (server.py).
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Imports and the first model load allocate ~350,000 long-lived objects; with the collector on,
    # it scans them over and over (five full passes of 50-90 ms, ~0.25 s of a 2 s start). The
    # loader freezes them and turns the collector back on after its first attempt (service.py).
    gc.disable()
    for key, value in MLFLOW_CLIENT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.update(MLFLOW_LOGGING)
    from .redact import configure_logging
    from .serving.settings import load

    settings = load()
    configure_logging(settings.log_level)
    from .serving.app import create_app
    from .serving.server import build

    server = build(create_app(settings), settings)
    server.run()
    return 0 if server.started or not server.should_exit else 1


if __name__ == "__main__":
    sys.exit(main())
