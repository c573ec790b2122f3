"""The HTTP floor: a hello-world ASGI app under the uvicorn settings ml-service uses.

`python benchmarks/hello.py` serves it on $HOST:$PORT with the settings of
`ml_service.serving.server.build` (asyncio loop, one worker, no access log, no websockets, no server
header, lifespan off since there is nothing to start), with uvicorn's default parser, h11, unless
`HELLO_HTTP=httptools` selects the one ml-service runs (`make bench` measures both floors). It
reads the whole request body and answers a small fixed JSON document, so the figures are what HTTP
parsing and the event loop cost alone.

`HELLO_LOOP` and `HELLO_HTTP` pick uvicorn's loop and parser (as in the server spec
`http-floor[HELLO_HTTP=httptools]`); another ASGI server can serve `hello:app` from this
directory (see docs/benchmarks.md).
"""

from __future__ import annotations

import os

BODY = b'{"predictions":["ok"]}'
HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope, receive, send) -> None:  # type: ignore[no-untyped-def]
    if scope["type"] == "lifespan":  # for servers that always run it
        while True:
            message = await receive()
            kind = message["type"].rsplit(".", 1)[-1]  # startup / shutdown
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    if scope["type"] != "http":
        return
    more = True
    while more:  # the whole body, as a real endpoint would read it
        more = (await receive()).get("more_body", False)
    await send({"type": "http.response.start", "status": 200, "headers": HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def main() -> None:
    import uvicorn

    uvicorn.run(
        app,
        host=os.environ.get("HOST", "127.0.0.1"),
        port=int(os.environ["PORT"]),
        log_config=None,
        log_level="warning",
        access_log=False,
        timeout_keep_alive=5,
        lifespan="off",
        loop=os.environ.get("HELLO_LOOP", "asyncio"),
        http=os.environ.get("HELLO_HTTP", "h11"),
        ws="none",
        proxy_headers=False,
        server_header=False,
    )


if __name__ == "__main__":
    main()
