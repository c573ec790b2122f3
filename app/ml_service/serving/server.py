"""The HTTP server: uvicorn with connection limits and a graceful shutdown for Kubernetes.

Connection limits (uvicorn alone holds a connection that never sends a byte forever):
- request headers must be complete within REQUEST_HEADER_TIMEOUT_SECONDS of the connection
  opening, or of its previous response, and fit in MAX_HEADER_BYTES (431: the parser keeps a
  header's bytes in memory, and joining them costs more the longer it grows); idle keep-alive
  connections close after KEEPALIVE_TIMEOUT_SECONDS; a body must be complete within
  REQUEST_BODY_TIMEOUT_SECONDS of its headers (408);
- at most MAX_CONNECTIONS are open (kept below the open-file limit so `accept()` never fails):
  a new one closes the longest-idle connection waiting for request headers whose socket does
  not already hold complete headers (a request the busy loop has not read yet, a probe's), or,
  when none is, gets a canned 503 and is closed. A flood of idle or trickling connections
  therefore never locks out a health probe.
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
import socket
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


# How often the deadlines are checked: one pass over the open connections, instead of a timer
# started and cancelled on every request.
SWEEP_SECONDS = 0.5
# How far into a connection's unread bytes eviction looks for the end of a request's headers.
PEEK_BYTES = 16384


@dataclass
class ConnectionLimits:
    header_timeout: float
    max_header_bytes: int
    body_timeout: float
    max_connections: int
    retry_after: int
    on_closed: Callable[[str], None]
    _sweeping: bool = False

    def overload_response(self) -> bytes:
        retry = b"retry-after: %d\r\n" % self.retry_after
        return _canned(b"503 Service Unavailable", b"too many connections", retry)

    def header_too_large_response(self) -> bytes:
        detail = b"request headers too large (MAX_HEADER_BYTES)"
        return _canned(b"431 Request Header Fields Too Large", detail)

    def body_timeout_response(self) -> bytes:
        detail = b"request body not received in time (REQUEST_BODY_TIMEOUT_SECONDS)"
        return _canned(b"408 Request Timeout", detail)

    def watch(self, connections: set, loop: asyncio.AbstractEventLoop) -> None:
        """Start the deadline sweep over the server's connections (once)."""
        if not self._sweeping:
            self._sweeping = True
            loop.call_later(SWEEP_SECONDS, self._sweep, connections, loop)

    def _sweep(self, connections: set, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        for conn in list(connections):
            if conn.idle_since is not None and now - conn.idle_since > self.header_timeout:
                conn.cut_off("header_timeout")
            elif conn.body_since is not None and now - conn.body_since > self.body_timeout:
                conn.cut_off("body_timeout", self.body_timeout_response())
        loop.call_later(SWEEP_SECONDS, self._sweep, connections, loop)


class LimitedConnection:
    """Mixin for a uvicorn HTTP protocol class: header and body deadlines, the connection cap.

    A connection is *idle* from the moment it opens or its response completed until its next
    request's headers are complete: only idle connections are evicted, and only they run the
    header deadline. From the headers on, the body deadline runs until the request's body is
    complete (408 if it is late, or a plain close once the answer has started).
    """

    limits: ConnectionLimits
    idle_since: float | None = None
    body_since: float | None = None
    header_bytes: int = 0
    _cycle_at_idle: object = None

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        super().connection_made(transport)  # type: ignore[misc]
        self._idle()
        self.limits.watch(self.connections, self.loop)  # type: ignore[attr-defined]
        if len(self.connections) > self.limits.max_connections:  # type: ignore[attr-defined]
            self._make_room()

    def data_received(self, data: bytes) -> None:
        if self.idle_since is not None:
            self.header_bytes += len(data)
        super().data_received(data)  # type: ignore[misc]
        self._progress()
        if self.idle_since is not None and self.header_bytes > self.limits.max_header_bytes:
            self.cut_off("header_too_large", self.limits.header_too_large_response())

    def on_response_complete(self) -> None:
        self.body_since = None
        self._idle()
        super().on_response_complete()  # type: ignore[misc]
        self._progress()  # a pipelined request may already be complete

    def _idle(self) -> None:
        self.idle_since = self.loop.time()  # type: ignore[attr-defined]
        self.header_bytes = 0
        self._cycle_at_idle = self.cycle  # type: ignore[attr-defined]

    def _progress(self) -> None:
        cycle = self.cycle  # type: ignore[attr-defined]
        if self.idle_since is not None:
            if cycle is not None and cycle is not self._cycle_at_idle:  # headers complete
                self.idle_since = None
                self.body_since = self.loop.time() if cycle.more_body else None  # type: ignore[attr-defined]
        elif self.body_since is not None and not cycle.more_body:
            self.body_since = None

    def has_request_waiting(self) -> bool:
        """Whether complete request headers wait unread in the socket: a request the busy loop
        has not read yet, unlike the partial bytes of a connection that trickles its header."""
        tsock = self.transport.get_extra_info("socket")  # type: ignore[attr-defined]
        if tsock is None:
            return False
        sock = socket.socket(tsock.family, tsock.type, tsock.proto, tsock.fileno())
        try:
            waiting = sock.recv(PEEK_BYTES, socket.MSG_PEEK | socket.MSG_DONTWAIT)
        except OSError:  # nothing waiting (EAGAIN), or the peer is gone
            return False
        finally:
            sock.detach()  # the transport owns the descriptor
        return b"\r\n\r\n" in waiting

    def shutdown(self) -> None:
        """The server stops: a connection whose request already arrived but is not read yet is
        answered (with `Connection: close`, guard.py) instead of closed under the client."""
        cycle = self.cycle  # type: ignore[attr-defined]
        if (cycle is None or cycle.response_complete) and self.has_request_waiting():
            return
        super().shutdown()  # type: ignore[misc]

    def cut_off(self, reason: str, answer: bytes = b"") -> None:
        """Close for `reason`; `answer` is written first if the app has not started its own."""
        self.idle_since = self.body_since = None
        self.limits.on_closed(reason)
        cycle = self.cycle  # type: ignore[attr-defined]
        if answer and (cycle is None or cycle.response_complete or not cycle.response_started):
            if cycle is not None:
                cycle.response_started = cycle.response_complete = True  # the app's answer is void
            self.transport.write(answer)  # type: ignore[attr-defined]
        self.transport.close()  # type: ignore[attr-defined]

    def _make_room(self) -> None:
        idle = [c for c in self.connections if c is not self and c.idle_since is not None]  # type: ignore[attr-defined]
        idle.sort(key=lambda c: c.idle_since)
        # Not one whose socket already holds a whole request: that is a client (a probe) the
        # busy loop has not read yet, not an idle one. A trickle's partial header does not count.
        victim = next((c for c in idle if not c.has_request_waiting()), None)
        if victim is not None:
            victim.cut_off("idle_evicted")
            return
        self.idle_since = None
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
        max_header_bytes=settings.max_header_bytes,
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
