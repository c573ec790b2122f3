"""`python -m ml_service.preflight`: can this configuration serve? Answered before a rollout.

Same environment as the server (MODEL_URI, MLFLOW_TRACKING_URI, MLflow's credential variables).
Runs the server's own load — resolve, download, deserialize, smoke prediction — retrying with
the server's backoff until `--timeout`, then prints one line:

    ok: ml-service version 3 (models:/ml-service/3)
    error: model_not_found: the registry has no such model version or alias (MODEL_URI)

and exits 0 or 1. The line also goes to /dev/termination-log when it is writable, so Kubernetes
shows it in the pod's status (a Helm hook Job runs this before an install or upgrade).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

TERMINATION_LOG = Path("/dev/termination-log")


def _report(line: str) -> None:
    print(line, flush=True)
    if os.access(TERMINATION_LOG, os.W_OK):
        TERMINATION_LOG.write_text(line + "\n")


def check(timeout: float) -> tuple[bool, str]:
    from ml_service.__main__ import MLFLOW_CLIENT_DEFAULTS, MLFLOW_LOGGING

    from .model import LoadError, Reason, describe, fetch_and_deserialize, smoke_test
    from .settings import load

    for key, value in MLFLOW_CLIENT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    os.environ.update(MLFLOW_LOGGING)
    settings = load()
    scratch = Path(tempfile.mkdtemp(prefix="ml-service-preflight-"))
    deadline = time.monotonic() + timeout
    delay = settings.model_load_backoff_initial_seconds
    try:
        while True:
            try:
                model = fetch_and_deserialize(settings, scratch)
                smoke_test(model)
                return True, f"ok: {model.name} version {model.version} ({model.source})"
            except LoadError as exc:
                failure = exc
            except Exception as exc:  # a bug of ours: still one redacted line
                failure = LoadError(Reason.MODEL_REJECTED, describe(exc))
            print(f"attempt failed: {failure.reason.value} ({failure.detail})", file=sys.stderr)
            if time.monotonic() + delay > deadline:
                return False, f"error: {failure.reason.value}: {failure.reason.message}"
            time.sleep(delay)
            delay = min(delay * 2, settings.model_load_backoff_max_seconds)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m ml_service.serving.preflight",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=60.0,
        help="seconds to keep retrying before giving up (default 60)",
    )
    args = parser.parse_args(argv)
    from ml_service.redact import configure_logging

    configure_logging("warning")
    ok, line = check(args.timeout)
    _report(line)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
