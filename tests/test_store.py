"""The embedded store: API keys, ownership, migrations; on SQLite and on PostgreSQL alike."""

from __future__ import annotations

import re
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest
import typer
from sqlalchemy import Column, Integer, MetaData, Table, inspect, text
from typer.testing import CliRunner

import tunelab.store.migrations as migrations_module
import tunelab.store.schema as schema_module
from tunelab.cli.keys import keys_app
from tunelab.config import load_settings
from tunelab.errors import ConfigError, KeyNotFoundError, StoreError
from tunelab.store.db import Store, hash_secret
from tunelab.store.migrations import Migration

app = typer.Typer()
app.add_typer(keys_app, name="keys")
cli = CliRunner(env={"COLUMNS": "200"})  # a wide table: no id folded over two lines


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path) -> str:
    """A fresh, empty database of each kind."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'tunelab.db'}"
    return request.getfixturevalue("postgres_server").create_database(f"t_{uuid.uuid4().hex[:16]}")


@pytest.fixture
def sqlite_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'tunelab.db'}"


@pytest.fixture
def store(db_url):
    with Store(db_url) as opened:
        yield opened


# --- API keys -------------------------------------------------------------------------------------


def test_a_key_authenticates_with_its_secret_and_nothing_else(store):
    key, secret = store.create_key("ci", owner="team-a")
    assert secret.startswith("tl-") and len(secret) >= 40 and key.prefix == secret[: len(key.prefix)]
    assert key.id.startswith("key_") and key.active
    found = store.authenticate(secret)
    assert found == key and found.owner == "team-a" and found.name == "ci"
    assert store.authenticate(secret[:-1] + ("A" if secret[-1] != "A" else "B")) is None  # wrong
    for malformed in ("", "tl-", "Bearer " + secret, secret + " ", "sk-" + secret[3:], None, 123):
        assert store.authenticate(malformed) is None


def test_the_owner_defaults_to_the_name(store):
    key, _ = store.create_key("alice")
    assert key.owner == "alice"


def test_a_revoked_key_no_longer_authenticates_and_lists_as_revoked(store):
    kept, kept_secret = store.create_key("kept")
    gone, gone_secret = store.create_key("gone")
    revoked = store.revoke_key(gone.id)
    assert revoked.id == gone.id and not revoked.active and revoked.revoked_at >= gone.created_at
    assert store.authenticate(gone_secret) is None
    assert store.authenticate(kept_secret) == kept
    listed = {k.name: k for k in store.list_keys()}
    assert listed["kept"].active and not listed["gone"].active
    assert listed["gone"].revoked_at == revoked.revoked_at


def test_revoke_by_name_unknown_twice_and_ambiguous(store):
    key, secret = store.create_key("laptop", owner="alice")
    assert store.revoke_key("laptop").id == key.id
    with pytest.raises(StoreError, match="already revoked"):
        store.revoke_key("laptop")
    with pytest.raises(StoreError, match="already revoked"):
        store.revoke_key(key.id)
    with pytest.raises(KeyNotFoundError, match="no API key has the id or name 'nope'"):
        store.revoke_key("nope")
    first, _ = store.create_key("shared", owner="alice")
    second, _ = store.create_key("shared", owner="bob")
    with pytest.raises(StoreError, match=rf"2 active API keys are named 'shared' .*{first.id}.*by its id"):
        store.revoke_key("shared")
    assert all(k.active for k in store.list_keys() if k.name == "shared")  # refused: nothing revoked
    store.revoke_key(second.id)
    assert store.revoke_key("shared").id == first.id  # only one active one left: the name is enough


@pytest.mark.parametrize(
    "name, problem",
    [("", "non-empty"), ("   ", "non-empty"), ("x" * 101, "101 characters long"), ("a\nb", "control")],
)
def test_names_and_owners_are_validated(store, name, problem):
    with pytest.raises(StoreError, match=problem):
        store.create_key(name)
    with pytest.raises(StoreError, match=f"owner.*{problem}"):
        store.create_key("fine", owner=name)
    assert store.list_keys() == []


def test_the_database_holds_the_hash_never_the_secret(sqlite_url, tmp_path):
    with Store(sqlite_url) as store:
        _, secret = store.create_key("ci")
        stored = b"".join(p.read_bytes() for p in tmp_path.glob("tunelab.db*"))  # the file and its WAL
    assert hash_secret(secret).encode() in stored  # the search does see what was written
    assert secret.encode() not in stored and secret[10:].encode() not in stored


# --- ownership ------------------------------------------------------------------------------------


def test_ownership_is_per_owner(store):
    store.set_owner("model", "ft-1", "alice")
    store.set_owner("model", "ft-2", "alice")
    store.set_owner("file", "file-1", "alice")
    store.set_owner("model", "ft-3", "bob")
    assert store.owner_of("model", "ft-1") == "alice" and store.owner_of("model", "ft-3") == "bob"
    assert store.owner_of("model", "file-1") is None and store.owner_of("model", "nobody") is None
    assert store.owned("model", "alice") == ["ft-1", "ft-2"]
    assert store.owned("file", "alice") == ["file-1"]
    assert store.owned("model", "bob") == ["ft-3"] and store.owned("model", "carol") == []


def test_an_owned_object_cannot_be_taken_over(store):
    store.set_owner("job", "ftjob-1", "alice")
    store.set_owner("job", "ftjob-1", "alice")  # recording it again is fine
    with pytest.raises(StoreError, match="already belongs to another owner"):
        store.set_owner("job", "ftjob-1", "mallory")
    assert store.owner_of("job", "ftjob-1") == "alice" and store.owned("job", "mallory") == []
    assert store.remove_owner("job", "ftjob-1") and not store.remove_owner("job", "ftjob-1")
    assert store.owner_of("job", "ftjob-1") is None


# --- migrations -----------------------------------------------------------------------------------


def test_a_new_database_is_at_the_latest_schema_and_matches_the_query_tables(store):
    assert store.schema_version() == migrations_module.MIGRATIONS[-1].version
    with store._engine.connect() as conn:
        db = inspect(conn)
        for table in schema_module.metadata.tables.values():
            assert {c["name"] for c in db.get_columns(table.name)} == set(table.columns.keys()), table.name


def test_reopening_runs_no_migration_again(db_url, monkeypatch):
    calls = []
    first = migrations_module.MIGRATIONS[0]
    counted = Migration(first.version, first.name, lambda conn: (calls.append(1), first.apply(conn)))
    monkeypatch.setattr(migrations_module, "MIGRATIONS", [counted, *migrations_module.MIGRATIONS[1:]])
    Store(db_url).close()
    with Store(db_url) as store:
        assert calls == [1] and store.schema_version() == migrations_module.MIGRATIONS[-1].version
        with store._engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM schema_migrations")).scalar() == len(
                migrations_module.MIGRATIONS
            )


def _add_notes(conn):
    Table("notes", MetaData(), Column("id", Integer, primary_key=True)).create(conn)
    conn.execute(text("ALTER TABLE api_keys ADD COLUMN note VARCHAR(50)"))


def test_a_later_migration_upgrades_an_old_database_and_keeps_its_rows(db_url, monkeypatch):
    monkeypatch.setattr(migrations_module, "MIGRATIONS", migrations_module.MIGRATIONS[:1])
    with Store(db_url) as old:
        key, secret = old.create_key("before-upgrade", owner="alice")
        old.set_owner("model", "ft-1", "alice")
        assert old.schema_version() == 1
    monkeypatch.setattr(
        migrations_module, "MIGRATIONS", [*migrations_module.MIGRATIONS, Migration(2, "notes", _add_notes)]
    )
    with Store(db_url) as new:
        assert new.schema_version() == 2
        assert new.authenticate(secret) == key and new.owned("model", "alice") == ["ft-1"]
        with new._engine.connect() as conn:
            assert inspect(conn).has_table("notes")
            assert "note" in {c["name"] for c in inspect(conn).get_columns("api_keys")}


def test_a_failing_migration_leaves_the_database_as_it_was(db_url, monkeypatch):
    def broken(conn):
        Table("half_done", MetaData(), Column("id", Integer, primary_key=True)).create(conn)
        conn.execute(text("SELECT * FROM no_such_table"))

    monkeypatch.setattr(
        migrations_module, "MIGRATIONS", [*migrations_module.MIGRATIONS, Migration(99, "broken", broken)]
    )
    with pytest.raises(StoreError, match=r"migration 99 \(broken\) failed.*left at the version before"):
        Store(db_url)
    monkeypatch.undo()
    with Store(db_url) as store:
        assert store.schema_version() == migrations_module.MIGRATIONS[-1].version
        with store._engine.connect() as conn:
            assert not inspect(conn).has_table("half_done")  # the DDL was rolled back with the step


def test_a_database_newer_than_this_tunelab_is_refused(db_url, monkeypatch):
    monkeypatch.setattr(
        migrations_module, "MIGRATIONS", [*migrations_module.MIGRATIONS, Migration(99, "future", _add_notes)]
    )
    Store(db_url).close()
    monkeypatch.undo()
    with pytest.raises(ConfigError, match="schema version 99, newer than this tunelab knows"):
        Store(db_url)


# --- opening --------------------------------------------------------------------------------------


def test_open_defaults_to_sqlite_in_the_data_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path / "new" / "home"))
    with Store.open(load_settings()) as store:
        assert store.dialect == "sqlite" and store.url.endswith("/new/home/tunelab.db")
    assert (tmp_path / "new" / "home" / "tunelab.db").exists()


def test_open_takes_the_url_from_the_env_var_and_maps_postgresql_to_psycopg(postgres_url, monkeypatch):
    monkeypatch.setenv("TUNELAB_DB_URL", postgres_url)  # plain postgresql://, as users write it
    with Store.open(load_settings()) as store:
        assert store.dialect == "postgresql" and store._engine.url.drivername == "postgresql+psycopg"
        store.create_key("env")  # the connection works


def test_sqlite_connections_use_wal_full_sync_foreign_keys_and_wait_when_busy(sqlite_url):
    with Store(sqlite_url) as store:
        results = []

        def pragmas():
            with store._engine.connect() as conn:
                names = ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
                results.append([conn.exec_driver_sql(f"PRAGMA {n}").scalar() for n in names])

        worker = threading.Thread(target=pragmas)  # a pooled connection made in another thread too
        worker.start()
        worker.join()
        pragmas()
    assert results == [["wal", 2, 1, 30000]] * 2  # synchronous 2 = FULL


@pytest.mark.parametrize(
    "url, problem",
    [
        (
            "postgresql://nobody:hunter2@127.0.0.1:9/x",
            r"cannot open the tunelab database "
            r"postgresql://nobody:\*\*\*@127\.0\.0\.1:9/x: .*[Cc]onnection refused",
        ),
        ("sqlite:////no/such/dir/tunelab.db", "does its directory exist"),
        ("mysql://root:hunter2@localhost/x", "SQLite or PostgreSQL"),
        ("sqlite://", "in-memory"),
        ("not a url", "is not a database URL"),
    ],
)
def test_a_bad_url_is_a_clear_config_error_without_the_password(url, problem):
    with pytest.raises(ConfigError, match=problem) as caught:
        Store(url)
    assert "hunter2" not in str(caught.value)


# --- crash safety and concurrency ----------------------------------------------------------------

_CREATE_THEN_DIE = """
import os, signal, sys
from tunelab.store.db import Store
store = Store(sys.argv[1])
key, secret = store.create_key("survivor")
print(secret, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_a_key_survives_its_process_being_killed(sqlite_url, tmp_path):
    done = subprocess.run(
        [sys.executable, "-c", _CREATE_THEN_DIE, sqlite_url], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert (tmp_path / "tunelab.db-wal").exists()  # killed before any checkpoint: the key is in the WAL
    with Store(sqlite_url) as store:
        found = store.authenticate(done.stdout.strip())
    assert found is not None and found.name == "survivor"


def test_threads_creating_keys_at_once_never_hit_a_locked_database(db_url):
    threads, per_thread = 8, 20
    errors: list[BaseException] = []
    start = threading.Barrier(threads)
    with Store(db_url) as store:

        def work(n):
            start.wait()
            try:
                for i in range(per_thread):
                    key, _ = store.create_key(f"t{n}-{i}")
                    store.set_owner("model", f"ft-{key.id}", key.owner)  # reads, then writes
                    store.authenticate("tl-" + "x" * 43)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
        assert errors == []
        keys = store.list_keys()
        owners = {store.owner_of("model", f"ft-{k.id}") for k in keys}
    assert len(keys) == threads * per_thread == len({k.id for k in keys})
    assert owners == {f"t{n}-{i}" for n in range(threads) for i in range(per_thread)}


# --- the CLI --------------------------------------------------------------------------------------


def test_cli_create_prints_the_secret_once_and_list_never_shows_it(db_url):
    created = cli.invoke(app, ["keys", "create", "--name", "ci", "--owner", "team-a", "--db-url", db_url])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip()  # stdout is the secret alone: KEY=$(tunelab keys create ...)
    assert re.fullmatch(r"tl-[A-Za-z0-9_-]{43}", secret)
    assert created.output.count(secret) == 1
    assert "will not be shown again" in created.stderr and "Authorization: Bearer" in created.stderr
    listed = cli.invoke(app, ["keys", "list", "--db-url", db_url])
    assert listed.exit_code == 0, listed.output
    with Store(db_url) as store:
        (key,) = store.list_keys()
    row = next(line for line in listed.stdout.splitlines() if key.id in line)
    assert "ci" in row and "team-a" in row and f"{secret[:10]}…" in row and "active" in row
    assert secret not in listed.output and hash_secret(secret) not in listed.output
    assert secret[10:20] not in listed.output


def test_cli_revoke_by_name_then_list_shows_revoked(db_url):
    cli.invoke(app, ["keys", "create", "--name", "laptop", "--db-url", db_url])
    revoked = cli.invoke(app, ["keys", "revoke", "laptop", "--db-url", db_url])
    assert revoked.exit_code == 0, revoked.output
    assert "revoked key_" in revoked.output
    listed = cli.invoke(app, ["keys", "list", "--db-url", db_url])
    assert "revoked 20" in listed.stdout and "active" not in listed.stdout


def _cli_error(result) -> str:
    assert result.exit_code == 1, result.output
    assert "Traceback" not in result.output and isinstance(result.exception, SystemExit)
    return " ".join(result.stderr.split())  # rich wraps long lines


@pytest.mark.parametrize(
    "names, args, message",
    [
        ([], ["revoke", "nope"], "error: no API key has the id or name 'nope'; `tunelab keys list` shows"),
        (["one", "one"], ["revoke", "one"], "error: 2 active API keys are named 'one'"),
        ([], ["create", "--name", " "], "error: the key's name must be a non-empty string"),
    ],
)
def test_cli_errors_are_one_clear_line_and_exit_1(sqlite_url, names, args, message):
    with Store(sqlite_url) as store:
        for name in names:
            store.create_key(name)
    assert message in _cli_error(cli.invoke(app, ["keys", *args, "--db-url", sqlite_url]))


def test_cli_revoking_twice_says_it_is_already_revoked(sqlite_url):
    assert cli.invoke(app, ["keys", "create", "--name", "twice", "--db-url", sqlite_url]).exit_code == 0
    assert cli.invoke(app, ["keys", "revoke", "twice", "--db-url", sqlite_url]).exit_code == 0
    again = cli.invoke(app, ["keys", "revoke", "twice", "--db-url", sqlite_url])
    assert "error: the API key 'twice' is already revoked" in _cli_error(again)


def test_cli_bad_db_url_is_a_clear_error():
    result = cli.invoke(app, ["keys", "list", "--db-url", "postgresql://nobody@127.0.0.1:9/x"])
    message = _cli_error(result)
    assert "error: cannot open the tunelab database postgresql://nobody@127.0.0.1:9/x" in message
    assert "onnection refused" in message


def test_cli_list_with_no_keys_says_how_to_make_one(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_HOME", str(tmp_path))  # the default store: sqlite in the data home
    result = cli.invoke(app, ["keys", "list"])
    assert result.exit_code == 0 and "tunelab keys create --name NAME" in result.stderr
    assert Path(tmp_path / "tunelab.db").exists()
