"""The bare baseline: Starlette + uvicorn doing only what simple mode's echo app must do.

It parses the same JSON body (``{"question": "hi"}``) and answers the same bytes
(``{"answer":"echo: hi"}``), on the same uvicorn settings flowhost uses: uvloop + httptools, one
process, access log off, no ``server`` header, log level info.

Run: ``python -m bench.baseline_app --port 8001``.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

__all__ = ["app", "main", "serve"]


async def answer(request: Request) -> Response:
    body = json.loads(await request.body())
    return JSONResponse({"answer": f"echo: {body['question']}"})


async def health(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


app = Starlette(routes=[Route("/", answer, methods=["POST"]), Route("/health", health)])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.baseline_app")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    serve(app, args.host, args.port)


def serve(asgi_app: Any, host: str, port: int) -> None:
    """``asgi_app`` on the uvicorn settings every comparison server shares (see the module)."""
    uvicorn.run(
        asgi_app,
        host=host,
        port=port,
        loop="uvloop",
        http="httptools",
        workers=None,
        access_log=False,
        server_header=False,
        log_level="info",
    )


if __name__ == "__main__":
    main()
