"""Who is asking: the API key on a request, its owner, and the OpenAI-shaped errors routes raise."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tunelab.server.protocol import ErrorDetail
from tunelab.server.service import LOCAL_OWNER, Service


class APIError(Exception):
    def __init__(self, status: int, message: str, type: str = "invalid_request_error", param=None, code=None):
        super().__init__(message)
        self.status, self.detail = status, ErrorDetail(message=message, type=type, param=param, code=code)


def model_not_found(model: str) -> APIError:
    """The one answer for a model that does not exist *or* belongs to another owner: ids do not leak."""
    return APIError(
        404,
        f"The model '{model}' does not exist or you do not have access to it.",
        param="model",
        code="model_not_found",
    )


def owner(request: Request) -> str:
    """The owner of the API key on this request (every route but /health needs one)."""
    service: Service = request.app.state.service
    if service.no_auth:
        return LOCAL_OWNER
    header = request.headers.get("authorization", "")
    scheme, _, secret = header.partition(" ")
    if not header:
        raise APIError(
            401,
            "You didn't provide an API key. Send 'Authorization: Bearer KEY' (tunelab keys create).",
            code="invalid_api_key",
        )
    if scheme.lower() != "bearer" or not secret.strip():
        raise APIError(401, "Malformed Authorization header; expected 'Bearer KEY'.", code="invalid_api_key")
    key = service.store.authenticate(secret.strip())
    if key is None:
        raise APIError(401, "Incorrect or revoked API key.", code="invalid_api_key")
    return key.owner


Owner = Annotated[str, Depends(owner)]
