"""The OpenAI-shaped HTTP errors that routes raise (`{"error": {"message", "type", "param", "code"}}`)."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from tunelab.server.protocol import ErrorDetail, ErrorResponse

log = logging.getLogger("tunelab")


class APIError(Exception):
    def __init__(
        self,
        status: int,
        message: str,
        type: str = "invalid_request_error",
        param=None,
        code=None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status, self.detail = status, ErrorDetail(message=message, type=type, param=param, code=code)
        self.headers = headers


def model_not_found(model: str) -> APIError:
    """The one answer for a model that does not exist *or* belongs to another owner: ids do not leak."""
    return APIError(
        404,
        f"The model '{model}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def error_response(status: int, detail: ErrorDetail, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(ErrorResponse(error=detail).model_dump(), status_code=status, headers=headers)


UNREADABLE_BODY = "There was an error parsing the body"  # FastAPI's detail for a body it cannot decode


def install_error_handlers(app: FastAPI, authenticate: Callable[[Request], object] | None = None) -> None:
    """Every error leaves the server in OpenAI's shape: ours, FastAPI's validation, Starlette's, a crash.

    `authenticate(request)` raises the APIError of a request without a valid key: FastAPI reads and
    validates a body before the route's key check runs, so a bad body from a client without a key is
    answered with that 401 (as OpenAI does), not with a 400 about the body."""

    @app.exception_handler(APIError)
    async def api_error(_: Request, exc: APIError):
        return error_response(exc.status, exc.detail, exc.headers)

    async def refused(request: Request) -> JSONResponse | None:
        """The 401 of a request without a valid key, or None."""
        if authenticate is not None:
            try:
                await run_in_threadpool(authenticate, request)
            except APIError as exc:
                return error_response(exc.status, exc.detail)
        return None

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        if (unauthorized := await refused(request)) is not None:
            return unauthorized
        return error_response(400, _invalid(exc, request.headers.get("content-type", "")))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException):
        if exc.status_code in (404, 405) and exc.detail in ("Not Found", "Method Not Allowed"):
            return error_response(exc.status_code, _unknown_route(request, exc.status_code))
        # a 400 here is FastAPI's or Starlette's, reading a body before the key check (bad UTF-8 JSON,
        # a multipart body without its boundary): a client without a key learns nothing from it
        if exc.status_code == 400 and (unauthorized := await refused(request)) is not None:
            return unauthorized
        if exc.status_code == 400 and exc.detail == UNREADABLE_BODY:
            return error_response(400, _unreadable(request))
        return error_response(
            exc.status_code, ErrorDetail(message=str(exc.detail), type="invalid_request_error")
        )

    @app.exception_handler(Exception)
    async def crashed(_: Request, exc: Exception):
        log.exception("unexpected error")
        return error_response(
            500, ErrorDetail(message=f"internal error: {type(exc).__name__}", type="server_error")
        )


def _invalid(exc: RequestValidationError, content_type: str) -> ErrorDetail:
    """FastAPI's validation errors as one message naming each field; `param` the first field."""
    first = exc.errors()[0] if exc.errors() else {}
    if first.get("type") == "json_invalid":
        return _bad_json(first, exc.body)
    if tuple(first.get("loc", ())) == ("body",) and "json" not in content_type.lower():
        return ErrorDetail(
            message=f"the body must be a JSON object sent with Content-Type: application/json "
            f"(this request's Content-Type: {content_type or '(none)'!r})",
            type="invalid_request_error",
            code="invalid_content_type",
        )
    where = ".".join(str(p) for p in first.get("loc", ()) if p != "body")
    message = "; ".join(
        f"{'.'.join(str(p) for p in e.get('loc', ()) if p != 'body') or 'body'}: {e.get('msg')}"
        for e in exc.errors()
    )
    return ErrorDetail(message=message, type="invalid_request_error", param=where or None)


def _unreadable(request: Request) -> ErrorDetail:
    content_type = request.headers.get("content-type", "(none)")
    return ErrorDetail(
        message="the request body cannot be read: it is not UTF-8 JSON text, nests deeper than the JSON "
        f"parser allows (about 1000 levels), or is not a well-formed form for Content-Type {content_type!r}",
        type="invalid_request_error",
        code="invalid_body",
    )


def _bad_json(error: dict, body) -> ErrorDetail:
    """FastAPI's json_invalid error (the position in `loc`, the document in `body`) as a message that
    says what is wrong and where: `Expecting value: line 3 column 14 (char 40)`."""
    position = error.get("loc", ("body", 0))[-1]
    reason = (error.get("ctx") or {}).get("error", "not valid JSON")
    if isinstance(body, str) and isinstance(position, int):
        reason = str(json.JSONDecodeError(reason, body, position))
    return ErrorDetail(
        message=f"the request body is not valid JSON: {reason}",
        type="invalid_request_error",
        code="invalid_json",
    )


def _unknown_route(request: Request, status: int) -> ErrorDetail:
    """OpenAI's answer to an unknown URL (404) or method (405), with the routes this server has."""
    paths = request.app.openapi()["paths"]  # built once, then cached by FastAPI
    routes = [f"{method.upper()} {path}" for path, operations in paths.items() for method in operations]
    asked = f"{request.method} {request.url.path}"
    return ErrorDetail(
        message=f"{'Invalid URL' if status == 404 else 'Method not allowed'} ({asked}); "
        f"this server's routes: {', '.join(routes)}",
        type="invalid_request_error",
        code="unknown_url",
    )
