"""A throwaway PostgreSQL server for tests, from Debian's binaries (`make postgres` installs them).

Used by the session fixtures `postgres_server` and `postgres_url` in tests/conftest.py::

    def test_something(postgres_server):
        url = postgres_server.create_database("mine")  # a fresh, empty database
        ...

The server runs from a temporary directory on 127.0.0.1 and a free port, with trust auth and no
fsync (a test database need not survive a power cut), and is stopped with `pg_ctl stop -m immediate`.
PostgreSQL refuses to run as root, so as root the binaries run as the `postgres` OS user.
"""

from __future__ import annotations

import glob
import os
import pwd
import re
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"
INSTALL_HINT = "install Debian's postgresql (`make postgres`, or: sudo apt-get install postgresql)"


class PostgresUnavailable(RuntimeError):
    """No PostgreSQL binaries here, or no user to run them as."""


def find_pg_bin() -> Path | None:
    """The newest /usr/lib/postgresql/<version>/bin with initdb and pg_ctl, else the one on PATH."""

    def version(path: str) -> tuple[int, ...]:
        return tuple(int(n) for n in re.findall(r"\d+", Path(path).parent.name))

    for candidate in sorted(glob.glob(PG_BIN_GLOB), key=version, reverse=True):
        if all(os.access(Path(candidate, tool), os.X_OK) for tool in ("initdb", "pg_ctl")):
            return Path(candidate)
    on_path = shutil.which("pg_ctl")
    if on_path and shutil.which("initdb"):
        return Path(on_path).resolve().parent
    return None


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class PostgresServer:
    bin_dir: Path
    root: Path  # data/, sock/ and server.log live here
    port: int
    run_as: str | None  # the OS user the binaries run as (None: the current one)
    database: str = "tunelab"

    @property
    def url(self) -> str:
        """The URL of the session's database (shared by the tests that use it)."""
        return self.url_for(self.database)

    def url_for(self, database: str) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
        command = [str(self.bin_dir / args[0]), *args[1:]]
        if self.run_as:
            command = ["runuser", "-u", self.run_as, "--", *command]
        # cwd: the postgres user may not be allowed to read the caller's working directory
        return subprocess.run(command, cwd=self.root, capture_output=True, text=True, timeout=timeout)

    def create_database(self, name: str) -> str:
        """Create an empty database and return its URL (names: letters, digits, underscores)."""
        import psycopg

        if not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", name):
            raise ValueError(f"database name {name!r}: use lowercase letters, digits and underscores")
        with psycopg.connect(self.url_for("postgres"), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url_for(name)

    def log_tail(self, lines: int = 20) -> str:
        log = self.root / "server.log"
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log.exists() else ""

    def stop(self) -> None:
        if (self.root / "data" / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", "data", "stop", "-m", "immediate", "-w")
        shutil.rmtree(self.root, ignore_errors=True)


def start_postgres(database: str = "tunelab") -> PostgresServer:
    """initdb + pg_ctl start in a new temporary directory; raises PostgresUnavailable or RuntimeError."""
    bin_dir = find_pg_bin()
    if bin_dir is None:
        raise PostgresUnavailable(
            f"PostgreSQL is not installed (no initdb in {PG_BIN_GLOB} nor on PATH); {INSTALL_HINT}"
        )
    run_as = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam("postgres")
        except KeyError:
            raise PostgresUnavailable(
                "running as root and there is no `postgres` OS user to run PostgreSQL as; " + INSTALL_HINT
            ) from None
        run_as = "postgres"
    root = Path(tempfile.mkdtemp(prefix="tunelab-pg-"))  # short: a socket path must fit in 107 bytes
    (root / "sock").mkdir()
    if run_as:
        for path in (root, root / "sock"):
            os.chown(path, user.pw_uid, user.pw_gid)
    server = PostgresServer(bin_dir, root, 0, run_as, database)
    try:
        done = server._run(
            "initdb", "-D", "data", "-U", "postgres", "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"
        )
        if done.returncode != 0:
            raise RuntimeError(f"initdb failed:\n{done.stdout}{done.stderr}")
        for _attempt in range(3):  # another process may take the free port before the server binds it
            server.port = _free_port()
            options = (
                f"-c listen_addresses=127.0.0.1 -p {server.port} -k {root / 'sock'} "
                "-c fsync=off -c synchronous_commit=off -c full_page_writes=off"
            )
            done = server._run(
                "pg_ctl", "-D", "data", "-l", "server.log", "-w", "-t", "60", "-o", options, "start"
            )
            if done.returncode == 0:
                break
            if "could not bind" not in server.log_tail(50):
                raise RuntimeError(f"pg_ctl start failed:\n{done.stdout}{done.stderr}\n{server.log_tail()}")
        else:
            raise RuntimeError(f"pg_ctl start found no free port:\n{server.log_tail()}")
        server.create_database(database)
    except BaseException:
        server.stop()
        raise
    return server


@contextmanager
def running_postgres(database: str = "tunelab") -> Iterator[PostgresServer]:
    """A server for the length of the block, stopped and deleted at the end."""
    server = start_postgres(database)
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def postgres_or_skip(database: str = "tunelab") -> Iterator[PostgresServer]:
    """running_postgres for a pytest fixture: skip when PostgreSQL is not installed, or fail when
    TUNELAB_REQUIRE_POSTGRES=1 (CI) says it must be."""
    import pytest

    try:
        server = start_postgres(database)
    except PostgresUnavailable as exc:
        if os.environ.get("TUNELAB_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required here (TUNELAB_REQUIRE_POSTGRES=1): {exc}")
        pytest.skip(str(exc))
    try:
        yield server
    finally:
        server.stop()
