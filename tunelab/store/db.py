"""The embedded store, in SQLite (default) or PostgreSQL: API keys and who owns what, uploaded files,
fine-tuning jobs, their events and checkpoints, stored responses (/v1/responses).

One code path (SQLAlchemy Core) for both databases. Opening a store applies the missing migrations
(`tunelab.store.migrations`), each in its own transaction; the records it returns are in
`tunelab.store.records`.

>>> from tunelab.config import load_settings
>>> from tunelab.store.db import Store
>>> store = Store.open(load_settings())  # TUNELAB_DB_URL, else sqlite:///$TUNELAB_HOME/tunelab.db
>>> key, secret = store.create_key("alice")  # doctest: +SKIP
>>> store.authenticate(secret).owner  # doctest: +SKIP
'alice'
>>> store.set_owner("model", "ft-123", "alice")  # doctest: +SKIP
>>> store.owned("model", "alice")  # doctest: +SKIP
['ft-123']
>>> store.close()
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

from sqlalchemy import (
    Connection,
    create_engine,
    event,
    insert,
    inspect,
    select,
    text,
    update,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, IntegrityError, NoSuchModuleError, SQLAlchemyError

from tunelab.config import Settings
from tunelab.errors import ConfigError, KeyNotFoundError, StoreError
from tunelab.store import migrations
from tunelab.store.records import (
    ApiKey,
    FileRecord,
    JobCheckpoint,
    JobEvent,
    JobRecord,
    ResponseRecord,
    as_utc,
)
from tunelab.store.schema import (
    MAX_NAME,
    PREFIX_CHARS,
    api_keys,
    files,
    job_checkpoints,
    job_events,
    jobs,
    ownership,
    responses,
    schema_migrations,
)

log = logging.getLogger("tunelab")

SECRET_PREFIX = "tl-"
# Waiting this long for another writer (thread or process) beats failing with "database is locked".
SQLITE_BUSY_TIMEOUT_S = 30.0
_SECRET_RE = re.compile(rf"{re.escape(SECRET_PREFIX)}[A-Za-z0-9_-]{{32,200}}")
_MIGRATION_LOCK = 0x74756E656C6162  # pg_advisory_xact_lock key: two servers starting at once migrate once


# --- the store -----------------------------------------------------------------------------------


def _now() -> datetime:
    return datetime.now(timezone.utc)


def hash_secret(secret: str) -> str:
    """sha256 hex of a key's secret: keys are 32 random bytes, so a fast hash is the right one."""
    return hashlib.sha256(secret.encode()).hexdigest()


def mask_url(url: str | URL) -> str:
    """The URL with its password replaced by ***, safe for messages and logs."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", str(url))


def _check_label(what: str, value: object, limit: int = MAX_NAME) -> str:
    """A key's name or an owner: trimmed, 1 to 100 printable characters."""
    if not isinstance(value, str) or not value.strip():
        raise StoreError(f"{what} must be a non-empty string, got {value!r}")
    value = value.strip()
    if len(value) > limit:
        raise StoreError(f"{what} is {len(value)} characters long; at most {limit} are allowed")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in value):
        raise StoreError(f"{what} {value!r} contains a control character (a newline, a tab, ...)")
    return value


def _check_ref(what: str, value: object, limit: int) -> str:
    if not isinstance(value, str) or not value or len(value) > limit:
        raise StoreError(f"{what} must be a non-empty string of at most {limit} characters, got {value!r}")
    return value


def _sqlite_on_connect(dbapi_conn, _record) -> None:
    # pysqlite would issue its own deferred BEGIN lazily; we issue BEGIN / BEGIN IMMEDIATE ourselves
    # (see _sqlite_on_begin), the recipe from SQLAlchemy's SQLite docs.
    dbapi_conn.isolation_level = None
    cursor = dbapi_conn.cursor()
    cursor.execute(f"PRAGMA busy_timeout = {int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    cursor.execute("PRAGMA journal_mode = WAL")  # readers never block the writer, nor it them
    cursor.execute("PRAGMA synchronous = FULL")  # a key that was created survives a power cut
    cursor.execute("PRAGMA foreign_keys = ON")
    cursor.close()


def _sqlite_on_begin(conn: Connection) -> None:
    # A deferred transaction that reads and then writes fails at once with "database is locked" when
    # another writer got there first (the busy handler cannot help); BEGIN IMMEDIATE takes the write
    # lock up front and waits for it.
    write = conn.get_execution_options().get("tunelab_write", False)
    conn.exec_driver_sql("BEGIN IMMEDIATE" if write else "BEGIN")


def _engine_url(url: str) -> URL:
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise ConfigError(
            f"{mask_url(url)!r} is not a database URL; use sqlite:///path/to/tunelab.db or "
            "postgresql://user:password@host:5432/dbname (--db-url or TUNELAB_DB_URL)"
        ) from None
    backend, _, driver = parsed.drivername.partition("+")
    if backend in ("postgresql", "postgres"):
        return parsed.set(drivername=f"postgresql+{driver or 'psycopg'}")
    if backend == "sqlite":
        if parsed.database in (None, "", ":memory:"):
            raise ConfigError(
                f"{mask_url(url)}: an in-memory SQLite database is one per connection, so it cannot hold "
                "the store; give a file: sqlite:///path/to/tunelab.db"
            )
        return parsed
    raise ConfigError(
        f"{mask_url(url)}: tunelab's store runs on SQLite or PostgreSQL; use sqlite:///path/to/tunelab.db "
        "or postgresql://user:password@host:5432/dbname"
    )


def _reason(exc: BaseException, url: str | URL) -> str:
    """The driver's own words, on one line, without the password."""
    orig = getattr(exc, "orig", None) or exc
    message = " ".join(str(orig).split()) or type(orig).__name__
    password = make_url(url).password if not isinstance(url, str) else None
    return message.replace(str(password), "***") if password else message


class Store:
    """API keys and ownership records, in SQLite or PostgreSQL. Safe to share between threads.

    >>> store = Store("sqlite:////tmp/tunelab-doc.db")  # doctest: +SKIP
    >>> key, secret = store.create_key("ci", owner="team-a")  # doctest: +SKIP
    >>> store.authenticate(secret) == key  # doctest: +SKIP
    True
    """

    def __init__(self, url: str):
        engine_url = _engine_url(url)
        self.url = mask_url(url)  # as the user wrote it, password hidden
        self.dialect = engine_url.get_backend_name()
        try:
            if self.dialect == "sqlite":
                self._engine = create_engine(
                    engine_url,
                    connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S},
                )
                event.listen(self._engine, "connect", _sqlite_on_connect)
                event.listen(self._engine, "begin", _sqlite_on_begin)
            else:
                self._engine = create_engine(
                    engine_url, pool_pre_ping=True, connect_args={"connect_timeout": 10}
                )
        except (ArgumentError, NoSuchModuleError, ImportError) as exc:
            hint = "; pip install 'tunelab[postgres]' (psycopg)" if isinstance(exc, ImportError) else ""
            raise ConfigError(
                f"cannot use the database URL {self.url}: {_reason(exc, engine_url)}{hint}"
            ) from None
        try:
            self._migrate()
        except BaseException as exc:
            self._engine.dispose()
            if not isinstance(exc, SQLAlchemyError):
                raise
            reason = _reason(exc, engine_url)
            hint = " (does its directory exist?)" if "unable to open database file" in reason else ""
            raise ConfigError(
                f"cannot open the tunelab database {self.url}{hint}: {reason}; "
                "check the URL (--db-url or TUNELAB_DB_URL)"
            ) from None

    @classmethod
    def open(cls, settings: Settings, url: str | None = None) -> Store:
        """The store at `url`, else $TUNELAB_DB_URL, else sqlite:///{settings.home}/tunelab.db."""
        url = url or os.environ.get("TUNELAB_DB_URL")
        if not url:
            settings.home.mkdir(parents=True, exist_ok=True)
            url = f"sqlite:///{settings.home / 'tunelab.db'}"
        return cls(url)

    def close(self) -> None:
        self._engine.dispose()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Store({self.url!r})"

    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            conn.execution_options(tunelab_write=True)
            with conn.begin():
                yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self._engine.connect() as conn:
            yield conn

    # --- migrations ---

    def _applied(self, conn: Connection) -> list[int]:
        if not inspect(conn).has_table("schema_migrations"):
            return []
        return list(conn.scalars(select(schema_migrations.c.version).order_by(schema_migrations.c.version)))

    def _migrate(self) -> None:
        steps = list(migrations.MIGRATIONS)  # read at call time, so a test can append one
        versions = [m.version for m in steps]
        if versions != sorted(set(versions)) or (versions and versions[0] < 1):
            raise RuntimeError(
                f"tunelab.store.migrations.MIGRATIONS must have increasing versions, got {versions}"
            )
        known = versions[-1] if versions else 0
        with self._read() as conn:
            applied = self._applied(conn)
        if applied and applied[-1] > known:
            raise ConfigError(
                f"the database {self.url} is at schema version {applied[-1]}, newer than this tunelab "
                f"knows ({known}); upgrade tunelab, or point --db-url / TUNELAB_DB_URL at another database"
            )
        for migration in steps:
            if migration.version in applied:
                continue
            with self._write() as conn:
                if self.dialect == "postgresql":
                    conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATION_LOCK})
                schema_migrations.create(conn, checkfirst=True)
                if migration.version in self._applied(conn):  # another process was first
                    continue
                log.info("store %s: migration %d (%s)", self.url, migration.version, migration.name)
                try:
                    migration.apply(conn)
                except SQLAlchemyError as exc:
                    raise StoreError(
                        f"migration {migration.version} ({migration.name}) failed on {self.url}: "
                        f"{_reason(exc, self.url)}; the database was left at the version before it"
                    ) from exc
                conn.execute(
                    insert(schema_migrations).values(
                        version=migration.version, name=migration.name, applied_at=_now()
                    )
                )

    def schema_version(self) -> int:
        """The latest migration applied to this database (0 for none)."""
        with self._read() as conn:
            applied = self._applied(conn)
        return applied[-1] if applied else 0

    # --- API keys ---

    def create_key(self, name: str, owner: str | None = None) -> tuple[ApiKey, str]:
        """A new key for `owner` (default: the name). Returns the record and the secret, shown once."""
        name = _check_label("the key's name", name)
        owner = name if owner is None else _check_label("the key's owner", owner)
        secret = SECRET_PREFIX + secrets.token_urlsafe(32)
        key = ApiKey(
            id=f"key_{secrets.token_hex(8)}",
            name=name,
            owner=owner,
            prefix=secret[:PREFIX_CHARS],
            created_at=_now(),
        )
        with self._write() as conn:
            conn.execute(
                insert(api_keys).values(
                    id=key.id,
                    name=key.name,
                    owner=key.owner,
                    key_hash=hash_secret(secret),
                    prefix=key.prefix,
                    created_at=key.created_at,
                )
            )
        log.info("created API key %s (%s) for owner %s", key.id, key.name, key.owner)
        return key, secret

    @staticmethod
    def _key(row) -> ApiKey:
        return ApiKey(
            id=row.id,
            name=row.name,
            owner=row.owner,
            prefix=row.prefix,
            created_at=as_utc(row.created_at),
            revoked_at=as_utc(row.revoked_at),
        )

    _key_columns = (
        api_keys.c.id,
        api_keys.c.name,
        api_keys.c.owner,
        api_keys.c.prefix,
        api_keys.c.created_at,
        api_keys.c.revoked_at,
    )

    def list_keys(self) -> list[ApiKey]:
        """Every key, active and revoked, oldest first."""
        query = select(*self._key_columns).order_by(api_keys.c.created_at, api_keys.c.id)
        with self._read() as conn:
            return [self._key(row) for row in conn.execute(query)]

    def revoke_key(self, id_or_name: str) -> ApiKey:
        """Revoke the key with this id, else the one active key with this name.

        Raises KeyNotFoundError when none matches, StoreError when the name is ambiguous or the
        key is already revoked.
        """
        ref = _check_ref(
            "a key id or name", id_or_name.strip() if isinstance(id_or_name, str) else id_or_name, MAX_NAME
        )
        with self._write() as conn:
            rows = conn.execute(select(*self._key_columns).where(api_keys.c.id == ref)).all()
            if not rows:
                rows = conn.execute(
                    select(*self._key_columns).where(api_keys.c.name == ref).order_by(api_keys.c.created_at)
                ).all()
            if not rows:
                raise KeyNotFoundError(
                    f"no API key has the id or name {ref!r}; `tunelab keys list` shows them"
                )
            active = [row for row in rows if row.revoked_at is None]
            if not active:
                when = ", ".join(f"{r.id} on {as_utc(r.revoked_at):%Y-%m-%d %H:%M} UTC" for r in rows)
                raise StoreError(f"the API key {ref!r} is already revoked ({when})")
            if len(active) > 1:
                ids = ", ".join(row.id for row in active)
                raise StoreError(
                    f"{len(active)} active API keys are named {ref!r} ({ids}); revoke one by its id"
                )
            row = active[0]
            revoked_at = _now()
            done = conn.execute(
                update(api_keys)
                .where(api_keys.c.id == row.id, api_keys.c.revoked_at.is_(None))
                .values(revoked_at=revoked_at)
            )
            if done.rowcount != 1:  # another process revoked it between our read and this write
                raise StoreError(f"the API key {ref!r} is already revoked")
        log.info("revoked API key %s (%s)", row.id, row.name)
        return self._key(row).model_copy(update={"revoked_at": revoked_at})

    def authenticate(self, secret: str) -> ApiKey | None:
        """The active key whose secret this is; None for an unknown, malformed or revoked one."""
        if not isinstance(secret, str) or not _SECRET_RE.fullmatch(secret):
            return None
        query = select(*self._key_columns).where(
            api_keys.c.key_hash == hash_secret(secret), api_keys.c.revoked_at.is_(None)
        )
        with self._read() as conn:
            row = conn.execute(query).first()
        return self._key(row) if row is not None else None

    # --- ownership ---

    def set_owner(self, kind: str, object_id: str, owner: str) -> None:
        """Record that `owner` owns `object_id` (a "model", "file", "job", ...).

        Recording the same owner again does nothing; giving an owned object to another owner raises
        StoreError, so a client can never take over another's object by naming it.
        """
        kind = _check_ref("kind", kind, 40)
        object_id = _check_ref("object_id", object_id, 200)
        owner = _check_label("the owner", owner)
        try:
            with self._write() as conn:
                current = self._owner(conn, kind, object_id)
                if current is None:
                    row = dict(kind=kind, object_id=object_id, owner=owner, created_at=_now())
                    conn.execute(insert(ownership).values(**row))
        except IntegrityError:  # a concurrent insert of the same object won: compare with it
            current = self.owner_of(kind, object_id)
        if current is not None and current != owner:
            raise StoreError(f"{kind} {object_id!r} already belongs to another owner")

    @staticmethod
    def _owner(conn: Connection, kind: str, object_id: str) -> str | None:
        query = select(ownership.c.owner).where(ownership.c.kind == kind, ownership.c.object_id == object_id)
        return conn.scalar(query)

    def owner_of(self, kind: str, object_id: str) -> str | None:
        """Who owns this object; None when nobody recorded it."""
        with self._read() as conn:
            return self._owner(conn, kind, object_id)

    def owned(self, kind: str, owner: str) -> list[str]:
        """The ids of the objects of this kind that `owner` owns, oldest first."""
        query = (
            select(ownership.c.object_id)
            .where(ownership.c.kind == kind, ownership.c.owner == owner)
            .order_by(ownership.c.created_at, ownership.c.object_id)
        )
        with self._read() as conn:
            return list(conn.scalars(query))

    def remove_owner(self, kind: str, object_id: str) -> bool:
        """Forget an object's owner (the object was deleted). True when there was a record."""
        with self._write() as conn:
            result = conn.execute(
                ownership.delete().where(ownership.c.kind == kind, ownership.c.object_id == object_id)
            )
        return result.rowcount > 0

    # --- files, fine-tuning jobs, their events and checkpoints ---
    # Every read takes the owner: another owner's object is "not found", never "forbidden".

    @staticmethod
    def new_file_id() -> str:
        return f"file-{secrets.token_hex(12)}"

    def add_file(
        self, owner: str, filename: str, purpose: str, nbytes: int, path: str, n_records: int, *, file_id=None
    ) -> FileRecord:
        record = FileRecord(
            id=file_id or self.new_file_id(),
            owner=_check_label("the owner", owner),
            filename=filename[:255],
            purpose=purpose,
            bytes=nbytes,
            path=path,
            n_records=n_records,
            created_at=_now(),
        )
        with self._write() as conn:
            conn.execute(insert(files).values(**record.model_dump()))
        return record

    def get_file(self, owner: str, file_id: str) -> FileRecord | None:
        with self._read() as conn:
            row = conn.execute(select(files).where(files.c.id == file_id, files.c.owner == owner)).first()
        return FileRecord.from_row(row) if row is not None else None

    def list_files(self, owner: str) -> list[FileRecord]:
        query = select(files).where(files.c.owner == owner).order_by(files.c.created_at.desc(), files.c.id)
        with self._read() as conn:
            return [FileRecord.from_row(row) for row in conn.execute(query)]

    def delete_file(self, owner: str, file_id: str) -> bool:
        with self._write() as conn:
            done = conn.execute(files.delete().where(files.c.id == file_id, files.c.owner == owner))
        return done.rowcount > 0

    def create_job(
        self, owner: str, model: str, training_file: str, hyperparameters: dict, seed: int, suffix: str | None
    ) -> JobRecord:
        job = JobRecord(
            id=f"ftjob-{secrets.token_hex(12)}",
            owner=_check_label("the owner", owner),
            model=model,
            training_file=training_file,
            status="queued",
            hyperparameters=hyperparameters,
            seed=seed,
            suffix=suffix,
            created_at=_now(),
        )
        with self._write() as conn:
            conn.execute(insert(jobs).values(**job.row()))
            self._event(conn, job.id, "info", "message", f"Created fine-tuning job: {job.id}")
        return job

    def get_job(self, owner: str | None, job_id: str) -> JobRecord | None:
        """The job, if `owner` owns it (owner None: the worker, which sees every job)."""
        query = select(jobs).where(jobs.c.id == job_id)
        if owner is not None:
            query = query.where(jobs.c.owner == owner)
        with self._read() as conn:
            row = conn.execute(query).first()
        return JobRecord.from_row(row) if row is not None else None

    def list_jobs(self, owner: str, *, limit: int = 20, after: str | None = None) -> list[JobRecord]:
        query = select(jobs).where(jobs.c.owner == owner).order_by(jobs.c.created_at.desc(), jobs.c.id.desc())
        with self._read() as conn:
            rows = [JobRecord.from_row(r) for r in conn.execute(query)]
        if after is not None:
            ids = [j.id for j in rows]
            rows = rows[ids.index(after) + 1 :] if after in ids else []
        return rows[:limit]

    def jobs_with_status(self, *statuses: str) -> list[JobRecord]:
        query = select(jobs).where(jobs.c.status.in_(statuses)).order_by(jobs.c.created_at, jobs.c.id)
        with self._read() as conn:
            return [JobRecord.from_row(r) for r in conn.execute(query)]

    def claim_job(self) -> JobRecord | None:
        """The oldest queued job, switched to running in the same transaction (one worker gets it)."""
        with self._write() as conn:
            row = conn.execute(
                select(jobs).where(jobs.c.status == "queued").order_by(jobs.c.created_at, jobs.c.id).limit(1)
            ).first()
            if row is None:
                return None
            done = conn.execute(
                update(jobs).where(jobs.c.id == row.id, jobs.c.status == "queued").values(status="running")
            )
            if done.rowcount != 1:
                return None
        return JobRecord.from_row(row).model_copy(update={"status": "running"})

    def update_job(self, job_id: str, *, only_if_status: tuple[str, ...] = (), **values) -> bool:
        """Set fields of a job (status, fine_tuned_model, error, ...); with `only_if_status`, only when
        the job is in one of those states. True when the job was changed."""
        for name in ("hyperparameters", "error", "result_files"):
            if name in values and not isinstance(values[name], str | None):
                values[name] = json.dumps(values[name])
        query = update(jobs).where(jobs.c.id == job_id)
        if only_if_status:
            query = query.where(jobs.c.status.in_(only_if_status))
        with self._write() as conn:
            return conn.execute(query.values(**values)).rowcount == 1

    @staticmethod
    def _event(conn: Connection, job_id: str, level: str, type: str, message: str, data: dict | None = None):
        conn.execute(
            insert(job_events).values(
                job_id=job_id,
                created_at=_now(),
                level=level,
                type=type,
                message=message,
                data=json.dumps(data) if data is not None else None,
            )
        )

    def add_event(self, job_id: str, message: str, *, level: str = "info", type: str = "message", data=None):
        with self._write() as conn:
            self._event(conn, job_id, level, type, message, data)

    def list_events(self, job_id: str, *, limit: int = 20, after: int | None = None) -> list[JobEvent]:
        """Newest first (OpenAI's order); `after`: only events older than that event id."""
        query = select(job_events).where(job_events.c.job_id == job_id)
        if after is not None:
            query = query.where(job_events.c.id < after)
        query = query.order_by(job_events.c.id.desc()).limit(limit)
        with self._read() as conn:
            return [JobEvent.from_row(r) for r in conn.execute(query)]

    def add_checkpoint(self, job_id: str, step: int, metrics: dict) -> None:
        with self._write() as conn:
            conn.execute(
                insert(job_checkpoints).values(
                    id=f"ftckpt-{secrets.token_hex(10)}",
                    job_id=job_id,
                    step=step,
                    metrics=json.dumps(metrics),
                    created_at=_now(),
                )
            )

    def list_checkpoints(self, job_id: str) -> list[JobCheckpoint]:
        query = (
            select(job_checkpoints)
            .where(job_checkpoints.c.job_id == job_id)
            .order_by(job_checkpoints.c.step.desc())
        )
        with self._read() as conn:
            return [JobCheckpoint.from_row(r) for r in conn.execute(query)]

    # --- stored responses (POST /v1/responses); like files, another owner's is "not found" ---

    def add_response(self, record: ResponseRecord) -> None:
        _check_label("the owner", record.owner)
        with self._write() as conn:
            conn.execute(insert(responses).values(**record.row()))

    def get_response(self, owner: str, response_id: str) -> ResponseRecord | None:
        query = select(responses).where(responses.c.id == response_id, responses.c.owner == owner)
        with self._read() as conn:
            row = conn.execute(query).first()
        return ResponseRecord.from_row(row) if row is not None else None

    def delete_response(self, owner: str, response_id: str) -> bool:
        query = responses.delete().where(responses.c.id == response_id, responses.c.owner == owner)
        with self._write() as conn:
            return conn.execute(query).rowcount > 0
