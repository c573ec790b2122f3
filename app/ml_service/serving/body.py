"""Reading a request body under the limits: size (413) and media type (415). The time limit
(REQUEST_BODY_TIMEOUT_SECONDS, 408) is the server's: server.py cuts off a body that is late,
with no per-request timer here."""

from __future__ import annotations

from fastapi import Request

from .errors import ApiError
from .settings import Settings

# Bodies larger than this are decoded on the bodies thread (`Service.offload`), not on the event
# loop: decoding 64 KiB of rows takes ~0.3 ms, 256 KiB ~1.2 ms, 1 MiB ~5 ms. Below it the hand-off
# costs more than it saves: 100 rows (80 KB) at one connection served 12 % fewer answers.
OFF_LOOP_BYTES = 256 * 1024


def require_json(request: Request) -> None:
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media != "application/json" and not media.endswith("+json"):
        raise ApiError(415, "Content-Type must be application/json")


async def read_body(request: Request, settings: Settings) -> bytes:
    """The whole body, at most MAX_REQUEST_BYTES.

    Content-Length is checked before reading; a chunked body is measured while it streams. Both
    refusals close the connection: the rest of an oversized upload is never read.
    """
    limit = settings.max_request_bytes
    declared = request.headers.get("content-length")
    too_large = f"request body larger than {limit} bytes (MAX_REQUEST_BYTES)"
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise ApiError(413, too_large, close=True)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise ApiError(413, too_large, close=True)
        chunks.append(chunk)
    return b"".join(chunks)
