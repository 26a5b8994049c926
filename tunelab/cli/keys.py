"""`tunelab keys ...`: create, list and revoke the API keys that `tunelab serve` accepts."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Column

from tunelab.cli.output import console, err, fail
from tunelab.config import load_settings
from tunelab.display import records
from tunelab.errors import TunelabError
from tunelab.store.db import Store

if TYPE_CHECKING:
    from rich.console import RenderableType

keys_app = typer.Typer(help="API keys for `tunelab serve`.", no_args_is_help=True)

DbUrlOpt = Annotated[
    str | None,
    typer.Option(
        "--db-url",
        help="The store's database: sqlite:///path or postgresql://user:pw@host/db "
        "[default: TUNELAB_DB_URL, else sqlite in TUNELAB_HOME]",
    ),
]


@contextmanager
def _store(db_url: str | None) -> Iterator[Store]:
    try:
        store = Store.open(load_settings(), db_url)
    except TunelabError as exc:
        fail(exc)
    try:
        yield store
    finally:
        store.close()


@keys_app.command("create")
def create(
    name: Annotated[str, typer.Option("--name", help="What the key is for, e.g. `ci` or `alice-laptop`.")],
    owner: Annotated[
        str | None,
        typer.Option(
            "--owner", help="Who owns what the key creates: models, files, jobs [default: the name]"
        ),
    ] = None,
    db_url: DbUrlOpt = None,
):
    """Create a key and print its secret, once."""
    with _store(db_url) as store:
        try:
            key, secret = store.create_key(name, owner)
        except TunelabError as exc:
            fail(exc)
    # the secret alone on stdout, so `KEY=$(tunelab keys create --name ci)` works; the rest on stderr
    err.print(f"created {key.id} (name {key.name!r}, owner {key.owner!r})", highlight=False, markup=False)
    typer.echo(secret)
    err.print(
        "This key will not be shown again: save it now. Clients send it as the header "
        "`Authorization: Bearer <the key>` (the OpenAI SDK: api_key=<the key>).",
        highlight=False,
        markup=False,
    )


@keys_app.command("list")
def list_(db_url: DbUrlOpt = None):
    """Every key, active and revoked (never the secret)."""
    with _store(db_url) as store:
        keys = store.list_keys()
    if not keys:
        err.print("no API keys yet; create one: tunelab keys create --name NAME", highlight=False)
        return
    console.print(keys_view(keys))


def keys_view(keys: list) -> RenderableType:
    """A row per key, the revoked ones dim; the ids whole, on one line, to copy."""
    columns = [Column("id", no_wrap=True), "name", "owner", Column("prefix", no_wrap=True)]
    columns += [Column("created", no_wrap=True), "status"]
    rows = [
        [
            key.id,
            escape(key.name),
            escape(key.owner),
            f"{key.prefix}…",
            f"{key.created_at:%Y-%m-%d %H:%M} UTC",
            "active" if key.active else f"revoked {key.revoked_at:%Y-%m-%d %H:%M}",
        ]
        for key in keys
    ]
    return records("tunelab API keys", columns, rows, styles=[None if k.active else "dim" for k in keys])


@keys_app.command("revoke")
def revoke(
    id_or_name: Annotated[str, typer.Argument(help="The key's id (key_...) or its name.")],
    db_url: DbUrlOpt = None,
):
    """Revoke a key: requests that send it are refused from now on."""
    with _store(db_url) as store:
        try:
            key = store.revoke_key(id_or_name)
        except TunelabError as exc:
            fail(exc)
    console.print(f"revoked {key.id} (name {key.name!r}, owner {key.owner!r})", highlight=False, markup=False)
