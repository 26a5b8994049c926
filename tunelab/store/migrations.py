"""The store's schema, built by an ordered list of migrations recorded in ``schema_migrations``.

Append new steps at the end of `MIGRATIONS`; never renumber or edit old ones. Opening a store
(`tunelab.store.db.Store`) applies the missing ones, each in its own transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import Column, Connection, DateTime, Integer, MetaData, String, Table, Text


@dataclass(frozen=True)
class Migration:
    """One schema step. `apply` runs DDL on a connection inside the migration's transaction."""

    version: int
    name: str
    apply: Callable[[Connection], None]


def _m1_keys_and_ownership(conn: Connection) -> None:
    # Frozen once released: a later change to these tables is a new migration, never an edit here.
    md = MetaData()
    Table(
        "api_keys",
        md,
        Column("id", String(40), primary_key=True),
        Column("name", String(100), nullable=False),
        Column("owner", String(100), nullable=False, index=True),
        Column("key_hash", String(64), nullable=False, unique=True),
        Column("prefix", String(10), nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("revoked_at", DateTime(timezone=True), nullable=True),
    )
    Table(
        "ownership",
        md,
        Column("kind", String(40), primary_key=True),
        Column("object_id", String(200), primary_key=True),
        Column("owner", String(100), nullable=False, index=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )
    md.create_all(conn)


def _m2_files_and_jobs(conn: Connection) -> None:
    # Frozen once released, like migration 1.
    md = MetaData()
    Table(
        "files",
        md,
        Column("id", String(40), primary_key=True),
        Column("owner", String(100), nullable=False, index=True),
        Column("filename", String(255), nullable=False),
        Column("purpose", String(40), nullable=False),
        Column("bytes", Integer, nullable=False),
        Column("path", String(1000), nullable=False),
        Column("n_records", Integer, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )
    Table(
        "jobs",
        md,
        Column("id", String(40), primary_key=True),
        Column("owner", String(100), nullable=False, index=True),
        Column("model", String(200), nullable=False),
        Column("training_file", String(40), nullable=False),
        Column("status", String(20), nullable=False, index=True),
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
    Table(
        "job_events",
        md,
        Column("id", Integer, primary_key=True, autoincrement=True),
        Column("job_id", String(40), nullable=False, index=True),
        Column("created_at", DateTime(timezone=True), nullable=False),
        Column("level", String(10), nullable=False),
        Column("type", String(10), nullable=False),
        Column("message", Text, nullable=False),
        Column("data", Text, nullable=True),
    )
    Table(
        "job_checkpoints",
        md,
        Column("id", String(40), primary_key=True),
        Column("job_id", String(40), nullable=False, index=True),
        Column("step", Integer, nullable=False),
        Column("metrics", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )
    md.create_all(conn)


def _m3_responses(conn: Connection) -> None:
    # Frozen once released, like migration 1.
    md = MetaData()
    Table(
        "responses",
        md,
        Column("id", String(40), primary_key=True),
        Column("owner", String(100), nullable=False, index=True),
        Column("model", String(200), nullable=False),
        Column("history", Text, nullable=False),
        Column("response", Text, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False),
    )
    md.create_all(conn)


# Append new steps at the end; never renumber or edit old ones.
MIGRATIONS: list[Migration] = [
    Migration(1, "api keys and ownership", _m1_keys_and_ownership),
    Migration(2, "files, fine-tuning jobs, job events and checkpoints", _m2_files_and_jobs),
    Migration(3, "responses (the Responses API's stored conversations)", _m3_responses),
]
