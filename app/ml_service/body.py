"""Reading a request body under the limits: size (413), time (408), media type (415)."""

from __future__ import annotations

import asyncio

from fastapi import Request

from .errors import ApiError
from .settings import Settings


def require_json(request: Request) -> None:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise ApiError(415, "Content-Type must be application/json")


async def read_body(request: Request, settings: Settings) -> bytes:
    """The whole body, at most MAX_REQUEST_BYTES, within REQUEST_BODY_TIMEOUT_SECONDS.

    Content-Length is checked before reading; a chunked body is measured while it streams. Both
    refusals close the connection: the rest of an oversized or stalled upload is never read.
    """
    limit = settings.max_request_bytes
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(
            413, f"request body larger than {limit} bytes (MAX_REQUEST_BYTES)", close=True
        )
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(settings.request_body_timeout_seconds):
            async for chunk in request.stream():
                size += len(chunk)
                if size > limit:
                    raise ApiError(
                        413,
                        f"request body larger than {limit} bytes (MAX_REQUEST_BYTES)",
                        close=True,
                    )
                chunks.append(chunk)
    except TimeoutError:
        raise ApiError(
            408, "request body not received in time (REQUEST_BODY_TIMEOUT_SECONDS)", close=True
        ) from None
    return b"".join(chunks)
