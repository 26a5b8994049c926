"""The store's current schema, for queries (SQLAlchemy Core tables).

The migrations (`tunelab.store.migrations`) are the source of truth for the DDL; these tables only
describe the latest schema for SELECT/INSERT/UPDATE (tests/test_store.py checks that the two agree).
"""

from __future__ import annotations

from sqlalchemy import Column, DateTime, Integer, MetaData, String, Table, Text

PREFIX_CHARS = 10  # shown in `tunelab keys list`: "tl-" and 7 random characters, enough to tell keys apart
MAX_NAME = 100

metadata = MetaData()

schema_migrations = Table(
    "schema_migrations",
    metadata,
    Column("version", Integer, primary_key=True, autoincrement=False),
    Column("name", String(200), nullable=False),
    Column("applied_at", DateTime(timezone=True), nullable=False),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("name", String(MAX_NAME), nullable=False),
    Column("owner", String(MAX_NAME), nullable=False),
    Column("key_hash", String(64), nullable=False, unique=True),
    Column("prefix", String(PREFIX_CHARS), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("revoked_at", DateTime(timezone=True), nullable=True),
)

ownership = Table(
    "ownership",
    metadata,
    Column("kind", String(40), primary_key=True),
    Column("object_id", String(200), primary_key=True),
    Column("owner", String(MAX_NAME), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)


files = Table(
    "files",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("owner", String(MAX_NAME), nullable=False),
    Column("filename", String(255), nullable=False),
    Column("purpose", String(40), nullable=False),
    Column("bytes", Integer, nullable=False),
    Column("path", String(1000), nullable=False),
    Column("n_records", Integer, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

jobs = Table(
    "jobs",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("owner", String(MAX_NAME), nullable=False),
    Column("model", String(200), nullable=False),
    Column("training_file", String(40), nullable=False),
    Column("status", String(20), nullable=False),
    Column("hyperparameters", Text, nullable=False),
    Column("seed", Integer, nullable=False),
    Column("suffix", String(64), nullable=True),
    Column("fine_tuned_model", String(200), nullable=True),
    Column("error", Text, nullable=True),
    Column("trained_tokens", Integer, nullable=True),
    Column("result_files", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True), nullable=True),
)

job_events = Table(
    "job_events",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(40), nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
    Column("level", String(10), nullable=False),
    Column("type", String(10), nullable=False),
    Column("message", Text, nullable=False),
    Column("data", Text, nullable=True),
)

job_checkpoints = Table(
    "job_checkpoints",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("job_id", String(40), nullable=False),
    Column("step", Integer, nullable=False),
    Column("metrics", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)

# POST /v1/responses with store: the conversation before the answer (input items, JSON) and the
# Response object (JSON), so `previous_response_id` can continue it
responses = Table(
    "responses",
    metadata,
    Column("id", String(40), primary_key=True),
    Column("owner", String(MAX_NAME), nullable=False),
    Column("model", String(200), nullable=False),
    Column("history", Text, nullable=False),
    Column("response", Text, nullable=False),
    Column("created_at", DateTime(timezone=True), nullable=False),
)
