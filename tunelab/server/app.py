"""The HTTP layer: OpenAI-compatible routes that translate requests to the Service and back.

Every route but `GET /health` needs `Authorization: Bearer KEY` (a key from `tunelab keys create`);
what one owner may not see answers 404, as if it did not exist. Errors use OpenAI's body shape:
`{"error": {"message", "type", "param", "code"}}`.
"""

from __future__ import annotations

import asyncio
import json
import logging
from contextlib import asynccontextmanager

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sse_starlette.sse import EventSourceResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.errors import ConfigError, GenerationOptionError, PromptError, TunelabError
from tunelab.inference.batching import Request as EngineRequest
from tunelab.inference.options import Completion
from tunelab.inference.typed import TypedOutputError
from tunelab.server.auth import APIError, Owner, model_not_found
from tunelab.server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Delta,
    ErrorDetail,
    ErrorResponse,
    ModelCard,
    ModelList,
    Usage,
    new_id,
    now,
)
from tunelab.server.service import ContextExceeded, ModelNotServed, Service

log = logging.getLogger("tunelab")

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_UPLOAD_BYTES = 256 * 1024 * 1024  # POST /v1/files: training data


def _error_response(status: int, detail: ErrorDetail) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=detail).model_dump(), status_code=status)


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


def create_app(
    service: Service, *, max_body_bytes: int = MAX_BODY_BYTES, max_upload_bytes: int = MAX_UPLOAD_BYTES
) -> FastAPI:
    @asynccontextmanager
    async def lifespan(_: FastAPI):
        service.start()
        yield
        service.close()

    app = FastAPI(title="tunelab", version="1", docs_url=None, redoc_url=None, lifespan=lifespan)
    app.state.service = service

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError):
        return _error_response(exc.status, exc.detail)

    @app.exception_handler(RequestValidationError)
    async def invalid(_: Request, exc: RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
        message = "; ".join(
            f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
            for e in exc.errors()
        )
        return _error_response(
            400, ErrorDetail(message=message, type="invalid_request_error", param=where or None)
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, exc: StarletteHTTPException):
        return _error_response(
            exc.status_code, ErrorDetail(message=str(exc.detail), type="invalid_request_error")
        )

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception):
        log.exception("unexpected error")
        return _error_response(
            500, ErrorDetail(message=f"internal error: {type(exc).__name__}", type="server_error")
        )

    @app.get("/health")
    def health():
        return {"status": "ok", "auth": not service.no_auth}

    @app.get("/v1/models")
    def list_models(who: Owner) -> ModelList:
        return ModelList(data=[ModelCard(id=n, owned_by=o) for n, o in service.models_for(who).items()])

    @app.get("/v1/models/{model_id:path}")
    def get_model(model_id: str, who: Owner) -> ModelCard:
        visible = service.models_for(who)
        if model_id not in visible:
            raise model_not_found(model_id)
        return ModelCard(id=model_id, owned_by=visible[model_id])

    @app.post("/v1/completions")
    async def completions(body: CompletionRequest, who: Owner):
        planned = _plan(service, who, body, body.prompts, template="raw")
        if body.stream:
            return EventSourceResponse(_stream_completions(service, body, planned), sep="\n")
        results = await _results(service, planned)
        choices = [
            CompletionChoice(text=c.text, index=i, finish_reason=_finish(c))
            for i, c in enumerate(c for group in results for c in group)
        ]
        return CompletionResponse(model=body.model, choices=choices, usage=_usage(results))

    @app.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest, who: Owner):
        try:
            conversation = [m.plain() for m in body.messages]
        except ValueError as exc:
            raise APIError(400, str(exc), param="messages") from None
        planned = _plan(service, who, body, [conversation], template="auto")
        if body.stream:
            return EventSourceResponse(_stream_chat(service, body, planned), sep="\n")
        results = await _results(service, planned)
        choices = [
            ChatChoice(index=i, message=AssistantMessage(content=c.text), finish_reason=_finish(c))
            for i, c in enumerate(results[0])
        ]
        return ChatCompletionResponse(model=body.model, choices=choices, usage=_usage(results))

    from tunelab.server import jobs_routes, playground

    app.include_router(jobs_routes.router)
    app.include_router(playground.router)
    app.add_middleware(BodyLimit, limit=max_body_bytes, upload_limit=max_upload_bytes)
    return app


def _plan(service: Service, who: str, body, prompts: list, *, template: str) -> list[list[EngineRequest]]:
    refused = body.unsupported()
    if refused:
        raise APIError(400, f"not supported by tunelab: {', '.join(refused)}", code="unsupported_parameter")
    if not prompts or any(isinstance(p, str) and not p for p in prompts):
        raise APIError(400, "prompt must be a non-empty string or list of strings", param="prompt")
    options = {"temperature": body.temperature, "top_p": body.top_p, "stop": body.stops, "seed": body.seed}
    if isinstance(body, ChatCompletionRequest):
        try:
            options["json_schema"] = body.json_schema
        except TypedOutputError as exc:
            raise APIError(400, str(exc), param="response_format") from None
    try:
        return service.plan(
            who,
            body.model,
            prompts,
            n=body.n,
            max_tokens=body.max_completion_tokens or body.max_tokens,
            template=template,
            options=options,
        )
    except ModelNotServed:
        raise model_not_found(body.model) from None
    except ContextExceeded as exc:
        raise APIError(400, str(exc), param="max_tokens", code="context_length_exceeded") from None
    except (PromptError, GenerationOptionError, ConfigError) as exc:
        raise APIError(400, str(exc)) from None
    except TunelabError as exc:
        raise APIError(503, f"the model could not be loaded: {exc}", type="server_error") from None


def _check(completion: Completion) -> Completion:
    if completion.error:
        raise APIError(400, completion.error)
    return completion


async def _results(service: Service, planned: list[list[EngineRequest]]) -> list[list[Completion]]:
    service.submit(planned)
    try:
        return [[_check(await asyncio.wrap_future(r.future)) for r in group] for group in planned]
    except TypedOutputError as exc:  # a response_format schema the backend cannot compile
        raise APIError(400, str(exc), param="response_format") from None
    except TunelabError as exc:
        raise APIError(503, str(exc), type="server_error") from None


def _finish(completion: Completion) -> str:
    return "length" if completion.finish_reason == "length" else "stop"


def _usage(results: list[list[Completion]]) -> Usage:
    prompt = sum(group[0].prompt_tokens for group in results if group)
    completion = sum(c.completion_tokens for group in results for c in group)
    return Usage(prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion)


async def _deltas(service: Service, planned: list[list[EngineRequest]]):
    """Yield (choice index, new text, finished Completion or None) as answers grow."""
    loop = asyncio.get_running_loop()
    updates: asyncio.Queue = asyncio.Queue()
    flat = [r for group in planned for r in group]
    listening = True

    def push(item) -> bool:
        try:
            loop.call_soon_threadsafe(updates.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server stopping)
            return False
        return listening

    for k, request in enumerate(flat):
        request.on_text = lambda text, k=k: push((k, text))
        request.future.add_done_callback(lambda _, k=k: push((k, None)))
    # hold back what could be the start of a stop string, and a half-decoded character
    holdback = max((len(s) for r in flat for s in r.options.stop), default=1)
    service.submit(planned)
    sent = [""] * len(flat)
    left = len(flat)
    try:
        while left:
            k, text = await updates.get()
            if text is None:
                left -= 1
                completion = flat[k].future.result()
                tail = completion.text[len(sent[k]) :] if completion.text.startswith(sent[k]) else ""
                yield k, tail, completion
                continue
            safe = text[: max(0, len(text) - holdback)].rstrip("\ufffd")
            if len(safe) > len(sent[k]) and safe.startswith(sent[k]):
                yield k, safe[len(sent[k]) :], None
                sent[k] = safe
    finally:
        listening = False  # a client that went away: the backend may stop its sequences


async def _stream_completions(service: Service, body: CompletionRequest, planned):
    ident, created = new_id("cmpl"), now()
    finished: list[Completion] = []
    try:
        async for k, text, done in _deltas(service, planned):
            if done is not None:
                _check(done)
                finished.append(done)
            choice = CompletionChoice(text=text, index=k, finish_reason=_finish(done) if done else None)
            chunk = CompletionResponse(id=ident, created=created, model=body.model, choices=[choice])
            yield chunk.model_dump_json(exclude_none=False)
        if body.include_usage:
            usage = _usage([[c] for c in finished])
            yield CompletionResponse(
                id=ident, created=created, model=body.model, choices=[], usage=usage
            ).model_dump_json()
    except (APIError, TunelabError) as exc:
        yield json.dumps(
            {"error": {"message": str(exc), "type": "server_error", "param": None, "code": None}}
        )
    yield "[DONE]"


async def _stream_chat(service: Service, body: ChatCompletionRequest, planned):
    ident, created = new_id("chatcmpl"), now()

    def chunk(choices, usage=None) -> str:
        return ChatCompletionChunk(
            id=ident, created=created, model=body.model, choices=choices, usage=usage
        ).model_dump_json(exclude_none=True)

    finished: list[Completion] = []
    try:
        for k in range(body.n):
            yield chunk([ChatChunkChoice(index=k, delta=Delta(role="assistant", content=""))])
        async for k, text, done in _deltas(service, planned):
            if done is not None:
                _check(done)
                finished.append(done)
            if text:
                yield chunk([ChatChunkChoice(index=k, delta=Delta(content=text))])
            if done is not None:
                yield chunk([ChatChunkChoice(index=k, delta=Delta(), finish_reason=_finish(done))])
        if body.include_usage:
            usage = _usage([finished])
            yield chunk([], usage)
    except (APIError, TunelabError) as exc:
        yield json.dumps(
            {"error": {"message": str(exc), "type": "server_error", "param": None, "code": None}}
        )
    yield "[DONE]"
