"""The HTTP server: uvicorn with connection limits and a graceful shutdown for Kubernetes.

Connection limits (uvicorn alone holds a connection that never sends a byte forever):
- request headers must be complete within REQUEST_HEADER_TIMEOUT_SECONDS of the connection
  opening, or of its previous response; idle keep-alive connections close after
  KEEPALIVE_TIMEOUT_SECONDS; a body must be complete within REQUEST_BODY_TIMEOUT_SECONDS of its
  headers (408);
- at most MAX_CONNECTIONS are open (kept below the open-file limit so `accept()` never fails):
  a new one closes the longest-idle connection (one waiting for request headers), or, when every
  connection is busy, gets a canned 503 and is closed. A flood of idle connections therefore
  never locks out a health probe.
Each closure is counted in `mlservice_connections_closed_total{reason}`; repeated log messages
are rate-limited (redact.py), so no client can fill the log.

Shutdown sequence on SIGTERM:
1. readiness turns 503 at once and every response says `Connection: close` (guard.py);
2. for SHUTDOWN_DRAIN_SECONDS the listener stays open, so requests routed before the endpoint
   update still land;
3. uvicorn closes the listener and gives in-flight requests up to SHUTDOWN_GRACE_SECONDS; the
   ones still running after it get a JSON 503;
4. lifespan shutdown stops the loader and inference threads; the process exits 0.
A second signal skips the drain; SIGINT (Ctrl-C) skips it as well.
"""

from __future__ import annotations

import asyncio
import logging
import resource
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import FrameType

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .settings import Settings

log = logging.getLogger("ml_service")

# File descriptors kept free for everything that is not a client connection (the listener,
# log files, the model download, MLflow's HTTP pool).
FD_RESERVE = 64


def _canned(status: bytes, detail: bytes, extra: bytes = b"") -> bytes:
    """A complete JSON error response that closes the connection, written by the server."""
    body = b'{"detail":"%s"}' % detail
    return (
        b"HTTP/1.1 %s\r\ncontent-type: application/json\r\n%sconnection: close\r\n"
        b"content-length: %d\r\n\r\n%s" % (status, extra, len(body), body)
    )


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout: float
    body_timeout: float
    max_connections: int
    retry_after: int
    on_closed: Callable[[str], None]

    def overload_response(self) -> bytes:
        retry = b"retry-after: %d\r\n" % self.retry_after
        return _canned(b"503 Service Unavailable", b"too many connections", retry)

    def body_timeout_response(self) -> bytes:
        detail = b"request body not received in time (REQUEST_BODY_TIMEOUT_SECONDS)"
        return _canned(b"408 Request Timeout", detail)


class LimitedConnection:
    """Mixin for a uvicorn HTTP protocol class: header and body deadlines, the connection cap.

    A connection is *idle* from the moment it opens or its response completed until its next
    request's headers are complete: only idle connections are evicted, and only they run the
    header deadline. From the headers on, the body deadline runs until the request's body is
    complete (408 if it is late, or a plain close once the answer has started).
    """

    limits: ConnectionLimits
    _idle_since: float | None = None
    _deadline: asyncio.TimerHandle | None = None
    _body_deadline: asyncio.TimerHandle | None = None
    _cycle_at_idle: object = None

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        super().connection_made(transport)  # type: ignore[misc]
        self._start_idle()
        if len(self.connections) > self.limits.max_connections:  # type: ignore[attr-defined]
            self._make_room()

    def data_received(self, data: bytes) -> None:
        super().data_received(data)  # type: ignore[misc]
        self._check_headers_done()
        self._check_body_done()

    def on_response_complete(self) -> None:
        self._stop_body()
        self._start_idle()
        super().on_response_complete()  # type: ignore[misc]
        self._check_headers_done()  # a pipelined request may already be complete
        self._check_body_done()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_idle()
        self._stop_body()
        super().connection_lost(exc)  # type: ignore[misc]

    # ---------------------------------------------------------------- idle state

    def _start_idle(self) -> None:
        self._stop_idle()
        loop = self.loop  # type: ignore[attr-defined]
        self._idle_since = loop.time()
        self._cycle_at_idle = self.cycle  # type: ignore[attr-defined]
        self._deadline = loop.call_later(self.limits.header_timeout, self._header_timeout)

    def _stop_idle(self) -> None:
        self._idle_since = None
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _check_headers_done(self) -> None:
        cycle = self.cycle  # type: ignore[attr-defined]
        if self._idle_since is not None and cycle is not None and cycle is not self._cycle_at_idle:
            self._stop_idle()
            if cycle.more_body:
                loop = self.loop  # type: ignore[attr-defined]
                self._body_deadline = loop.call_later(self.limits.body_timeout, self._body_late)

    def _check_body_done(self) -> None:
        if self._body_deadline is not None and not self.cycle.more_body:  # type: ignore[attr-defined]
            self._stop_body()

    def _stop_body(self) -> None:
        if self._body_deadline is not None:
            self._body_deadline.cancel()
            self._body_deadline = None

    def _body_late(self) -> None:
        self._body_deadline = None
        cycle = self.cycle  # type: ignore[attr-defined]
        self.limits.on_closed("body_timeout")
        if cycle is not None and not cycle.response_started:
            cycle.response_started = cycle.response_complete = True  # the app's answer is void
            self.transport.write(self.limits.body_timeout_response())  # type: ignore[attr-defined]
        self.transport.close()  # type: ignore[attr-defined]

    def _header_timeout(self) -> None:
        self._deadline = None
        self.limits.on_closed("header_timeout")
        self.transport.close()  # type: ignore[attr-defined]

    def _make_room(self) -> None:
        idle = [c for c in self.connections if c is not self and c._idle_since is not None]  # type: ignore[attr-defined]
        if idle:
            victim = min(idle, key=lambda c: c._idle_since)
            victim._stop_idle()
            self.limits.on_closed("idle_evicted")
            victim.transport.close()
            return
        self._stop_idle()
        self.limits.on_closed("over_capacity")
        self.transport.write(self.limits.overload_response())  # type: ignore[attr-defined]
        self.transport.close()  # type: ignore[attr-defined]


def connection_cap(wanted: int) -> int:
    """MAX_CONNECTIONS, lowered to stay under the open-file limit (raised to its hard maximum
    first, which needs no privilege)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, wanted + FD_RESERVE)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    cap = min(wanted, max(8, soft - FD_RESERVE))
    if cap < wanted:
        log.warning("MAX_CONNECTIONS lowered to %d: the open-file limit is %d", cap, soft)
    return cap


def protocol_class(limits: ConnectionLimits) -> type:
    # httptools (llhttp, C): about twice the requests per second of the pure-Python h11 parser
    # here (docs/benchmarks.md), and it refuses malformed framing itself.
    return type("LimitedHttpTools", (LimitedConnection, HttpToolsProtocol), {"limits": limits})


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
                log.info("SIGTERM: readiness is 503; closing the listener in %.1fs", drain)
                timer = threading.Timer(drain, super().handle_exit, (sig, frame))
                timer.daemon = True
                timer.start()
                return
        super().handle_exit(sig, frame)


def build(app, settings: Settings) -> GracefulServer:  # type: ignore[no-untyped-def]
    """The configured server for `app` (a `main.create_app` application)."""
    service = app.state.service
    limits = ConnectionLimits(
        header_timeout=settings.request_header_timeout_seconds,
        body_timeout=settings.request_body_timeout_seconds,
        max_connections=connection_cap(settings.max_connections),
        retry_after=settings.retry_after_seconds,
        on_closed=lambda reason: service.metrics.connections_closed.labels(reason).inc(),
    )
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,  # logging is ours (redacted, rate-limited): redact.configure_logging
        log_level=settings.log_level,
        access_log=settings.access_log,
        timeout_keep_alive=settings.keepalive_timeout_seconds,  # type: ignore[arg-type]
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,  # type: ignore[arg-type]
        lifespan="on",
        loop="asyncio",
        http=protocol_class(limits),
        ws="none",
        proxy_headers=False,
        server_header=False,
    )

    def begin_shutdown() -> None:
        service.shutting_down = True

    return GracefulServer(config, settings, begin_shutdown)
