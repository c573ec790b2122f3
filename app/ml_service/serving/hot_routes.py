"""The prediction endpoints without the framework's per-request routing.

FastAPI matches every request against every route (twice, with included routers) and resolves
dependencies before the endpoint runs; for `/predict` and `/invocations`, which take the raw
request and nothing else, that costs more than validation and serialization together. This
middleware sends exactly those method+path pairs straight to the same endpoint functions, with
the same error table (`errors.HANDLERS`); everything else, including the OpenAPI document that
still describes them, goes through FastAPI.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response

from .errors import HANDLERS

Endpoint = Callable[[Request], Awaitable[Response]]


def _handler_for(exc: Exception):  # type: ignore[no-untyped-def]
    for cls in type(exc).__mro__:
        if cls in HANDLERS:
            return HANDLERS[cls]
    raise exc


class HotRoutes:
    def __init__(self, app, *, routes: dict[tuple[str, str], Endpoint]) -> None:
        self.app = app
        self.routes = routes

    async def __call__(self, scope, receive, send) -> None:
        endpoint = (
            self.routes.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        )
        if endpoint is None:
            return await self.app(scope, receive, send)
        request = Request(scope, receive)
        try:
            response = await endpoint(request)
        except Exception as exc:
            response = await _handler_for(exc)(request, exc)
        await response(scope, receive, send)
