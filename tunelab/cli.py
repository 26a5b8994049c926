"""`tunelab ...`: the command line, a thin layer over the same runner the Python API uses."""

from __future__ import annotations

import json
import logging
import sys
from dataclasses import asdict
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from tunelab.errors import TunelabError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Run, compare, fine-tune and serve LLMs locally."
)
config_app = typer.Typer(help="Where tunelab's configuration lives and what it holds.")
app.add_typer(config_app, name="config")
console = Console()
err = Console(stderr=True, soft_wrap=True)  # paths in errors must stay copyable

TemplateOpt = Annotated[
    str, typer.Option("--template", "-t", help="auto | raw | llama2 | chatml | a Jinja string")
]
# None: the config file's (or env var's) choice, else auto
BackendOpt = Annotated[
    str | None,
    typer.Option("--backend", "-b", help="auto | transformers | llama_cpp [default: from config, auto]"),
]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="auto | cuda | mps | cpu [default: from config, auto]")
]


def _fail(exc: Exception) -> None:
    err.print(f"[bold red]error:[/] {exc}", highlight=False)
    raise typer.Exit(1)


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what tunelab decides.")] = False):
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )


@app.command()
def ask(
    model: Annotated[str, typer.Argument(help="A model name, path, HF id, alias or remote name.")],
    prompt: Annotated[list[str], typer.Argument(help="One or more prompts (answered as one batch).")],
    template: TemplateOpt = "auto",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n")] = 512,
    temperature: Annotated[float, typer.Option(help="0 is greedy.")] = 0.0,
    top_p: float = 1.0,
    top_k: Annotated[int, typer.Option(help="0 is off.")] = 0,
    repetition_penalty: float = 1.0,
    stop: Annotated[list[str] | None, typer.Option(help="A stop string (repeatable).")] = None,
    seed: int | None = None,
    system: Annotated[str | None, typer.Option(help="A system prompt.")] = None,
    backend: BackendOpt = None,
    device: DeviceOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print Completion records as JSON.")] = False,
):
    """Answer PROMPT(s) with MODEL; says so when the token limit cut an answer."""
    from tunelab.runner import BasicModelRunner

    try:
        runner = BasicModelRunner(
            model, template=template, system_prompt=system, backend=backend, device=device
        )
        completions = runner.generate(
            list(prompt),
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_p=top_p,
            top_k=top_k,
            repetition_penalty=repetition_penalty,
            stop=stop or (),
            seed=seed,
        )
    except (TunelabError, ValueError) as exc:  # GenerationOptionError is a ValueError too
        _fail(exc)
    if as_json:
        print(json.dumps([asdict(c) for c in completions], indent=2))
        return
    failed = False
    for c in completions:
        if len(completions) > 1:
            console.rule(c.prompt[:70], style="dim")
        if c.error:
            failed = True
            err.print(f"[bold red]error:[/] {c.error}", highlight=False)
            continue
        console.print(c.text, markup=False, highlight=False)
        if c.truncated:
            err.print(
                f"[yellow]cut off: the answer reached the {c.max_new_tokens}-token limit "
                f"(finish_reason=length); raise --max-new-tokens to see more[/]"
            )
        err.print(
            f"[dim]{c.model} · {c.backend} · template {c.template} · {c.prompt_tokens} prompt + "
            f"{c.completion_tokens} answer tokens · {c.latency_s:.2f} s · finish_reason={c.finish_reason}[/]",
            highlight=False,
        )
    if failed:
        raise typer.Exit(1)


@app.command()
def models():
    """List the models tunelab can run and where each comes from."""
    from tunelab.catalog import list_models
    from tunelab.config import load_settings

    try:
        rows = list_models(load_settings())
    except TunelabError as exc:
        _fail(exc)
    table = Table(title="tunelab models")
    for column in ("name", "kind", "source", "where", "status"):
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(row.name, row.kind, row.source, row.where, row.status)
    console.print(table)


@app.command()
def demo(
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n")] = 128,
    backend: BackendOpt = None,
):
    """The lesson "why fine-tune", end to end on the embedded base and chat models."""
    from tunelab.lesson import run_lesson

    try:
        run_lesson(console, max_new_tokens=max_new_tokens, backend=backend)
    except TunelabError as exc:
        _fail(exc)


@config_app.command("path")
def config_path():
    """Print the config file's path (it may not exist yet) and the data home."""
    from tunelab.config import load_settings

    settings = load_settings()
    print(
        f"config file: {settings.config_file}{'' if settings.config_file.exists() else ' (not created yet)'}"
    )
    print(f"data home:   {settings.home}")


@config_app.command("show")
def config_show():
    """Print the merged configuration (file < env vars), with secrets hidden."""
    from tunelab.config import load_settings

    try:
        settings = load_settings()
    except TunelabError as exc:
        _fail(exc)
    data = settings.model_dump(mode="json")
    if data.get("production_key"):
        data["production_key"] = "***"
    for remote in data.get("remote", {}).values():
        if remote.get("api_key"):
            remote["api_key"] = "***"
    print(json.dumps(data, indent=2))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
