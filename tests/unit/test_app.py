"""The assembled app: the prediction routes are answered at the edge, so FastAPI's middleware
stack cannot hold a middleware (it would never see them); wrapping the edge is the way, and it
sees every route."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from ml_service.serving.app import MIDDLEWARE_REFUSED, ServingApp, create_app
from ml_service.serving.metrics import new_registry
from ml_service.serving.settings import Settings
from starlette.middleware import Middleware
from starlette.middleware.gzip import GZipMiddleware


@pytest.fixture
def app(tmp_path: Path) -> ServingApp:
    return create_app(Settings(model_uri=str(tmp_path / "missing")), registry=new_registry())


def test_a_middleware_decorator_is_refused_with_the_reason(app: ServingApp) -> None:
    async def stamp(request, call_next):  # type: ignore[no-untyped-def]
        return await call_next(request)

    with pytest.raises(RuntimeError) as info:
        app.middleware("http")(stamp)
    assert str(info.value) == MIDDLEWARE_REFUSED
    assert "/predict" in MIDDLEWARE_REFUSED and "app.edge" in MIDDLEWARE_REFUSED


def test_add_middleware_is_refused(app: ServingApp) -> None:
    with pytest.raises(RuntimeError, match="never see them"):
        app.add_middleware(GZipMiddleware)
    assert app.user_middleware == []


def test_middleware_at_construction_is_refused() -> None:
    with pytest.raises(RuntimeError, match="never see them"):
        ServingApp(middleware=[Middleware(GZipMiddleware)])


def test_a_middleware_around_the_edge_sees_every_route(app: ServingApp) -> None:
    seen: list[str] = []

    def recording(inner):  # type: ignore[no-untyped-def]
        async def edge(scope, receive, send):  # type: ignore[no-untyped-def]
            seen.append(f"{scope['method']} {scope['path']}")
            await inner(scope, receive, send)

        return edge

    app.edge = recording(app.edge)
    with TestClient(app) as client:
        assert client.post("/predict", json={"instances": [{"x": 1}]}).status_code == 503
        assert client.post("/invocations", json={"inputs": [[1]]}).status_code == 503
        assert client.get("/health").status_code == 200
    assert seen == ["POST /predict", "POST /invocations", "GET /health"]
