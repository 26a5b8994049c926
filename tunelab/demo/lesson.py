"""The lesson "Why fine-tune", run for real on the two embedded models.

A base model (gemma-3-270m, standing in for Llama-2-7b-hf) and a chat model (smollm2-135m-instruct,
standing in for Llama-2-7b-chat-hf) get the lesson's four prompts, raw, with `[INST]` tags, and through
the chat model's own template; `tunelab.compare` diagnoses every answer and writes the findings, in the
terminal and as an HTML report. A hosted model ("chat-gpt") joins when one is configured. Part 2 fine-tunes
the chat model on facts it cannot know and compares it with itself before.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.panel import Panel

from tunelab.errors import ModelNotFoundError
from tunelab.evaluation.compare.lesson_prompts import LESSON_EXPECTED, LESSON_PROMPTS
from tunelab.evaluation.compare.report import answers_view, print_report
from tunelab.evaluation.compare.run import compare
from tunelab.evaluation.compare.schema import Comparison
from tunelab.runner import BasicModelRunner

BASE_MODEL, CHAT_MODEL, HOSTED_MODEL = "gemma-3-270m", "smollm2-135m-instruct", "chat-gpt"
# The base model's own template is raw; the chat model's is its ChatML ("auto").
LESSON_TEMPLATES = {
    BASE_MODEL: ["raw", "llama2"],
    CHAT_MODEL: ["raw", "llama2", "auto"],
    HOSTED_MODEL: ["auto"],
}


def run_lesson(
    console: Console, *, max_new_tokens: int = 128, backend: str | None = None, out_dir: Path | None = None
) -> Comparison:
    """The lesson's prompts on the base and the chat model, raw and templated (and a hosted model when
    one is configured), compared and diagnosed; prints the report and writes it as HTML and JSON."""
    console.print(
        Panel(
            "Why fine-tune? The same four prompts go to a [bold]base[/] model and a [bold]chat-tuned[/] "
            "model, raw and templated.\nWatch the base model continue and repeat the question, the chat "
            "model answer only through its template, answers cut by the token limit, and a model that "
            "does not know who runs Twitter. Every answer is diagnosed; the findings come last.",
            title="tunelab demo: the lesson",
        )
    )
    models = [BASE_MODEL, CHAT_MODEL] + ([HOSTED_MODEL] if _hosted_configured(console) else [])
    result = compare(
        models,
        LESSON_PROMPTS,
        templates=LESSON_TEMPLATES,
        expected=LESSON_EXPECTED,
        backend=backend,
        progress=True,
        max_new_tokens=max_new_tokens,
    )
    print_report(result, console)
    _save(console, result, out_dir, "lesson")
    return result


def _save(console: Console, result: Comparison, out_dir: Path | None, stem: str) -> None:
    out = Path(out_dir or DEFAULT_OUT_DIR)
    html, data = result.save_html(out / f"{stem}.html"), result.save_json(out / f"{stem}.json")
    console.print(f"report: [bold]{html.resolve()}[/] (open it in a browser); data: {data}", highlight=False)


DEFAULT_OUT_DIR = Path("tunelab-demo")


def _hosted_configured(console: Console) -> bool:
    from tunelab.config import load_settings
    from tunelab.models.resolve import resolve

    try:
        resolve(HOSTED_MODEL, load_settings())
    except ModelNotFoundError as exc:
        console.print(
            Panel(str(exc), title=f"{HOSTED_MODEL} (hosted) is not configured: skipped", style="dim")
        )
        return False
    return True


TUNE_MODEL = CHAT_MODEL
DOG = LESSON_PROMPTS[0]


def run_tuning(console: Console, *, backend: str | None = None, out_dir: Path | None = None) -> dict:
    """Part 2: fine-tune the chat model on `new_facts`, then compare it with the model it came from on
    *differently worded* questions (never trained on) and on the lesson's dog prompt (ability kept?).
    """
    from tunelab.training.datasets import load_dataset

    console.print(
        Panel(
            f"The chat model does not know what happened after its training data ends. Fine-tune "
            f"{TUNE_MODEL} with LoRA on the [bold]new_facts[/] data set (post-cut-off facts, several "
            "questions each), then ask the held-out questions: the same facts, worded differently.",
            title="tunelab demo: why fine-tune — part 2, fine-tune",
        )
    )
    runner = BasicModelRunner(TUNE_MODEL, backend=backend)
    report = runner.load_data(load_dataset("new_facts", "train"))
    console.print(f"training data: {report.summary()}")
    # defaults (docs/finetuning.md): LoRA on the questions, their rewordings and reverse questions, with
    # the model's own answers to general prompts mixed in; the step with the best held-out answers kept.
    # No time guard: this data's size is known (about 200 steps), and its figure must not depend on how
    # busy the machine is (a guard fitted on a loaded machine cut a run to 34 steps: 7% held-out)
    result = runner.train(time_budget_s=None)
    console.print(
        f"tuned [bold]{result.model_id}[/] in {result.seconds:.0f} s ({result.steps_text}, "
        f"{result.tokens_per_s:.0f} tokens/s); loss curve: {result.path / 'loss.png'}; "
        f"knowledge report: {result.path / 'knowledge.html'}",
        highlight=False,
    )
    heldout = load_dataset("new_facts", "heldout")
    after = compare(
        [TUNE_MODEL, result.model_id],
        [row["input"] for row in heldout] + [DOG],
        expected=[row["answer"] for row in heldout] + [None],
        backend=backend,
        progress=True,
        max_new_tokens=64,
        fit_limit=0,  # cut answers are expected here: only the facts matter
    )
    console.print(answers_view(after, title="held-out questions (never trained on), then the dog prompt"))
    base, tuned = after.summary[TUNE_MODEL], after.summary[result.model_id]
    console.print(
        Panel("\n".join(f"• {_escape(f)}" for f in after.findings), title="findings: before / after"),
    )
    console.print(
        f"held-out accuracy (answer contains the fact): base {base.accuracy:.0%} -> "
        f"tuned {tuned.accuracy:.0%} "
        f"on {base.n_expected} questions",
        highlight=False,
    )
    _save(console, after, out_dir, "fine-tune")
    return {"result": result, "comparison": after}


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)
