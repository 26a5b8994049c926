"""The lesson "Why fine-tune", run for real on the two embedded models.

A base model (gemma-3-270m, standing in for Llama-2-7b-hf) and a chat model (smollm2-135m-instruct,
standing in for Llama-2-7b-chat-hf) get the lesson's four prompts, raw, with `[INST]` tags, and through
the chat model's own template; the answers are printed side by side with their finish reasons.
A hosted model ("chat-gpt") joins when one is configured.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.panel import Panel
from rich.table import Table

from tunelab.errors import ModelNotFoundError
from tunelab.generation import Completion
from tunelab.runner import BasicModelRunner

LESSON_PROMPTS = [
    "Tell me how to train my dog to sit",
    "What do you think of Mars?",
    "Who is the boss of Twitter?",
    """Agent: I'm here to help you with your Amazon deliver order.
Customer: I didn't get my item
Agent: I'm sorry to hear that. Which item was it?
Customer: the blanket
Agent:""",
]


@dataclass
class LessonRun:
    model: str
    template: str
    label: str


LESSON_RUNS = [
    LessonRun("gemma-3-270m", "raw", "base, raw"),
    LessonRun("gemma-3-270m", "llama2", "base, [INST] tags"),
    LessonRun("smollm2-135m-instruct", "raw", "chat, raw"),
    LessonRun("smollm2-135m-instruct", "llama2", "chat, [INST] tags"),
    LessonRun("smollm2-135m-instruct", "auto", "chat, its own template"),
]


def run_lesson(console: Console, *, max_new_tokens: int = 128, backend: str | None = None) -> dict:
    """Answer every lesson prompt with every (model, template) run; print and return the answers."""
    console.print(
        Panel(
            "Why fine-tune? The same four prompts go to a [bold]base[/] model and a [bold]chat-tuned[/] "
            "model, raw and templated.\nWatch the base model continue and repeat the question, the chat "
            "model answer only through its template, answers cut by the token limit, and a model that "
            "does not know who runs Twitter.",
            title="tunelab demo: the lesson",
        )
    )
    answers: dict[tuple[str, str], list[Completion]] = {}
    runners: dict[str, BasicModelRunner] = {}
    for run in LESSON_RUNS:
        if run.model not in runners:
            runners[run.model] = BasicModelRunner(run.model, backend=backend)
        runner = runners[run.model]
        with console.status(f"{run.model} ({run.label}): {len(LESSON_PROMPTS)} prompts as one batch"):
            answers[(run.model, run.label)] = runner.generate(
                LESSON_PROMPTS, template=run.template, max_new_tokens=max_new_tokens
            )
    hosted = _hosted_answers(console, max_new_tokens)
    if hosted:
        answers[("chat-gpt", "hosted")] = hosted

    for i, prompt in enumerate(LESSON_PROMPTS):
        table = Table(title=f"prompt {i + 1}: {prompt.splitlines()[0]}", show_lines=True, expand=True)
        table.add_column("model", no_wrap=True, min_width=22)
        table.add_column("answer", ratio=4)
        table.add_column("finish", no_wrap=True)
        for (model, label), completions in answers.items():
            c = completions[i]
            finish = "[yellow]length (cut)[/]" if c.truncated else c.finish_reason
            text = c.text.strip() or "[dim](empty answer)[/]"
            table.add_row(
                f"{model}\n[dim]{label}\n{c.backend}[/]",
                _escape(text) if c.text.strip() else text,
                f"{finish}\n[dim]{c.completion_tokens} tok[/]",
            )
        console.print(table)
    cut = sum(c.truncated for cs in answers.values() for c in cs)
    total = sum(len(cs) for cs in answers.values())
    console.print(
        f"{cut} of {total} answers were cut at the {max_new_tokens}-token limit "
        "(finish_reason=length): the lesson's incomplete answers. "
        "Rerun with --max-new-tokens 512 to see them end."
    )
    return answers


TUNE_MODEL = "smollm2-135m-instruct"


def run_tuning(console: Console, *, backend: str | None = None) -> dict:
    """Part 2: fine-tune the chat model on `new_facts`, then ask it *differently worded* questions.

    The held-out questions were never trained on; the base model answers them too, side by side.
    """
    from tunelab.datasets import load_dataset

    console.print(
        Panel(
            f"The chat model does not know what happened after its training data ends. Fine-tune "
            f"{TUNE_MODEL} with LoRA on the [bold]new_facts[/] data set (post-cut-off facts, several "
            "questions each), then ask the held-out questions: the same facts, worded differently.",
            title="tunelab demo: why fine-tune — part 2, fine-tune",
        )
    )
    runner = BasicModelRunner(TUNE_MODEL, backend=backend, max_new_tokens=64)
    dog = "Tell me how to train my dog to sit"
    dog_before = runner.generate(dog, max_new_tokens=96)
    report = runner.load_data(load_dataset("new_facts", "train"))
    console.print(f"training data: {report.summary()}")
    result = runner.train()  # defaults: LoRA, measured in docs/finetuning.md
    console.print(
        f"tuned [bold]{result.model_id}[/] in {result.seconds:.0f} s ({result.steps} steps, "
        f"{result.tokens_per_s:.0f} tokens/s); loss curve: {result.path / 'loss.png'}",
        highlight=False,
    )
    out = runner.evaluate(data=load_dataset("new_facts", "heldout"))
    tuned, base = out["models"]["tuned"], out["models"]["base"]
    table = Table(title="held-out questions (never trained on)", show_lines=True, expand=True)
    for column in ("question", "expected", "base", "tuned"):
        table.add_column(column, ratio=2 if column in ("base", "tuned") else 1)
    for row in out["eval_results"]:
        cells = []
        for j, name in ((1, base), (0, tuned)):
            mark = "[green]✓[/] " if row["scores"][name]["contained"] else "[red]✗[/] "
            cells.append(mark + _escape(row["outputs"][j]["output"].strip()))
        table.add_row(_escape(row["input"]), _escape(row["expected"]), *cells)
    console.print(table)
    dog_after = runner.generate(dog, max_new_tokens=96)
    console.print(
        Panel(
            f"[bold]before[/]: {_escape(dog_before.text.strip())}\n\n"
            f"[bold]after[/]: {_escape(dog_after.text.strip())}",
            title=f"general ability kept? {dog!r}",
        )
    )
    console.print(
        f"held-out accuracy (answer contains the fact): base {out['totals'][base]['contained']:.0%} -> "
        f"tuned {out['totals'][tuned]['contained']:.0%} on {out['n']} questions",
        highlight=False,
    )
    return {"result": result, "evaluation": out, "dog_before": dog_before, "dog_after": dog_after}


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _hosted_answers(console: Console, max_new_tokens: int) -> list[Completion] | None:
    try:
        hosted = BasicModelRunner("chat-gpt")
    except ModelNotFoundError as exc:
        console.print(Panel(str(exc), title="chat-gpt (hosted) is not configured: skipped", style="dim"))
        return None
    return hosted.generate(LESSON_PROMPTS, max_new_tokens=max_new_tokens)
