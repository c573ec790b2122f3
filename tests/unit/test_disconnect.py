"""A client that goes away mid-body is routine traffic: no error log, no traceback, no 5xx."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import pytest
from ml_service.serving.app import create_app
from ml_service.serving.metrics import new_registry
from ml_service.serving.settings import Settings


@pytest.mark.parametrize("path", ["/predict", "/invocations"])
def test_client_disconnect_while_sending_the_body_is_quiet(
    tmp_path: Path, path: str, caplog: pytest.LogCaptureFixture
) -> None:
    app = create_app(Settings(model_uri=str(tmp_path / "missing")), registry=new_registry())
    incoming = [
        {"type": "http.request", "body": b'{"instances": [', "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict] = []

    async def receive() -> dict:
        return incoming.pop(0) if incoming else {"type": "http.disconnect"}

    async def send(message: dict) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"content-type", b"application/json"), (b"host", b"test")],
        "client": ("127.0.0.1", 1234),
        "server": ("127.0.0.1", 8000),
        "app": app,
    }
    with caplog.at_level(logging.DEBUG, logger="ml_service"):
        asyncio.run(app(scope, receive, send))

    start = next(m for m in sent if m["type"] == "http.response.start")
    assert 400 <= start["status"] < 500
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert not [r for r in caplog.records if r.exc_info]
    assert any("disconnected" in r.getMessage() for r in caplog.records)
