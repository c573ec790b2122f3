"""`python -m ml_service`: one uvicorn worker, graceful SIGTERM handling, exit code 0.

Shutdown sequence on SIGTERM:
1. readiness turns 503 at once (Kubernetes takes the pod out of its Service);
2. for SHUTDOWN_DRAIN_SECONDS the listener stays open, so requests routed before the
   endpoint update still land;
3. uvicorn closes the listener and gives in-flight requests up to SHUTDOWN_GRACE_SECONDS;
4. lifespan shutdown stops the loader and inference threads; the process exits 0.
A second signal skips the drain; SIGINT (Ctrl-C) skips it as well.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from collections.abc import Callable
from types import FrameType

import uvicorn

from .settings import Settings

# Our loader owns retries/backoff; MLflow's defaults (7 retries, 120 s timeout) would hide them.
MLFLOW_CLIENT_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "15",
    "MLFLOW_DISABLE_TELEMETRY": "true",
}


class GracefulServer(uvicorn.Server):
    def __init__(
        self, config: uvicorn.Config, settings: Settings, on_shutdown: Callable[[], None]
    ) -> None:
        super().__init__(config)
        self._settings = settings
        self._on_shutdown = on_shutdown
        self._draining = False
        self._lock = threading.Lock()

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        with self._lock:
            first = not self._draining
            self._draining = True
        if first:
            self._on_shutdown()
            drain = self._settings.shutdown_drain_seconds
            if sig == signal.SIGTERM and drain > 0:
                logging.getLogger("ml_service").info(
                    "SIGTERM: readiness is 503; closing the listener in %.1fs", drain
                )
                timer = threading.Timer(drain, super().handle_exit, (sig, frame))
                timer.daemon = True
                timer.start()
                return
        super().handle_exit(sig, frame)


def _quiet_exit(signum: int, frame: FrameType | None) -> None:
    # uvicorn re-raises the signal it handled once it has shut down gracefully; a graceful
    # shutdown is a success, so exit 0 instead of dying by the signal (exit 143).
    raise SystemExit(0)


def main() -> int:
    # As PID 1 in a container, a signal without a handler is ignored: handle SIGTERM before the
    # slow imports below, so a pod stopped during start-up exits at once instead of being killed.
    signal.signal(signal.SIGTERM, _quiet_exit)
    signal.signal(signal.SIGINT, _quiet_exit)
    for key, value in MLFLOW_CLIENT_DEFAULTS.items():
        os.environ.setdefault(key, value)
    settings = Settings()
    logging.basicConfig(
        level=settings.log_level.upper() if settings.log_level != "trace" else "DEBUG",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    from .main import create_app

    app = create_app(settings)
    service = app.state.service
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,  # type: ignore[arg-type]
        lifespan="on",
        loop="asyncio",
        http="h11",
        proxy_headers=False,
        server_header=False,
    )

    def begin_shutdown() -> None:
        service.shutting_down = True

    server = GracefulServer(config, settings, begin_shutdown)
    server.run()
    return 0 if server.started or not server.should_exit else 1


if __name__ == "__main__":
    sys.exit(main())
