"""The probe listener: `/health`, `/ready` and `/metrics` on PROBE_PORT, for the kubelet and
Prometheus only.

No client can reach or crowd it: the chart's Service does not expose the port (its NetworkPolicy
lets Prometheus in; the kubelet probes from the node), it has a connection budget of its own
(server.PROBE_CONNECTIONS, with the same header, body and write deadlines as the main listener),
and it runs on a thread with an event loop of its own. A flood of predictions, slow clients at
the connection cap or a large body being parsed keep the main loop busy, not this one: probes
wait at most for the interpreter's thread switch (a few milliseconds), not for the main loop's
queue (docs/api.md "Probes" has the measurements). The same paths on the main port still
answer, for clients that used them there.

Because it does not run on the main loop, `/health` here also checks that loop: it answers 503
when the main event loop has not turned for LOOP_STALL_SECONDS or the inference thread died, so
the kubelet restarts a pod that stopped serving instead of trusting a thread that still answers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading

import pydantic_core
import uvicorn
from uvicorn.server import ServerState

from .metrics import render
from .server import PROBE_CONNECTIONS, quiet_accept_errors
from .service import Service

log = logging.getLogger("ml_service")


def _json(status: int, content: object, headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
    body = pydantic_core.to_json(content)
    head = [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body))]
    head += [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    return status, head, body


class ProbeApp:
    """A plain ASGI app (no framework): three GET paths."""

    def __init__(self, service: Service) -> None:
        self.service = service

    def answer(self, method: str, path: str) -> tuple[int, list, bytes]:
        if method not in ("GET", "HEAD"):
            return _json(405, {"detail": "Method Not Allowed"})
        if path == "/health":
            return _json(*self.service.liveness())
        if path == "/ready":
            return _json(*self.service.readiness())
        if path == "/metrics":
            payload, content_type = render(self.service.registry)
            head = [(b"content-type", content_type.encode())]
            return 200, [*head, (b"content-length", b"%d" % len(payload))], payload
        return _json(404, {"detail": "Not Found"})

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return
        try:
            status, headers, body = self.answer(scope["method"], scope["path"])
        except Exception as exc:  # e.g. /metrics when the process is out of descriptors
            log.warning("probe %s failed: %s", scope["path"], type(exc).__name__)
            status, headers, body = _json(500, {"detail": "internal error"})
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})  # uvicorn drops it for HEAD


class ProbeListener:
    """The probe app on its own thread and event loop; `start` returns once it listens."""

    def __init__(
        self,
        service: Service,
        host: str,
        port: int,
        protocol: type,
        *,
        keepalive_timeout: float,
    ) -> None:
        # log_level None and the default access_log: uvicorn would set them on its global
        # loggers, which the main listener owns; the protocol logs no access lines.
        self.config = uvicorn.Config(
            ProbeApp(service),
            host=host,
            port=port,
            log_config=None,
            log_level=None,
            lifespan="off",
            loop="asyncio",
            http=protocol,
            ws="none",
            proxy_headers=False,
            server_header=False,
            timeout_keep_alive=keepalive_timeout,  # type: ignore[arg-type]
        )
        self.protocol = protocol
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._listening = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="probes", daemon=True)

    def start(self) -> None:
        self._thread.start()
        self._listening.wait()
        if self._error is not None:
            raise self._error

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(stop.set)
        self._thread.join(timeout=5)

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:
            self._error = exc
        finally:
            self._listening.set()

    async def _serve(self) -> None:
        self._loop = loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        quiet_accept_errors(loop)
        self.config.load()
        state = ServerState()
        factory = functools.partial(
            self.config.http_protocol_class, config=self.config, server_state=state, app_state={}
        )
        server = await loop.create_server(
            factory, host=self.config.host, port=self.config.port, backlog=PROBE_CONNECTIONS
        )
        self.protocol.limits.watch(state.connections, loop)  # type: ignore[attr-defined]
        log.info(
            "probe listener on http://%s:%d (/health, /ready, /metrics)",
            self.config.host,
            self.config.port,
        )
        self._listening.set()
        try:
            await self._stop.wait()
        finally:
            server.close()
            for connection in list(state.connections):
                connection.transport.close()
