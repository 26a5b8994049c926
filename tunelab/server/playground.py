"""The browser playground at `/` and the routes only it needs (compare over HTTP)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
