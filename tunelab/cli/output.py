"""Where the command line writes: answers to stdout, errors to stderr, and how a command fails."""

from __future__ import annotations

from typing import NoReturn

import typer
from rich.console import Console
from rich.markup import escape

console = Console()
err = Console(stderr=True, soft_wrap=True)  # paths and URLs in errors must stay copyable


def fail(exc: Exception) -> NoReturn:
    """Print the error as one line (its text, not rich markup: "[INST]" stays) and exit with 1."""
    err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
    raise typer.Exit(1)
