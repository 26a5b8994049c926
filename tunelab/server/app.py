"""The HTTP server: the FastAPI app with its routers, error handlers and request-size limit.

Every route but `GET /health` needs `Authorization: Bearer KEY` (a key from `tunelab keys create`).
Routes: `openai_routes` (models, completions, chat), `responses_routes` (OpenAI's Responses API),
`jobs_routes` (files, fine-tuning jobs), `tokens_routes` (vLLM's /tokenize, /detokenize,
/tokenizer_info), `playground` (the page at /).
Errors use OpenAI's body shape: `{"error": {"message", "type", "param", "code"}}` (`tunelab.server.errors`).
"""

from __future__ import annotations

import json
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sse_starlette.sse import AppStatus

from tunelab.server import jobs_routes, openai_routes, playground, responses_routes, tokens_routes
from tunelab.server.auth import owner
from tunelab.server.errors import install_error_handlers
from tunelab.server.protocol import ErrorDetail
from tunelab.server.service import Service

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_UPLOAD_BYTES = 256 * 1024 * 1024  # POST /v1/files: training data


def create_app(
    service: Service, *, max_body_bytes: int = MAX_BODY_BYTES, max_upload_bytes: int = MAX_UPLOAD_BYTES
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        service.start()
        yield
        service.close()

    # On SIGTERM sse-starlette would cut every stream at once; tunelab lets them finish within the
    # server's drain timeout (`tunelab serve --drain-timeout`, uvicorn's graceful shutdown) instead.
    AppStatus.disable_automatic_graceful_drain()
    app = FastAPI(title="tunelab", version="1", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.service = service
    install_error_handlers(app, authenticate=owner)
    app.include_router(openai_routes.router)
    app.include_router(responses_routes.router)
    app.include_router(tokens_routes.router)
    app.include_router(jobs_routes.router)
    app.include_router(playground.router)
    app.add_middleware(BodyLimit, limit=max_body_bytes, upload_limit=max_upload_bytes)
    return app


class BodyLimit:
    """ASGI middleware: a request body over the limit gets a 413 before it is read whole."""

    def __init__(self, app, limit: int, upload_limit: int):
        self.app, self.body_limit, self.upload_limit = app, limit, upload_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        limit = self.upload_limit if scope.get("path") == "/v1/files" else self.body_limit
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            return await self._refuse(send, int(declared), limit)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(seen)
            return message

        try:
            await self.app(scope, counted, send)
        except _TooLarge as exc:
            await self._refuse(send, exc.size, limit)

    async def _refuse(self, send, size: int, limit: int):
        detail = ErrorDetail(
            message=f"request body is {size / 1e6:.1f} MB; this server takes at most {limit / 1e6:.1f} MB",
            type="invalid_request_error",
            code="request_too_large",
        )
        body = json.dumps({"error": detail.model_dump()}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    def __init__(self, size: int):
        self.size = size
