"""Who is asking: the API key on a request and its owner."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from tunelab.server.errors import APIError
from tunelab.server.service import LOCAL_OWNER, Service


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
