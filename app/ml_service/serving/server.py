"""The HTTP server: uvicorn with per-connection limits and a graceful shutdown for Kubernetes.

Every resource one connection can hold is bounded (uvicorn alone bounds none of them):
- request headers must be complete within REQUEST_HEADER_TIMEOUT_SECONDS of the connection
  opening, or of the first byte of a request after a response, and fit in MAX_HEADER_BYTES and
  MAX_HEADERS fields (431: the parser keeps a header's bytes in memory and calls back once per
  field); idle keep-alive connections close after KEEPALIVE_TIMEOUT_SECONDS (long, so a client's
  pool closes its idle connections first: a connection the server closes just as the client
  reuses it loses that request); a body must be complete within REQUEST_BODY_TIMEOUT_SECONDS of
  its headers (408);
- at most PIPELINE_DEPTH requests wait behind the one being answered: beyond that the server
  stops reading, answers the ones it has (the last with `Connection: close`) and closes, so the
  client retries the rest elsewhere (RFC 9112 9.3.2);
- unsent response bytes: a client must take each response within
  RESPONSE_WRITE_TIMEOUT_SECONDS, or the connection is aborted (its buffer dropped, its slot
  freed);
- at most MAX_CONNECTIONS are open: a new one closes a connection that is stuck on a client that
  does not read, or the longest-idle one waiting for request headers whose socket does not
  already hold complete headers (a request the busy loop has not read yet), or, when none is,
  gets a canned 503 and is closed.
The file-descriptor budget (`fd_budget`) keeps the cap, the accept burst and the probe
listener's own budget under the open-file limit, so `accept()` never runs out of descriptors.
Each closure is counted in `mlservice_connections_closed_total{reason}`; log lines are
rate-limited (redact.py), so no client can fill the log. The kubelet and Prometheus use the
probe listener (probes.py), which has budgets, a thread and an event loop of its own.

Every request passes `ConnectionLimits.admit` once its headers are complete, before the app
or its body. On the main listener a POST (the work: predictions, scoring, feedback) must also fit
under the adaptive concurrency limit (admission.py); one that does not gets a canned 503 with
`Retry-After` from here, without a task, the app or its body being parsed: its body (up to
SHED_READ_BYTES) is skipped by the parser and the connection stays open; a larger or chunked
body is not read at all (503 and close). A request pipelined behind one in flight gets its 503
in order, through a tiny ASGI app. Each refusal is counted in
`mlservice_requests_shed_total{reason}`.

Shutdown sequence on SIGTERM:
1. readiness turns 503 at once and every response says `Connection: close` (guard.py);
2. for SHUTDOWN_DRAIN_SECONDS the listener stays open, so requests routed before the endpoint
   update still land;
3. the listener refuses new connections (their SYNs are dropped), the handshakes under way
   complete, the connections waiting in its queue are accepted, then it closes;
   a request that already arrived is answered, and a connection that has just opened gets a
   moment to send its request; in-flight requests get up to SHUTDOWN_GRACE_SECONDS, the ones
   still running after it get a JSON 503;
4. lifespan shutdown stops the loader and inference threads; the process exits 0.
A second signal skips the drain; SIGINT (Ctrl-C) skips it as well. SIGHUP is ignored (the
settings are read once, at start): a terminal hang-up or a stray reload signal never stops a pod.
"""

from __future__ import annotations

import asyncio
import collections
import ctypes
import errno
import fcntl
import functools
import logging
import resource
import signal
import socket
import struct
import sys
import termios
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from types import FrameType

import httptools
import uvicorn
from uvicorn.config import STARTUP_FAILURE
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from .admission import AdaptiveLimit
from .inference import CLIENT_GONE
from .settings import Settings

log = logging.getLogger("ml_service")

# File descriptors kept free for everything that is not a client connection (the listeners,
# log files, the model download, MLflow's HTTP pool, imports).
FD_RESERVE = 64
# The probe listener's connection budget (and listen backlog): the kubelet opens one connection
# per probe, Prometheus one or two; it never shares the main listener's.
PROBE_CONNECTIONS = 16
# Accept bursts that can be open at once beyond a listener's cap (fd_budget).
ACCEPT_BURSTS = 4
# Connections turned away at the cap that may linger at once (answer, FIN, up to
# FRESH_CONNECTION_SECONDS to read what the client still sends, so it is not reset): their
# descriptors are in fd_budget (at most an eighth of what is free); beyond, one closes at once.
LINGERING_CONNECTIONS = 1024
# A connection whose client has not taken its answer for this long may be evicted at the cap.
STUCK_SECONDS = 1.0
# At most this many requests wait, fully read, behind the one being answered on a connection.
PIPELINE_DEPTH = 8
# Most header fields per request: each one is a parser callback and a list entry.
MAX_HEADERS = 100
# How often the deadlines are checked: one pass over the open connections, instead of a timer
# started and cancelled on every request.
SWEEP_SECONDS = 0.5
# How far into a connection's unread bytes eviction looks for the end of a request's headers.
PEEK_BYTES = 16384
# At shutdown, a connection this young that has not sent a request yet gets until this age to
# send one (it is answered with `Connection: close`) instead of being closed under it.
FRESH_CONNECTION_SECONDS = 1.0
# A refused request's body up to this size is skipped by the parser, so the connection stays
# open for the client's next request; a larger (or chunked) one is never read: 503 and close.
# A client that sends its body anyway makes the lingering close read it too, and then opens a
# new connection: at 64 KiB, refusing 80 KB (100-row) requests at 4x capacity cost more than
# serving them.
SHED_READ_BYTES = 1024 * 1024
# `Retry-After` of a refusal under load: a burst is over, or another replica answers, by then.
SHED_RETRY_AFTER_SECONDS = 1
# accept() errors that mean "out of descriptors or memory": asyncio retries after a second.
ACCEPT_RESOURCE_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def _canned(status: bytes, detail: bytes, extra: bytes = b"") -> bytes:
    """A complete JSON error response that closes the connection, written by the server."""
    body = b'{"detail":"%s"}' % detail
    return (
        b"HTTP/1.1 %s\r\ncontent-type: application/json\r\n%sconnection: close\r\n"
        b"content-length: %d\r\n\r\n%s" % (status, extra, len(body), body)
    )


HEADER_TOO_LARGE = _canned(
    b"431 Request Header Fields Too Large", b"request headers too large (MAX_HEADER_BYTES)"
)
TOO_MANY_HEADERS = _canned(
    b"431 Request Header Fields Too Large",
    b"more than %d request header fields" % MAX_HEADERS,
)
BODY_TIMEOUT = _canned(
    b"408 Request Timeout", b"request body not received in time (REQUEST_BODY_TIMEOUT_SECONDS)"
)
BAD_REQUEST = _canned(b"400 Bad Request", b"invalid HTTP request")
_SHED_BODY = b'{"detail":"overloaded, retry later"}'
_SHED_HEAD = b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\n" + (
    b"retry-after: %d\r\ncontent-length: %d\r\n" % (SHED_RETRY_AFTER_SECONDS, len(_SHED_BODY))
)
SHED_KEEP_OPEN = _SHED_HEAD + b"\r\n" + _SHED_BODY
SHED_CLOSE = _SHED_HEAD + b"connection: close\r\n\r\n" + _SHED_BODY


async def _shed_app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    """The 503 of a refused request pipelined behind one in flight (answered in order)."""
    headers = [
        (b"content-type", b"application/json"),
        (b"retry-after", b"%d" % SHED_RETRY_AFTER_SECONDS),
        (b"content-length", b"%d" % len(_SHED_BODY)),
    ]
    await send({"type": "http.response.start", "status": 503, "headers": headers})
    await send({"type": "http.response.body", "body": _SHED_BODY})


class Refused(Exception):
    """Raised from a parser callback to stop reading a connection: `answer` (if any, and if no
    answer of the app is under way) is written and the connection closes; without one, the
    requests already read are answered first."""

    def __init__(self, reason: str, answer: bytes = b"") -> None:
        super().__init__(reason)
        self.reason, self.answer = reason, answer


@dataclass
class ConnectionLimits:
    """The limits of one listener, and the sweep that enforces its deadlines."""

    header_timeout: float
    max_header_bytes: int
    body_timeout: float
    write_timeout: float
    max_connections: int
    retry_after: int
    on_closed: Callable[[str], None]
    # Runs on every sweep: the main loop's heartbeat for the probe listener's liveness check.
    on_sweep: Callable[[], None] = lambda: None
    # The adaptive concurrency limit of POST requests (none on the probe listener), and what
    # counts each refusal by reason.
    limiter: AdaptiveLimit | None = None
    on_shed: Callable[[str], None] = lambda reason: None
    connections: set = field(default_factory=set)
    # The idle connections, longest idle first, and those whose client has not taken an answer
    # for STUCK_SECONDS (found by the sweep): making room at the cap takes the first of either
    # instead of scanning every connection for each one that arrives.
    idle: dict = field(default_factory=dict)
    stuck: list = field(default_factory=list)
    no_victim_until: float = 0.0  # (loop time) the last look at the cap found none to evict
    # Stops (True) and restarts (False) accepting on the listener: at the cap with nothing to
    # evict, new connections wait in the kernel's listen queue instead of being accepted only
    # to be turned away (a client that reconnects at once made that churn cost all the CPU).
    pause_accepting: Callable[[bool], None] | None = None
    accepting_paused: bool = False
    max_lingering: int = 0  # connections turned away at the cap that may linger (fd_budget)
    lingering: int = 0

    def overload_response(self) -> bytes:
        retry = b"retry-after: %d\r\n" % self.retry_after
        return _canned(b"503 Service Unavailable", b"too many connections", retry)

    def limited(self, method: bytes) -> bool:
        """Whether a request counts against the concurrency limit: every POST on a listener
        that has one (the work; GETs are probes, the model's description, the docs)."""
        return self.limiter is not None and method == b"POST"

    def admit(self, body_length: int | None) -> int:
        """A limited request's headers are complete, its body (`body_length` bytes, None:
        unknown) not read yet, the app not called: 0 turns it away (the connection answers
        503); otherwise it is admitted at the cost returned, and `release` must follow with
        that cost once it is answered or its client is gone."""
        assert self.limiter is not None
        cost = self.limiter.cost(body_length)
        if self.limiter.try_acquire(cost):
            return cost
        self.on_shed("concurrency_limit")
        return 0

    def release(self, admitted: tuple[float, int], now: float) -> None:
        assert self.limiter is not None
        started, cost = admitted
        self.limiter.release(now - started, cost)

    def resume_accepting(self) -> None:
        if self.accepting_paused and len(self.connections) < self.max_connections:
            self.accepting_paused = False
            self.pause_accepting(False)  # type: ignore[misc]

    def watch(self, connections: set, loop: asyncio.AbstractEventLoop) -> None:
        """Start the deadline sweep over a server's connections."""
        self.connections = connections
        loop.call_later(SWEEP_SECONDS, self._sweep, loop)

    def _sweep(self, loop: asyncio.AbstractEventLoop) -> None:
        now = loop.time()
        self.on_sweep()
        self.resume_accepting()
        stuck = []
        for conn in list(self.connections):
            if conn.transport.is_closing():  # only its unsent bytes keep it: the write deadline
                pass
            elif conn.idle_since is not None:
                since = conn.header_since
                if since is not None and now - since > self.header_timeout:
                    conn.cut_off("header_timeout")
                elif conn.drain_deadline is not None and now > conn.drain_deadline:
                    conn.transport.close()
            elif conn.body_since is not None and now - conn.body_since > self.body_timeout:
                conn.cut_off("body_timeout", BODY_TIMEOUT)
            self._write_deadline(conn, now)
            if conn.write_since is not None and now - conn.write_since >= STUCK_SECONDS:
                stuck.append(conn)
        self.stuck = stuck
        loop.call_later(SWEEP_SECONDS, self._sweep, loop)

    def _write_deadline(self, conn: LimitedConnection, now: float) -> None:
        """Every byte written must be taken by the client within `write_timeout`: the clock
        starts when bytes are outstanding and restarts once all of those were taken."""
        transport = conn.transport  # type: ignore[attr-defined]
        outstanding = transport.get_write_buffer_size() + _unsent(transport)
        if not outstanding:
            conn.write_since = None
        elif conn.write_since is None or transport.written - outstanding >= conn.write_mark:
            conn.write_since, conn.write_mark = now, transport.written
        elif now - conn.write_since > self.write_timeout:
            conn.cut_off("write_timeout", abort=True)


def _unsent(transport: asyncio.Transport) -> int:
    """Bytes in the kernel's send queue: a client that stopped reading leaves them there
    (on loopback the kernel takes ~100 KB per connection before asyncio buffers anything)."""
    sock = transport.get_extra_info("socket")
    try:
        return struct.unpack("i", fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, b"\0" * 4))[0]
    except (OSError, AttributeError):  # closed, or not a socket the kernel can tell about
        return 0


class _CountingTransport:
    """The connection's transport, counting the bytes written to it (for the write
    deadline); everything else goes to the transport itself."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self.written = 0
        # What uvicorn calls for every request, bound here: `__getattr__` is the slow path.
        self.is_closing = transport.is_closing
        self.get_extra_info = transport.get_extra_info
        self.pause_reading = transport.pause_reading
        self.resume_reading = transport.resume_reading
        self.close = transport.close

    def write(self, data: bytes) -> None:
        self.written += len(data)
        self._transport.write(data)

    def __getattr__(self, name: str):  # type: ignore[no-untyped-def]
        return getattr(self._transport, name)


def _stay_paused() -> None:
    pass


class _Flow(FlowControl):
    """uvicorn's flow control, except that a connection that stopped reading for good (a full
    pipeline, a lingering close) stays stopped: uvicorn resumes reading whenever a request reads
    its body or ends."""

    held = False

    def hold(self) -> None:
        self.held = True
        # An instance attribute: until then uvicorn calls its own method, with no call between.
        self.resume_reading = _stay_paused  # type: ignore[method-assign]


class LimitedConnection:
    """Mixin for uvicorn's httptools protocol: the per-connection limits of the module docstring.

    A connection is *idle* from the moment it opens or its last response completed until its
    next request's headers are complete: only idle connections run the header deadline and are
    evicted for being idle. The header deadline starts when the connection opens, or at the
    first byte of a request after a response: a kept-alive connection with nothing sent has only
    uvicorn's keep-alive timer. From its headers on, a request's body deadline runs until the body
    is complete (408 if it is late, or a plain close once the answer has started).
    """

    limits: ConnectionLimits
    _idle_since: float | None = None
    body_since: float | None = None
    write_since: float | None = None  # response bytes outstanding since (seen by the sweep)
    write_mark: int = 0  # bytes written when that clock started
    drain_deadline: float | None = None
    header_since: float | None = None  # the header deadline's start (None: not running)
    opened_at: float = 0.0
    served: int = 0
    # The request being read: its header bytes as parsed, the bytes of the reads its header
    # block spanned whole (the parser holds a header it has not finished), its fields.
    header_bytes: int = 0
    spanned_bytes: int = 0
    header_fields: int = 0
    in_headers: bool = False
    # When each admitted request still unanswered on this connection was admitted and at what
    # admission cost, in order (None for one refused in order behind another); a refused
    # request's body being skipped.
    admitted: collections.deque
    shedding: bool = False
    lingers: bool = False  # turned away at the cap, lingering: counted in limits.lingering

    @property
    def idle_since(self) -> float | None:
        return self._idle_since

    @idle_since.setter
    def idle_since(self, value: float | None) -> None:
        # Kept in limits.idle too, in the order connections became idle (longest idle first).
        self._idle_since = value
        idle = self.limits.idle
        idle.pop(self, None)
        if value is not None:
            idle[self] = None

    def connection_made(self, transport) -> None:  # type: ignore[no-untyped-def]
        super().connection_made(_CountingTransport(transport))  # type: ignore[misc]
        self.flow = _Flow(transport)
        self.admitted = collections.deque()
        self.opened_at = self.idle_since = self.header_since = self.loop.time()  # type: ignore[attr-defined]
        if len(self.connections) > self.limits.max_connections:  # type: ignore[attr-defined]
            self._make_room()

    def data_received(self, data: bytes) -> None:
        if self.flow.held:
            return
        self._unset_keepalive_if_required()  # type: ignore[attr-defined]
        if self.header_since is None:  # a kept-alive connection's next request begins
            self.header_since = self.loop.time()  # type: ignore[attr-defined]
        whole_chunk_in_headers = self.in_headers
        try:
            self.parser.feed_data(data)  # type: ignore[attr-defined]
        except httptools.HttpParserUpgrade:
            self._unsupported_upgrade_warning()  # type: ignore[attr-defined]
        except httptools.HttpParserError as exc:
            refused = exc.__context__
            if isinstance(refused, Refused):
                self._refused(refused)
            else:
                self.cut_off("invalid_request", BAD_REQUEST)
            return
        # A header the parser has not finished is not seen field by field: count the reads
        # that started inside the block and did not finish it. (The read a block starts in is
        # not counted: it may hold the end of a previous body; a read is at most 256 KiB.)
        if self.in_headers and whole_chunk_in_headers:
            self.spanned_bytes += len(data)
            if self.spanned_bytes > self.limits.max_header_bytes:
                self.cut_off("header_too_large", HEADER_TOO_LARGE)

    # ---------------------------------------------------------------- parser callbacks

    def on_message_begin(self) -> None:
        if len(self.pipeline) >= PIPELINE_DEPTH:  # type: ignore[attr-defined]
            raise Refused("pipeline_full")
        self.in_headers = True
        self.header_bytes = self.spanned_bytes = self.header_fields = 0
        super().on_message_begin()  # type: ignore[misc]

    def _header_grew(self, n: int) -> None:
        self.header_bytes += n
        if self.header_bytes > self.limits.max_header_bytes:
            raise Refused("header_too_large", HEADER_TOO_LARGE)

    def on_url(self, url: bytes) -> None:
        self._header_grew(len(url))
        super().on_url(url)  # type: ignore[misc]

    def on_header(self, name: bytes, value: bytes) -> None:
        self.header_fields += 1
        if self.header_fields > MAX_HEADERS:
            raise Refused("header_too_large", TOO_MANY_HEADERS)
        self.header_bytes += len(name) + len(value) + 4  # (_header_grew, inline: per field)
        if self.header_bytes > self.limits.max_header_bytes:
            raise Refused("header_too_large", HEADER_TOO_LARGE)
        super().on_header(name, value)  # type: ignore[misc]

    def on_headers_complete(self) -> None:
        self.in_headers = False
        self.idle_since = None
        now = self.body_since = self.loop.time()  # type: ignore[attr-defined]
        if self.limits.limited(self.parser.get_method()):  # type: ignore[attr-defined]
            length = self._body_length()
            cost = self.limits.admit(length)
            if not cost:
                self._shed(length)
                return
            self.admitted.append((now, cost))
        super().on_headers_complete()  # type: ignore[misc]
        cycle = self.cycle  # type: ignore[attr-defined]
        if cycle is not None:  # (none for an upgrade request)
            # The inference engine skips the work of a client that has gone (inference.py).
            self.scope.setdefault("extensions", {})[CLIENT_GONE] = lambda: cycle.disconnected  # type: ignore[attr-defined]

    def _body_length(self) -> int | None:
        """The declared body length; None if unknown (chunked)."""
        length = None
        for name, value in self.headers:  # type: ignore[attr-defined]
            if name == b"transfer-encoding":
                return None
            if name == b"content-length" and value.isdigit():
                length = int(value)
        return length

    def _shed(self, length: int | None) -> None:
        """Answer a refused request with a canned 503, in order, at the least cost: its body is
        skipped by the parser (small) or never read (large, chunked: close)."""
        cycle = self.cycle  # type: ignore[attr-defined]
        if cycle is not None and not cycle.response_complete:  # behind one in flight
            self.admitted.append(None)
            app, self.app = self.app, _shed_app  # type: ignore[attr-defined]
            try:
                super().on_headers_complete()  # type: ignore[misc]
            finally:
                self.app = app
            return
        if length is None or length > SHED_READ_BYTES or self.expect_100_continue:  # type: ignore[attr-defined]
            self._refuse_unread()
            return
        self.shedding = True

    def _refuse_unread(self) -> None:
        """503 and close without reading the body. Closing a socket with unread bytes makes the
        kernel reset the connection (the client may lose the 503 with it), so this is a
        lingering close: the answer and a FIN go out, what the client still sends is read and
        dropped, and the connection closes once the client closes it, or a second later."""
        self.limits.on_closed("overloaded")
        self._linger(SHED_CLOSE)

    def _linger(self, answer: bytes) -> None:
        self.transport.write(answer)  # type: ignore[attr-defined]
        self.transport.write_eof()  # type: ignore[attr-defined]
        self.flow.hold()  # data_received drops everything from here on
        now = self.loop.time()  # type: ignore[attr-defined]
        self.body_since, self.idle_since = None, now
        self.drain_deadline = now + FRESH_CONNECTION_SECONDS

    def on_body(self, body: bytes) -> None:
        if not (self.shedding or self.flow.held):
            super().on_body(body)  # type: ignore[misc]

    def on_message_complete(self) -> None:
        if self.flow.held:  # refused unread: the rest of the chunk is dropped
            return
        self.body_since = None
        if not self.shedding:
            super().on_message_complete()  # type: ignore[misc]
            return
        self.shedding = False
        if self.parser.should_keep_alive():  # type: ignore[attr-defined]
            self.transport.write(SHED_KEEP_OPEN)  # type: ignore[attr-defined]
            self._answered()
        else:
            self.transport.write(SHED_CLOSE)  # type: ignore[attr-defined]
            self.transport.close()  # type: ignore[attr-defined]

    def on_response_complete(self) -> None:
        if self.admitted:
            admitted = self.admitted.popleft()
            if admitted is not None:
                self.limits.release(admitted, self.loop.time())  # type: ignore[attr-defined]
        self._answered()

    def _answered(self) -> None:
        self.served += 1
        super().on_response_complete()  # type: ignore[misc]  # starts a queued request, if any
        cycle = self.cycle  # type: ignore[attr-defined]  # the last request read
        if cycle is None or cycle.response_complete:
            self.idle_since = self.loop.time()  # type: ignore[attr-defined]
            # The next request's deadline runs from its first byte; one already begun, from now.
            self.header_since = self.idle_since if self.in_headers else None

    def connection_lost(self, exc: Exception | None) -> None:
        # Requests whose answers will never be sent: their clients waited this long for nothing.
        now = self.loop.time()  # type: ignore[attr-defined]
        while self.admitted:
            admitted = self.admitted.popleft()
            if admitted is not None:
                self.limits.release(admitted, now)
        if self.lingers:
            self.limits.lingering -= 1
        self.idle_since = None
        super().connection_lost(exc)  # type: ignore[misc]
        self.limits.resume_accepting()

    # ---------------------------------------------------------------- closing

    def _refused(self, refused: Refused) -> None:
        if refused.answer:
            self.cut_off(refused.reason, refused.answer)
            return
        # Stop reading; the requests already read are answered, the last one closes.
        self.flow.hold()
        self.flow.pause_reading()
        self.limits.on_closed(refused.reason)
        self.cycle.keep_alive = False  # type: ignore[attr-defined]

    def cut_off(self, reason: str, answer: bytes = b"", *, abort: bool = False) -> None:
        """Close for `reason`; `answer` is written first if no answer of the app has started.
        A request still running sees a disconnected client (its answer is dropped)."""
        self.idle_since = self.body_since = self.write_since = None
        self.limits.on_closed(reason)
        cycle = self.cycle  # type: ignore[attr-defined]
        responding = cycle is not None and cycle.response_started and not cycle.response_complete
        if answer and not abort and not responding and not self.pipeline:  # type: ignore[attr-defined]
            self.transport.write(answer)  # type: ignore[attr-defined]
        if cycle is not None and not cycle.response_complete:
            cycle.disconnected = True
            cycle.message_event.set()
        if abort or self.transport.is_closing():  # type: ignore[attr-defined]
            self.transport.abort()  # type: ignore[attr-defined]  # drop what is unsent
        else:
            self.transport.close()  # type: ignore[attr-defined]

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
        """The server stops: a request that already arrived but is not read yet is answered
        (with `Connection: close`, guard.py), and a connection opened a moment ago gets until
        FRESH_CONNECTION_SECONDS to send its request, instead of being closed under it."""
        cycle = self.cycle  # type: ignore[attr-defined]
        if cycle is None or cycle.response_complete:
            if self.has_request_waiting():
                return
            if self.served == 0:
                self.drain_deadline = self.opened_at + FRESH_CONNECTION_SECONDS
                if self.loop.time() < self.drain_deadline:  # type: ignore[attr-defined]
                    return
        super().shutdown()  # type: ignore[misc]

    def _make_room(self) -> None:
        limits, limiter = self.limits, self.limits.limiter
        now = self.loop.time()  # type: ignore[attr-defined]
        # Refusing work already: making room would only admit one more request to refuse. And
        # after a look found no connection to evict, none is looked for until the next sweep:
        # under overload every idle connection holds a request the loop has not read yet, and
        # looking again for each connection that arrives would cost more than serving.
        refusing = limiter is not None and limiter.in_flight >= limiter.current
        if not refusing and now >= limits.no_victim_until:
            # A client that has not taken its answer for a while holds its slot for nothing.
            stuck = [
                c
                for c in limits.stuck
                if c is not self and c.write_since is not None and not c.transport.is_closing()
            ]
            if stuck:
                min(stuck, key=lambda c: c.write_since).cut_off("idle_evicted", abort=True)
                return
            # The longest idle, but not one whose socket already holds a whole request: that
            # is a client the busy loop has not read yet. A trickle's partial header does not
            # count; one turned away and lingering is not idle.
            idle = (c for c in limits.idle if c is not self and not c.flow.held)
            victim = next((c for c in idle if not c.has_request_waiting()), None)
            if victim is not None:
                victim.cut_off("idle_evicted")
                return
            limits.no_victim_until = now + SWEEP_SECONDS
        self._turn_away()

    def _turn_away(self) -> None:
        """503 and close. Its request may already be in the socket: a lingering close (within
        the descriptor budget), so the 503 is not reset away."""
        limits = self.limits
        limits.on_closed("over_capacity")
        if limits.pause_accepting is not None and not limits.accepting_paused:
            limits.accepting_paused = True
            limits.pause_accepting(True)
        if limits.lingering < limits.max_lingering:
            limits.lingering += 1
            self.lingers = True
            self._linger(limits.overload_response())
            return
        self.idle_since = None
        self.transport.write(limits.overload_response())  # type: ignore[attr-defined]
        self.transport.close()  # type: ignore[attr-defined]


def protocol_class(limits: ConnectionLimits, *, access_log: bool = True) -> type:
    # httptools (llhttp, C): about twice the requests per second of the pure-Python h11 parser
    # here (docs/benchmarks.md), and it refuses malformed framing itself.
    attrs: dict = {"limits": limits}
    if not access_log:  # uvicorn decides per connection from the (global) access logger
        attrs["connection_made"] = _without_access_log
    return type("LimitedHttpTools", (LimitedConnection, HttpToolsProtocol), attrs)


def _without_access_log(self, transport) -> None:  # type: ignore[no-untyped-def]
    LimitedConnection.connection_made(self, transport)
    self.access_log = False


# ---------------------------------------------------------------- file descriptors


def raise_open_file_limit() -> int:
    """Raise the open-file soft limit to the hard limit (no privilege needed); the new soft
    limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    return soft


# How often freed heap memory goes back to the system (see return_freed_memory).
TRIM_INTERVAL_SECONDS = 5.0


def return_freed_memory() -> None:
    """glibc keeps freed heap pages in the process: a flood of large requests left ~500 MB behind.
    A fixed mmap threshold would return large blocks as they are freed, but it also turns off
    glibc's adaptive trimming, and every batch of the flat tree walk (arrays of a few hundred KB)
    then faulted its pages in anew: /predict with 100 rows at 50 connections served a quarter of
    its throughput. Instead, a thread hands free pages back with malloc_trim every few seconds
    (a heap walk of well under a millisecond when little is free); allocation stays adaptive."""
    try:
        trim = ctypes.CDLL(None).malloc_trim
    except (OSError, AttributeError):  # not glibc: nothing to return
        return
    trim.argtypes = [ctypes.c_size_t]

    def run() -> None:
        while True:
            time.sleep(TRIM_INTERVAL_SECONDS)
            trim(0)

    threading.Thread(target=run, name="trim", daemon=True).start()


@dataclass(frozen=True)
class FdBudget:
    max_connections: int
    backlog: int  # the listen queue, and the most connections asyncio accepts in one go
    lingering: int = 0  # connections turned away at the cap that may linger at once


def fd_budget(wanted: int, open_files: int) -> FdBudget:
    """MAX_CONNECTIONS and the accept backlog under the open-file limit.

    asyncio accepts up to `backlog` connections per turn of the loop; a connection only meets
    the cap two turns later, and the descriptor of one it turns away is released a turn after
    that: up to ACCEPT_BURSTS bursts are open beyond the cap. So cap + ACCEPT_BURSTS x backlog,
    the same for the probe listener, the LINGERING_CONNECTIONS turned away at the cap and
    FD_RESERVE must fit."""
    free = open_files - FD_RESERVE - PROBE_CONNECTIONS * (1 + ACCEPT_BURSTS)
    lingering = max(0, min(LINGERING_CONNECTIONS, free // 8))
    free -= lingering
    cap = min(wanted, max(8, free - ACCEPT_BURSTS * 16))
    if cap < wanted:
        log.warning("MAX_CONNECTIONS lowered to %d: the open-file limit is %d", cap, open_files)
    return FdBudget(cap, max(8, min(2048, (free - cap) // ACCEPT_BURSTS)), lingering)


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio logs a traceback for every accept() that runs out of descriptors (then retries
    after a second): one rate-limited line instead."""

    def handler(loop: asyncio.AbstractEventLoop, context: dict) -> None:
        exc = context.get("exception")
        if isinstance(exc, OSError) and exc.errno in ACCEPT_RESOURCE_ERRORS:
            log.warning("accept() failed (%s); retrying in a second", errno.errorcode[exc.errno])
            return
        loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


# ---------------------------------------------------------------- the server


class GracefulServer(uvicorn.Server):
    def __init__(
        self,
        config: uvicorn.Config,
        settings: Settings,
        limits: ConnectionLimits,
        on_shutdown: Callable[[], None],
        probes: object,
    ) -> None:
        super().__init__(config)
        self._settings = settings
        self._limits = limits
        self._on_shutdown = on_shutdown
        self._probes = probes
        self._draining = False
        self._lock = threading.Lock()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        loop = asyncio.get_running_loop()
        quiet_accept_errors(loop)
        loop.add_signal_handler(signal.SIGHUP, log.info, "SIGHUP ignored (settings are read once)")
        self._limits.on_sweep()  # the probe listener's liveness check starts from here
        try:
            self._probes.start()  # type: ignore[attr-defined]
        except OSError as exc:
            log.error("the probe listener cannot start: %s", exc)
            sys.exit(STARTUP_FAILURE)
        await super().startup(sockets)
        self._limits.watch(self.server_state.connections, loop)
        self._limits.pause_accepting = self._accepting_switch(loop)

    def _accepting_switch(self, loop: asyncio.AbstractEventLoop) -> Callable[[bool], None] | None:
        """pause(True) stops reading the listening sockets, pause(False) reads them again,
        through the selector event loop's reader of each (asyncio has no public pause); None
        if the loop is not one."""
        readers = []
        for server in getattr(self, "servers", []):
            for tsock in server.sockets:
                try:
                    handle = loop._selector.get_key(tsock.fileno()).data[0]  # type: ignore[attr-defined]
                except (AttributeError, KeyError, ValueError):
                    return None
                # (copied: removing a reader cancels its handle, which clears them)
                readers.append((tsock.fileno(), handle._callback, handle._args))

        def pause(paused: bool) -> None:
            for fd, callback, args in readers:
                if paused:
                    loop.remove_reader(fd)
                elif not self.should_exit:
                    loop._add_reader(fd, callback, *args)  # type: ignore[attr-defined]

        return pause if readers else None

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

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await self._accept_waiting()
        try:
            await super().shutdown(sockets)
        finally:
            self._probes.stop()  # type: ignore[attr-defined]

    async def _accept_waiting(self) -> None:
        """Accept what waits in the listen queue before the listener closes: closing it would
        reset connections whose clients may already have sent a request. The listener first
        stops taking new connections but lets the handshakes under way complete (refuse_syns),
        so none can join the queue between its last accept and the close; such a client's SYN
        goes unanswered and its retry is refused. (With 50 clients reconnecting every few
        milliseconds, 10 shutdowns in 72 reset one that way, none in 60 with the filter.)"""
        loop = asyncio.get_running_loop()
        factory = functools.partial(
            self.config.http_protocol_class,
            config=self.config,
            server_state=self.server_state,
            app_state=self.lifespan.state,
        )
        servers = getattr(self, "servers", [])
        listeners = [
            socket.socket(tsock.family, tsock.type, tsock.proto, tsock.fileno())
            for server in servers
            for tsock in server.sockets
        ]
        if any([refuse_syns(listener) for listener in listeners]):
            await asyncio.sleep(HANDSHAKE_SECONDS)
        accepted = []
        for listener in listeners:
            try:
                while True:
                    conn, _ = listener.accept()
                    conn.setblocking(False)
                    accepted.append(loop.connect_accepted_socket(factory, conn))
            except OSError:  # the queue is empty (EAGAIN), or out of descriptors
                pass
            finally:
                listener.detach()  # asyncio owns the descriptor
        # Each server only once all its sockets' queues are accepted (one server may listen on
        # several), then at once: a connection queued from here on would be reset.
        for server in servers:
            server.close()
        if accepted:
            await asyncio.gather(*accepted, return_exceptions=True)


# A classic BPF program that drops a TCP segment whose flags are SYN without ACK (a new
# connection) and keeps every other one (handshakes under way): `ldb [13]` (the flags byte of
# the TCP header) `and #0x12` `jeq #0x02` `ret #0` / `ret #-1`.
_SYN_FILTER_CODE = ((0x30, 0, 0, 13), (0x54, 0, 0, 0x12), (0x15, 0, 1, 0x02), (0x06, 0, 0, 0),
                    (0x06, 0, 0, 0xFFFFFFFF))  # fmt: skip
_SYN_FILTER = (ctypes.c_ubyte * (8 * len(_SYN_FILTER_CODE))).from_buffer_copy(
    b"".join(struct.pack("HBBI", *insn) for insn in _SYN_FILTER_CODE)
)
SO_ATTACH_FILTER = getattr(socket, "SO_ATTACH_FILTER", 26)
# How long the handshakes under way get to complete once the listener refuses new ones.
HANDSHAKE_SECONDS = 0.05


def refuse_syns(listener: socket.socket) -> bool:
    """The listener drops new connections' SYNs (Linux: a socket filter); the connections in
    its queue and the handshakes under way are kept. False if the filter cannot be attached
    (not Linux): the close may then reset a connection queued after the last accept."""
    program = struct.pack("HL", len(_SYN_FILTER_CODE), ctypes.addressof(_SYN_FILTER))
    try:
        listener.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, program)  # struct sock_fprog
    except OSError as exc:
        log.debug("the listener cannot refuse SYNs: %s", exc)
        return False
    return True


def build(app, settings: Settings) -> GracefulServer:  # type: ignore[no-untyped-def]
    """The configured server for `app` (an `app.create_app` application)."""
    from .probes import ProbeListener

    service = app.state.service
    return_freed_memory()
    budget = fd_budget(settings.max_connections, raise_open_file_limit())

    def closed(reason: str) -> None:
        service.metrics.connections_closed.labels(reason).inc()

    shed_counts = {r: service.metrics.shed.labels(r) for r in service.metrics.SHED_REASONS}

    def shed(reason: str) -> None:  # once per refusal: no label lookup
        shed_counts[reason].inc()

    def limits(max_connections: int, on_sweep: Callable[[], None] = lambda: None, limiter=None):  # type: ignore[no-untyped-def]
        return ConnectionLimits(
            header_timeout=settings.request_header_timeout_seconds,
            max_header_bytes=settings.max_header_bytes,
            body_timeout=settings.request_body_timeout_seconds,
            write_timeout=settings.response_write_timeout_seconds,
            max_connections=max_connections,
            retry_after=settings.retry_after_seconds,
            on_closed=closed,
            on_sweep=on_sweep,
            limiter=limiter,
            on_shed=shed,
        )

    main_limits = limits(
        budget.max_connections, on_sweep=service.heartbeat, limiter=service.admission
    )
    main_limits.max_lingering = budget.lingering
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
        http=protocol_class(main_limits),
        ws="none",
        proxy_headers=False,
        server_header=False,
        backlog=budget.backlog,
    )
    probes = ProbeListener(
        service,
        settings.host,
        settings.probe_port,
        protocol_class(limits(PROBE_CONNECTIONS), access_log=False),
        keepalive_timeout=settings.keepalive_timeout_seconds,
    )

    def begin_shutdown() -> None:
        service.shutting_down = True

    return GracefulServer(config, settings, main_limits, begin_shutdown, probes)
