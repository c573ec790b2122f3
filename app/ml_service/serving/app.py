"""The FastAPI application, assembled: the service, its lifespan, routers, middleware, errors.

Where things live: endpoints in `api.py` (ml-service's own) and `mlflow_api.py` (the MLflow
scoring protocol); the model's lifecycle in `service.py`; error types and the handler table in
`errors.py`; rules every request meets in `guard.py`; HTTP metrics in `metrics.py`; the server
(timeouts, per-connection limits, graceful shutdown) in `server.py`; the probe listener (probes
and scrapes on a port, thread and loop of their own) in `probes.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from ml_service import __version__

from . import api, errors, mlflow_api, openapi
from .guard import ConnectionGuard
from .hot_routes import HotRoutes
from .metrics import HttpMetrics, default_registry
from .service import Service
from .settings import Settings


def _route_paths(routes: list) -> Iterator[str]:
    for route in routes:
        if hasattr(route, "original_router"):  # an included APIRouter
            yield from _route_paths(route.original_router.routes)
        else:
            yield route.path


MIDDLEWARE_REFUSED = (
    "ml-service answers POST /predict and /invocations at its edge, before FastAPI's middleware "
    "stack (serving/hot_routes.py): a middleware added with add_middleware() or "
    "@app.middleware would never see them. Wrap the edge instead, so it sees every request: "
    "`app.edge = YourMiddleware(app.edge, ...)` in create_app (serving/app.py)."
)


class ServingApp(FastAPI):
    """FastAPI entered through ml-service's own edge: every HTTP request passes the metrics and
    the guard first, and the prediction routes are answered there, never entering the
    framework's middleware stack and router (see hot_routes.py); everything else, and the
    lifespan, is FastAPI as usual."""

    edge: Callable[..., Awaitable[None]]

    def __init__(self, **kwargs) -> None:  # type: ignore[no-untyped-def]
        if kwargs.get("middleware"):
            raise RuntimeError(MIDDLEWARE_REFUSED)
        super().__init__(**kwargs)

    def add_middleware(self, middleware_class, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        """Refused, like `middleware=` above: FastAPI's middleware stack never sees the
        prediction routes. `@app.middleware("http")` comes here too."""
        raise RuntimeError(MIDDLEWARE_REFUSED)

    async def __call__(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        if scope["type"] != "http":
            return await super().__call__(scope, receive, send)
        scope["app"] = self  # what `request.app` returns to every endpoint
        await self.edge(scope, receive, send)

    async def framework(self, scope, receive, send) -> None:  # type: ignore[no-untyped-def]
        await super().__call__(scope, receive, send)


def create_app(settings: Settings | None = None, registry: CollectorRegistry | None = None):
    service = Service(settings or Settings(), default_registry() if registry is None else registry)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.engine.start()
        if service.payload_log is not None:
            service.payload_log.start()
        loader = asyncio.create_task(service.load_forever(), name="model-loader")
        try:
            yield
        finally:
            service.shutting_down = True
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            await service.close()

    app = ServingApp(
        title="ml-service",
        version=__version__,
        description="Predictions from the scikit-learn model registered in MLflow.",
        lifespan=lifespan,
        # A redirect would copy the caller's Host header into a Location: none are issued.
        redirect_slashes=False,
        # FastAPI's native OpenTelemetry would check its providers on every request; the
        # service's telemetry is its Prometheus metrics.
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.service = service
    app.include_router(api.router)
    app.include_router(mlflow_api.router)
    if service.feedback is not None:  # without a signing key, no route: nothing changes
        app.include_router(api.feedback_router)
    errors.install(app)
    openapi.install(app, service)
    hot = {("POST", "/predict"): api.predict, ("POST", "/invocations"): mlflow_api.invocations}
    if service.feedback is not None:
        hot[("POST", "/feedback")] = api.feedback
    # Outermost first: metrics see every answer, including the guard's own refusals.
    app.edge = HttpMetrics(
        ConnectionGuard(HotRoutes(app.framework, routes=hot), service=service),
        registry=service.registry,
        handlers=frozenset(_route_paths(app.routes)),
    )
    return app
