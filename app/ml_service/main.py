"""The FastAPI application, assembled: the service, its lifespan, routers, middleware, errors.

Where things live: endpoints in `api.py` (ml-service's own) and `mlflow_api.py` (the MLflow
scoring protocol); the model's lifecycle in `service.py`; error types and the handler table in
`errors.py`; rules every request meets in `guard.py`; HTTP metrics in `metrics.py`; the server
(timeouts, connection limits, graceful shutdown) in `server.py`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from . import __version__, api, errors, mlflow_api, openapi
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


def create_app(settings: Settings | None = None, registry: CollectorRegistry | None = None):
    service = Service(settings or Settings(), default_registry() if registry is None else registry)

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        service.engine.start()
        loader = asyncio.create_task(service.load_forever(), name="model-loader")
        try:
            yield
        finally:
            service.shutting_down = True
            loader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loader
            await service.close()

    app = FastAPI(
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
    errors.install(app)
    openapi.install(app, service)
    # Added innermost first: metrics see every answer, including the guard's own refusals.
    handlers = frozenset(_route_paths(app.routes))
    hot = {("POST", "/predict"): api.predict, ("POST", "/invocations"): mlflow_api.invocations}
    app.add_middleware(HotRoutes, routes=hot)
    app.add_middleware(ConnectionGuard, service=service)
    app.add_middleware(HttpMetrics, registry=service.registry, handlers=handlers)
    return app
