"""`tunelab jobs ...`: fine-tuning jobs on a tunelab server (list, show, cancel, events, wait).

A client of the server's OpenAI-shaped routes, through the `openai` SDK; the server and key come from
`--url`/`--key`, else TUNELAB_URL/TUNELAB_API_KEY or the config file. Start a job with
`tunelab train MODEL DATA` while a server URL is configured.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Column, Table
from rich.text import Text

from tunelab.cli.output import console, fail
from tunelab.config import load_settings
from tunelab.display import records
from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from rich.console import RenderableType

jobs_app = typer.Typer(help="Fine-tuning jobs on a tunelab server.", no_args_is_help=True)

UrlOpt = Annotated[str | None, typer.Option("--url", help="The server [default: TUNELAB_URL or config]")]
KeyOpt = Annotated[str | None, typer.Option("--key", help="API key [default: TUNELAB_API_KEY or config]")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print the server's JSON.")]


def _client(url: str | None, key: str | None):
    from tunelab.jobs.client import client_for

    overrides = {k: v for k, v in (("production.url", url), ("production.key", key)) if v}
    try:
        return client_for(load_settings(overrides))
    except TunelabError as exc:
        fail(exc)


def _call(what: str, fn, *args, **kwargs):
    from tunelab.jobs.client import sdk_call

    try:
        return sdk_call(what, fn, *args, **kwargs)
    except TunelabError as exc:
        fail(exc)


def _when(ts: int | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


def _print_json(obj) -> None:
    print(json.dumps(obj.model_dump(mode="json"), indent=2))


@jobs_app.command("list")
def list_jobs(url: UrlOpt = None, key: KeyOpt = None, limit: int = 20, as_json: JsonOpt = False):
    """This key's jobs, newest first."""
    page = _call("listing jobs", _client(url, key).fine_tuning.jobs.list, limit=limit)
    if as_json:
        return _print_json(page)
    console.print(jobs_view(page.data) if page.data else "no fine-tuning jobs")


def jobs_view(jobs: list) -> RenderableType:
    """A row per job; the ids whole, on one line, to copy."""
    columns = [Column("id", no_wrap=True), Column("status", no_wrap=True), "base model"]
    columns += [Column("fine-tuned model", no_wrap=True), Column("created", no_wrap=True)]
    rows = [
        [job.id, job.status, escape(job.model), escape(job.fine_tuned_model or "-"), _when(job.created_at)]
        for job in jobs
    ]
    return records(None, columns, rows)


@jobs_app.command("show")
def show(job_id: str, url: UrlOpt = None, key: KeyOpt = None, as_json: JsonOpt = False):
    """One job: status, model, hyperparameters, result, error."""
    job = _call(f"reading {job_id}", _client(url, key).fine_tuning.jobs.retrieve, job_id)
    if as_json:
        return _print_json(job)
    table = Table(show_header=False)
    for name, value in (
        ("id", job.id),
        ("status", job.status),
        ("base model", job.model),
        ("fine-tuned model", job.fine_tuned_model or "-"),
        ("training file", job.training_file),
        ("hyperparameters", json.dumps(job.hyperparameters.model_dump(exclude_none=True))),
        ("created", _when(job.created_at)),
        ("finished", _when(job.finished_at)),
        ("error", job.error.message if job.error else "-"),
    ):
        table.add_row(name, escape(str(value)))
    console.print(table)


@jobs_app.command("cancel")
def cancel(job_id: str, url: UrlOpt = None, key: KeyOpt = None):
    """Cancel a job; a running one stops after its current step and keeps its last checkpoint."""
    job = _call(f"cancelling {job_id}", _client(url, key).fine_tuning.jobs.cancel, job_id)
    console.print(f"{job.id}: {job.status}")


@jobs_app.command("events")
def events(job_id: str, url: UrlOpt = None, key: KeyOpt = None, limit: int = 50, as_json: JsonOpt = False):
    """The job's events (progress, loss, restarts, the result), oldest first."""
    page = _call(
        f"reading {job_id}'s events", _client(url, key).fine_tuning.jobs.list_events, job_id, limit=limit
    )
    if as_json:
        return _print_json(page)
    for event in reversed(page.data):
        line = Text(f"{_when(event.created_at)}  ")
        line.append(event.message, style="red" if event.level == "error" else "")
        console.print(line, highlight=False)


@jobs_app.command("wait")
def wait(job_id: str, url: UrlOpt = None, key: KeyOpt = None):
    """Follow a job to its end with a progress bar; print the tuned model's id."""
    from tunelab.jobs.client import wait_for_job

    try:
        job = wait_for_job(_client(url, key), job_id)
    except TunelabError as exc:
        fail(exc)
    if job.status != "succeeded":
        fail(TunelabError(f"{job.id} {job.status}: {job.error.message if job.error else 'no reason given'}"))
    print(job.fine_tuned_model)
