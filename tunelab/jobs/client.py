"""Fine-tuning on a tunelab server, from the client side: what `runner.train()` and `tunelab jobs` do
when a server URL is configured. Everything goes through the official `openai` SDK (`files`,
`fine_tuning.jobs`), so the same calls work against any server that speaks that API.
"""

from __future__ import annotations

import io
import json
import time
from dataclasses import dataclass
from typing import Any

from tunelab.config import Settings
from tunelab.errors import ConfigError, JobFailed, RemoteModelError
from tunelab.training.data import DataReport, Example, load_records

TERMINAL = ("succeeded", "failed", "cancelled")


@dataclass
class ServerTrainResult:
    """What a job on a server made; `model_id` works at once as a model name on that server."""

    model_id: str
    job_id: str
    status: str
    steps: int
    train_loss: float | None
    base_model: str
    result_files: list[str]

    @property
    def model_name(self) -> str:
        return self.model_id


def client_for(settings: Settings):
    """An `openai.OpenAI` client for the configured tunelab server (production.url / TUNELAB_URL)."""
    import openai

    if not settings.production_url:
        raise ConfigError("no tunelab server configured: set TUNELAB_URL or config={'production.url': ...}")
    base = settings.production_url.rstrip("/")
    return openai.OpenAI(
        base_url=base if base.endswith("/v1") else base + "/v1",
        api_key=settings.production_key or "none",
        max_retries=1,
    )


def sdk_call(what: str, fn, *args, **kwargs):
    """Run an SDK call; an HTTP or connection failure becomes one clear RemoteModelError."""
    import openai

    try:
        return fn(*args, **kwargs)
    except openai.APIStatusError as exc:
        message = exc.body.get("message") if isinstance(exc.body, dict) else None
        raise RemoteModelError(
            f"{what}: the server answered HTTP {exc.status_code}: {message or exc}"
        ) from None
    except openai.APIConnectionError as exc:
        raise RemoteModelError(f"{what}: the server is not reachable ({exc.__cause__ or exc})") from None


def examples_jsonl(examples: list[Example]) -> bytes:
    """Examples as the JSONL a server validates at upload (OpenAI's `messages` shape)."""
    rows = []
    for example in examples:
        row: dict[str, Any] = {"messages": example.messages}
        if example.expected:
            row["answer"] = example.expected
        rows.append(json.dumps(row, ensure_ascii=False) + "\n")
    return "".join(rows).encode("utf-8")


def start_job(
    client, base_model: str, examples: list[Example], hyperparameters: dict, suffix=None, seed=None
):
    """Upload the examples and create a job; returns the SDK's FineTuningJob."""
    upload = sdk_call(
        "uploading the training data",
        client.files.create,
        file=("tunelab-train.jsonl", io.BytesIO(examples_jsonl(examples))),
        purpose="fine-tune",
    )
    extra = ({"suffix": suffix} if suffix else {}) | ({"seed": seed} if seed is not None else {})
    return sdk_call(
        "creating the fine-tuning job",
        client.fine_tuning.jobs.create,
        model=base_model,
        training_file=upload.id,
        hyperparameters=hyperparameters,
        **extra,
    )


def job_metrics(client, job_id: str, *, newest: int = 10_000) -> list[dict]:
    """The job's metrics events (step, train_loss, ...) among its `newest` events, oldest first."""
    events = sdk_call("reading the job's events", client.fine_tuning.jobs.list_events, job_id, limit=newest)
    return [e.data for e in reversed(events.data) if e.type == "metrics" and e.data]


def wait_for_job(client, job_id: str, *, progress: bool = True, poll_s: float = 1.0):
    """Poll the job until it ends, with a progress bar of its steps and loss; returns the job."""
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TextColumn("loss {task.fields[loss]}"),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        disable=not progress,
    )
    with bar:
        task = bar.add_task(f"job {job_id}", total=None, status="queued", loss="-")
        while True:
            job = sdk_call("reading the job", client.fine_tuning.jobs.retrieve, job_id)
            metrics = job_metrics(client, job_id, newest=20) if progress else []  # the latest step
            if metrics:
                last = metrics[-1]
                bar.update(
                    task,
                    total=last.get("total_steps"),
                    completed=last["step"],
                    loss=f"{last['train_loss']:.3f}",
                )
            bar.update(task, status=job.status)
            if job.status in TERMINAL:
                return job
            time.sleep(poll_s)


def train_on_server(
    settings: Settings,
    base_model: str,
    examples: list[Example],
    hyperparameters: dict,
    *,
    suffix: str | None = None,
    seed: int | None = None,
    progress: bool = True,
) -> ServerTrainResult:
    """Upload, start a job, wait for it; raise JobFailed unless it succeeds."""
    client = client_for(settings)
    job = start_job(client, base_model, examples, hyperparameters, suffix, seed)
    job = wait_for_job(client, job.id, progress=progress)
    if job.status != "succeeded":
        reason = job.error.message if job.error else "no reason given"
        raise JobFailed(f"fine-tuning job {job.id} {job.status}: {reason}")
    metrics = job_metrics(client, job.id, newest=20)
    return ServerTrainResult(
        model_id=job.fine_tuned_model,
        job_id=job.id,
        status=job.status,
        steps=metrics[-1]["step"] if metrics else 0,
        train_loss=metrics[-1]["train_loss"] if metrics else None,
        base_model=job.model,
        result_files=list(job.result_files or []),
    )


def job_for_model(client, model_id: str):
    """The succeeded job that made `model_id` (this key's jobs only), or None."""
    after = None
    while True:
        page = sdk_call(
            "listing fine-tuning jobs",
            client.fine_tuning.jobs.list,
            limit=100,
            **({"after": after} if after else {}),
        )
        for job in page.data:
            if job.fine_tuned_model == model_id:
                return job
        if not page.has_more or not page.data:
            return None
        after = page.data[-1].id


def heldout_examples(client, job) -> DataReport:
    """The examples the job held out of training (its result file), as a DataReport."""
    if not job.result_files:
        return DataReport()
    content = sdk_call("downloading the held-out examples", client.files.content, job.result_files[0]).read()
    records = [json.loads(line) for line in content.decode("utf-8").split("\n") if line.strip()]
    report = load_records(records)
    for example, record in zip(report.examples, records):
        example.source = record.get("source") or example.source
    return report
