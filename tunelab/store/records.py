"""The store's records as the rest of tunelab sees them: API keys, files, jobs, events, checkpoints
(typed after OpenAI's fine-tuning objects; statuses validating_files, queued, running, succeeded,
failed, cancelled), and stored responses (/v1/responses)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from pydantic import BaseModel, ConfigDict, computed_field


def as_utc(value: datetime | None) -> datetime | None:
    # SQLite hands back naive datetimes (we always write UTC); PostgreSQL aware ones in its time zone.
    if value is None:
        return None
    return value.replace(tzinfo=timezone.utc) if value.tzinfo is None else value.astimezone(timezone.utc)


class ApiKey(BaseModel):
    """An API key as stored: never the secret, never its hash."""

    model_config = ConfigDict(frozen=True)

    id: str
    name: str
    owner: str
    prefix: str  # the secret's first characters, to recognise a key in a list
    created_at: datetime
    revoked_at: datetime | None = None

    @computed_field
    @property
    def active(self) -> bool:
        return self.revoked_at is None


FINISHED = ("succeeded", "failed", "cancelled")


class FileRecord(BaseModel):
    id: str
    owner: str
    filename: str
    purpose: str
    bytes: int
    path: str
    n_records: int
    created_at: datetime

    @classmethod
    def from_row(cls, row) -> FileRecord:
        return cls(**(dict(row._mapping) | {"created_at": as_utc(row.created_at)}))


class JobRecord(BaseModel):
    id: str
    owner: str
    model: str
    training_file: str
    status: str
    hyperparameters: dict
    seed: int
    suffix: str | None = None
    fine_tuned_model: str | None = None
    error: dict | None = None
    trained_tokens: int | None = None
    result_files: list[str] = []
    created_at: datetime
    finished_at: datetime | None = None

    def row(self) -> dict:
        values = self.model_dump()
        for name in ("hyperparameters", "error", "result_files"):
            values[name] = json.dumps(values[name]) if values[name] is not None else None
        return values

    @classmethod
    def from_row(cls, row) -> JobRecord:
        values = dict(row._mapping)
        for name in ("hyperparameters", "error", "result_files"):
            values[name] = (
                json.loads(values[name]) if values[name] else ({} if name == "hyperparameters" else None)
            )
        values["result_files"] = values["result_files"] or []
        values["created_at"], values["finished_at"] = (
            as_utc(values["created_at"]),
            as_utc(values["finished_at"]),
        )
        return cls(**values)


class JobEvent(BaseModel):
    id: int
    job_id: str
    created_at: datetime
    level: str
    type: str
    message: str
    data: dict | None = None

    @classmethod
    def from_row(cls, row) -> JobEvent:
        values = dict(row._mapping)
        values["data"] = json.loads(values["data"]) if values["data"] else None
        values["created_at"] = as_utc(values["created_at"])
        return cls(**values)


class JobCheckpoint(BaseModel):
    id: str
    job_id: str
    step: int
    metrics: dict
    created_at: datetime

    @classmethod
    def from_row(cls, row) -> JobCheckpoint:
        values = dict(row._mapping)
        values["metrics"] = json.loads(values["metrics"])
        values["created_at"] = as_utc(values["created_at"])
        return cls(**values)


class ResponseRecord(BaseModel):
    """A stored answer of POST /v1/responses: the input items it answered (earlier turns included,
    instructions not: OpenAI does not carry them over) and the Response object, both as JSON."""

    id: str
    owner: str
    model: str
    history: list[dict]
    response: dict
    created_at: datetime

    def row(self) -> dict:
        values = self.model_dump()
        return values | {"history": json.dumps(self.history), "response": json.dumps(self.response)}

    @classmethod
    def from_row(cls, row) -> ResponseRecord:
        values = dict(row._mapping)
        values["history"], values["response"] = json.loads(values["history"]), json.loads(values["response"])
        values["created_at"] = as_utc(values["created_at"])
        return cls(**values)
