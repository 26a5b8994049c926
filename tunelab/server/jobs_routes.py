"""OpenAI-shaped `/v1/files` and `/v1/fine_tuning/jobs` routes: the SDK's `files` and
`fine_tuning.jobs` calls work unchanged. They translate to the store and the job worker; training
itself runs in `tunelab.jobs.worker`, never in a request handler.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from tunelab.errors import ConfigError
from tunelab.jobs.worker import job_config
from tunelab.server.auth import Owner
from tunelab.server.errors import APIError, model_not_found
from tunelab.server.protocol import (
    CreateJobRequest,
    FileDeleted,
    FileList,
    FileObject,
    FineTuningJob,
    JobCheckpointList,
    JobCheckpointObject,
    JobError,
    JobEventList,
    JobEventObject,
    JobList,
)
from tunelab.server.service import Service
from tunelab.store.records import FINISHED, FileRecord, JobRecord
from tunelab.training.data import load_records

router = APIRouter(prefix="/v1")
PURPOSES = ("fine-tune",)
MAX_ERRORS_SHOWN = 20


def _service(request: Request) -> Service:
    return request.app.state.service


def _ts(value: datetime | None) -> int | None:
    return int(value.timestamp()) if value is not None else None


def _file(record: FileRecord) -> FileObject:
    return FileObject(
        id=record.id,
        bytes=record.bytes,
        created_at=_ts(record.created_at),
        filename=record.filename,
        purpose=record.purpose,
    )


def _job(job: JobRecord) -> FineTuningJob:
    return FineTuningJob(
        id=job.id,
        created_at=_ts(job.created_at),
        error=JobError(**job.error) if job.error else None,
        fine_tuned_model=job.fine_tuned_model,
        finished_at=_ts(job.finished_at),
        hyperparameters=job.hyperparameters,
        model=job.model,
        organization_id=job.owner,
        result_files=job.result_files,
        seed=job.seed,
        status=job.status,
        trained_tokens=job.trained_tokens,
        training_file=job.training_file,
        method={"type": "supervised", "supervised": {"hyperparameters": job.hyperparameters}},
    )


def _no_file(file_id: str, param: str | None = None) -> APIError:
    return APIError(404, f"No such File object: {file_id}", param=param, code="file_not_found")


def _no_job(job_id: str) -> APIError:
    return APIError(
        404, f"No such fine-tuning job: {job_id}", param="fine_tuning_job_id", code="job_not_found"
    )


# -- files -------------------------------------------------------------------------------------------


@router.post("/files")
async def upload_file(
    request: Request, who: Owner, file: Annotated[UploadFile, File()], purpose: Annotated[str, Form()]
):
    service = _service(request)
    if purpose not in PURPOSES:
        raise APIError(400, f"purpose must be one of {list(PURPOSES)}, got {purpose!r}", param="purpose")
    content = await file.read()
    name = Path(file.filename or "upload.jsonl").name
    if not content.strip():
        raise APIError(400, f"{name} is empty", param="file", code="invalid_file")
    folder = service.settings.home / "files"
    folder.mkdir(parents=True, exist_ok=True)
    staging = folder / f"upload-{uuid.uuid4().hex}.jsonl"
    staging.write_bytes(content)
    report = await run_in_threadpool(load_records, staging, fmt="jsonl")
    if report.issues or not report.examples:
        staging.unlink(missing_ok=True)
        lines = [str(issue).replace(str(staging), name) for issue in report.issues[:MAX_ERRORS_SHOWN]]
        more = len(report.issues) - len(lines)
        raise APIError(
            400,
            f"{name}: {report.rejected} of {report.kept + report.rejected} lines cannot be used for "
            "fine-tuning; fix them and upload again:\n"
            + "\n".join(lines)
            + (f"\n... and {more} more" if more > 0 else ""),
            param="file",
            code="invalid_file",
        )
    file_id = service.store.new_file_id()
    path = folder / f"{file_id}.jsonl"
    staging.replace(path)
    record = service.store.add_file(who, name, purpose, len(content), str(path), report.kept, file_id=file_id)
    return _file(record)


@router.get("/files")
def list_files(request: Request, who: Owner) -> FileList:
    return FileList(data=[_file(f) for f in _service(request).store.list_files(who)])


@router.get("/files/{file_id}")
def get_file(request: Request, who: Owner, file_id: str) -> FileObject:
    record = _service(request).store.get_file(who, file_id)
    if record is None:
        raise _no_file(file_id)
    return _file(record)


@router.get("/files/{file_id}/content")
def file_content(request: Request, who: Owner, file_id: str):
    record = _service(request).store.get_file(who, file_id)
    if record is None or not Path(record.path).is_file():
        raise _no_file(file_id)
    return Response(Path(record.path).read_bytes(), media_type="application/octet-stream")


@router.delete("/files/{file_id}")
def delete_file(request: Request, who: Owner, file_id: str) -> FileDeleted:
    store = _service(request).store
    record = store.get_file(who, file_id)
    if record is None:
        raise _no_file(file_id)
    store.delete_file(who, file_id)
    if record.purpose == "fine-tune":
        Path(record.path).unlink(missing_ok=True)
    return FileDeleted(id=file_id, deleted=True)


# -- fine-tuning jobs -----------------------------------------------------------------------------------


@router.post("/fine_tuning/jobs")
def create_job(request: Request, who: Owner, body: CreateJobRequest) -> FineTuningJob:
    service = _service(request)
    if body.validation_file:
        raise APIError(
            400,
            "validation_file is not supported; tunelab holds out part of the training file",
            param="validation_file",
        )
    if body.model not in service.models_for(who):
        raise model_not_found(body.model)
    if service.store.get_file(who, body.training_file) is None:
        raise _no_file(body.training_file, "training_file")
    hyperparameters = body.all_hyperparameters()
    seed = body.seed if body.seed is not None else 0
    try:
        job_config(hyperparameters, seed)  # refuse out-of-range values now, not in the worker
    except ConfigError as exc:
        raise APIError(400, str(exc), param="hyperparameters", code="invalid_hyperparameters") from None
    job = service.store.create_job(who, body.model, body.training_file, hyperparameters, seed, body.suffix)
    return _job(job)


@router.get("/fine_tuning/jobs")
def list_jobs(request: Request, who: Owner, limit: int = 20, after: str | None = None) -> JobList:
    found = _service(request).store.list_jobs(who, limit=limit + 1, after=after)
    return JobList(data=[_job(j) for j in found[:limit]], has_more=len(found) > limit)


@router.get("/fine_tuning/jobs/{job_id}")
def get_job(request: Request, who: Owner, job_id: str) -> FineTuningJob:
    job = _service(request).store.get_job(who, job_id)
    if job is None:
        raise _no_job(job_id)
    return _job(job)


@router.post("/fine_tuning/jobs/{job_id}/cancel")
def cancel_job(request: Request, who: Owner, job_id: str) -> FineTuningJob:
    store = _service(request).store
    job = store.get_job(who, job_id)
    if job is None:
        raise _no_job(job_id)
    if job.status in FINISHED or not store.update_job(
        job_id, status="cancelled", only_if_status=("validating_files", "queued", "running")
    ):
        current = store.get_job(who, job_id)
        raise APIError(
            400, f"The job is already {current.status}; it cannot be cancelled", code="job_not_cancellable"
        )
    store.update_job(job_id, finished_at=datetime.now().astimezone())
    store.add_event(
        job_id,
        "Cancellation requested" + (": stopping after the current step" if job.status == "running" else ""),
    )
    return _job(store.get_job(who, job_id))


@router.get("/fine_tuning/jobs/{job_id}/events")
def job_events(
    request: Request, who: Owner, job_id: str, limit: int = 20, after: str | None = None
) -> JobEventList:
    store = _service(request).store
    if store.get_job(who, job_id) is None:
        raise _no_job(job_id)
    before = (
        int(after.removeprefix("ftevent-")) if after and after.removeprefix("ftevent-").isdigit() else None
    )
    events = store.list_events(job_id, limit=limit + 1, after=before)
    data = [
        JobEventObject(
            id=f"ftevent-{e.id}",
            created_at=_ts(e.created_at),
            level=e.level,
            message=e.message,
            type=e.type,
            data=e.data,
        )
        for e in events[:limit]
    ]
    return JobEventList(data=data, has_more=len(events) > limit)


@router.get("/fine_tuning/jobs/{job_id}/checkpoints")
def job_checkpoints(request: Request, who: Owner, job_id: str, limit: int = 10) -> JobCheckpointList:
    store = _service(request).store
    job = store.get_job(who, job_id)
    if job is None:
        raise _no_job(job_id)
    found = store.list_checkpoints(job_id)
    data = [
        JobCheckpointObject(
            id=c.id,
            created_at=_ts(c.created_at),
            fine_tuned_model_checkpoint=f"{job.id}:step-{c.step}",
            fine_tuning_job_id=job.id,
            metrics=c.metrics,
            step_number=c.step,
        )
        for c in found[:limit]
    ]
    return JobCheckpointList(
        data=data,
        has_more=len(found) > limit,
        first_id=data[0].id if data else None,
        last_id=data[-1].id if data else None,
    )
