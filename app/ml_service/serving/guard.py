"""The HTTP rules every request meets before routing, whatever the HTTP server underneath.

- Ambiguous framing is refused: `Content-Length` together with `Transfer-Encoding`, or several
  different `Content-Length`s (RFC 9112 6.1/6.3: request smuggling) → 400 and the connection is
  closed. A transfer coding other than a single `chunked` (`identity, chunked`, `gzip, chunked`)
  is one this server does not implement → 501 and close (RFC 9112 6.1).
- Once shutdown began, every response carries `Connection: close`, so keep-alive clients open a
  new connection (to a pod that is still in the Service) instead of reusing one that is about to
  be closed under them.
- A request still running when the shutdown grace period ends is cancelled by the server; if it
  has not started its answer, it gets a JSON 503 with `Retry-After`, not a bare 500.
"""

from __future__ import annotations

import asyncio

import pydantic_core

from .service import Service

_CLOSE = (b"connection", b"close")


def _json_head(status: int, extra: list[tuple[bytes, bytes]]) -> dict:
    return {
        "type": "http.response.start",
        "status": status,
        "headers": [(b"content-type", b"application/json"), _CLOSE, *extra],
    }


def _framing_error(headers: list[tuple[bytes, bytes]]) -> tuple[int, str] | None:
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    for name, value in headers:
        if name == b"content-length":
            lengths.update(v.strip() for v in value.split(b","))
        elif name == b"transfer-encoding":
            codings += (v.strip().lower() for v in value.split(b","))
    if len(lengths) > 1 or (codings and lengths):
        return 400, "ambiguous request framing"
    if codings and codings != [b"chunked"]:
        return 501, "unsupported transfer coding (only chunked)"
    return None


class ConnectionGuard:
    def __init__(self, app, *, service: Service) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if refused := _framing_error(scope["headers"]):
            status, detail = refused
            body = pydantic_core.to_json({"detail": detail})
            await send(_json_head(status, [(b"content-length", str(len(body)).encode())]))
            await send({"type": "http.response.body", "body": body})
            return
        started = False

        async def send_closing_when_draining(message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                if self.service.shutting_down:
                    message["headers"] = [*message.get("headers", ()), _CLOSE]
            await send(message)

        try:
            await self.app(scope, receive, send_closing_when_draining)
        except asyncio.CancelledError:
            if started or not self.service.shutting_down:
                raise
            retry = str(self.service.settings.retry_after_seconds).encode()
            body = pydantic_core.to_json({"detail": "shutting down"})
            await send(
                _json_head(
                    503, [(b"retry-after", retry), (b"content-length", str(len(body)).encode())]
                )
            )
            await send({"type": "http.response.body", "body": body})
            raise
