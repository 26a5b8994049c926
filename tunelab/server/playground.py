"""The browser playground at `/` and the routes only it needs (compare over HTTP).

The page is plain HTML rendered here from `playground.html.j2`, with inline CSS and a little vanilla
JavaScript: nothing is fetched from another host, so it works offline. It holds no data itself (it is
served without a key); the browser keeps the user's API key and sends it with every call to the API:
`/v1/models`, `POST /v1/tunelab/compare`, and the fine-tuning routes (`/v1/files`,
`/v1/fine_tuning/jobs`).
"""

from __future__ import annotations

import threading
from functools import lru_cache
from importlib.resources import files
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from jinja2 import Environment, select_autoescape
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from tunelab.errors import ConfigError, GenerationOptionError, PromptError
from tunelab.evaluation.compare.lesson_prompts import LESSON_EXPECTED, LESSON_PROMPTS
from tunelab.evaluation.compare.run import compare
from tunelab.inference.templates import TEMPLATE_CHOICES, resolve_template
from tunelab.server.auth import Owner
from tunelab.server.errors import APIError, model_not_found
from tunelab.server.service import Service

router = APIRouter()
# the report's charts are drawn with pyplot, whose state is global: one page at a time
_charts_lock = threading.Lock()

# The page loads nothing from elsewhere; the policy makes the browser hold it to that.
PAGE_POLICY = (
    "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' data:"
)


@lru_cache(maxsize=1)
def render_page() -> str:
    environment = Environment(
        autoescape=select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True
    )
    source = files("tunelab.server").joinpath("playground.html.j2").read_text(encoding="utf-8")
    return environment.from_string(source).render(
        lesson_prompts=LESSON_PROMPTS, lesson_expected=LESSON_EXPECTED, templates=TEMPLATE_CHOICES
    )


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
def playground() -> HTMLResponse:
    return HTMLResponse(render_page(), headers={"Content-Security-Policy": PAGE_POLICY})


class CompareRequest(BaseModel):
    """`tunelab.compare()` over HTTP: every prompt to every model with every template."""

    models: list[str] = Field(min_length=1, max_length=8)
    prompts: list[str] = Field(min_length=1, max_length=20)
    templates: list[str] = Field(default_factory=lambda: ["auto"], min_length=1, max_length=8)
    expected: list[str | None] | None = None
    max_tokens: int = Field(128, ge=1, le=1024)
    temperature: float = Field(0.0, ge=0.0, le=2.0)


def _check_request(service: Service, who: str, body: CompareRequest) -> None:
    """Refuse before anything loads: models this owner cannot see, repeated names, unknown templates.
    (compare() itself turns a template it cannot render into error cells, which suits a report but
    not an API call with a typo in it.)"""
    visible = service.models_for(who)
    for name in body.models:
        if name not in visible:
            raise model_not_found(name)
    for field, values in (("models", body.models), ("templates", body.templates)):
        repeated = sorted({v for v in values if values.count(v) > 1})
        if repeated:
            raise APIError(400, f"{field} lists {', '.join(map(repr, repeated))} more than once", param=field)
    for spec in body.templates:
        try:
            resolve_template(spec, model_chat_template=None)
        except ConfigError as exc:
            raise APIError(400, str(exc), param="templates") from None


def _report_page(comparison) -> str:
    from tunelab.evaluation.compare.report import render_html

    with _charts_lock:
        return render_html(comparison)


@router.post("/v1/tunelab/compare")
async def compare_models(
    body: CompareRequest,
    request: Request,
    who: Owner,
    format: Literal["json", "html"] = Query("json", description="json: the Comparison; html: the report"),
):
    """Answer, diagnose and compare; the JSON is `tunelab.Comparison` (docs/compare.md), the
    HTML the self-contained report page. Runs in a worker thread: the server keeps answering."""
    service: Service = request.app.state.service
    _check_request(service, who, body)
    try:
        comparison = await run_in_threadpool(
            compare,
            body.models,
            body.prompts,
            templates=body.templates,
            expected=body.expected,
            settings=service.settings,
            backend=service.backend,
            device=service.device,
            max_new_tokens=body.max_tokens,
            temperature=body.temperature,
            fit_limit=0,  # the reruns would multiply the wait; the page shows what was asked
        )
    except (PromptError, ConfigError, GenerationOptionError) as exc:
        raise APIError(400, str(exc)) from None
    if format == "html":
        return HTMLResponse(await run_in_threadpool(_report_page, comparison))
    return JSONResponse(comparison.model_dump(mode="json"))
