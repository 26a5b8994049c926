"""What a person reads in a terminal stays readable at 80 columns and in a log (a file or a pipe gets 80):
answers in lines of a useful width, never a word a line, and nothing cut that the user needs (an answer,
its finish reason, every flag, a name or an id to copy). Synthetic results: no model runs here."""

import io
import re
from datetime import datetime
from types import SimpleNamespace

import pytest
from rich.console import Console

from tunelab.cli.jobs import jobs_view
from tunelab.cli.keys import keys_view
from tunelab.cli.main import eval_view, models_view
from tunelab.evaluation.compare.findings import findings, summarize
from tunelab.evaluation.compare.report import answers_view, summary_view, terminal_report
from tunelab.evaluation.compare.schema import Cell, Comparison
from tunelab.evaluation.knowledge import FactResult, KnowledgeReport
from tunelab.models.catalog import ModelRow

USEFUL = 40  # a wrapped answer line narrower than this (but for its last) is a squeezed column
DOG = "Tell me how to train my dog to sit"
TWITTER = "Who is the boss of Twitter?"
ADVICE = (
    "Hold a treat above your dog's nose and move it slowly back over its head. As the nose follows the "
    "treat, the dog's bottom goes down; the moment it sits, say 'sit', give the treat and praise it. "
    "Repeat a few times a day, in short sessions, until it sits on the word alone."
)
LOOP = "I want to make sure she's comfortable and happy in her new home. " * 4
TURNS = "Jack Dorsey founded it in 2006. ### Human: And who runs it now? ### Assistant: Elon Musk owns it"
RESOLVED = {"raw": "raw", "llama2": "llama2", "auto": "chatml (model's own)"}


def _cell(model, template, index, text, finish="stop", flags=(), **extra) -> Cell:
    return Cell(model=model, template=template, template_name=RESOLVED[template], prompt_index=index,
                prompt=(DOG, TWITTER)[index], text=text, finish_reason=finish, flags=list(flags),
                completion_tokens=len(text) // 4, max_new_tokens=128, latency_s=1.0, backend="llama_cpp",
                **extra)  # fmt: skip


def lesson() -> Comparison:
    """The lesson's shape: a base model raw and templated, a chat model three ways, a model that failed."""
    base, chat = "gemma-3-270m", "smollm2-135m-instruct"
    cells = [
        _cell(base, "raw", 0, LOOP, "length", ["echo", "ramble", "truncated"], fit_checked_to=512),
        _cell(base, "raw", 1, TURNS, "stop", ["self_dialogue", "incorrect"]),
        _cell(base, "llama2", 0, "", "stop", ["empty", "template_mismatch"]),
        _cell(base, "llama2", 1, "Elon Musk owns Twitter, now called X.", "stop"),
        _cell(chat, "auto", 0, ADVICE, "stop"),
        _cell(chat, "auto", 1, "Elon Musk is the owner of Twitter, which he bought in 2022.", "stop"),
        _cell(chat, "raw", 0, ADVICE, "length", ["truncated"], fits_in_tokens=190, fit_checked_to=512),
        _cell(chat, "raw", 1, "I don't know who the boss of Twitter is.", "stop", ["incorrect"]),
    ]
    cells += [
        Cell(model="no-such-model", template="auto", prompt_index=i, prompt=p, finish_reason="error",
             error="no model named 'no-such-model'", flags=["error"])
        for i, p in enumerate((DOG, TWITTER))
    ]  # fmt: skip
    comparison = Comparison(
        models=[base, chat, "no-such-model"],
        templates={base: ["raw", "llama2"], chat: ["auto", "raw"], "no-such-model": ["auto"]},
        prompts=[DOG, TWITTER],
        expected=[None, "Elon Musk"],
        cells=cells,
    )
    comparison.summary = summarize(cells)
    comparison.findings = findings(comparison)
    return comparison


@pytest.fixture(params=["80 columns", "120 columns", "a log"])
def console(request, monkeypatch) -> Console:
    """A terminal 80 or 120 wide, and a file: what `tunelab demo > log` or `| tee` writes to."""
    monkeypatch.delenv("COLUMNS", raising=False)
    file = io.StringIO()
    if request.param == "a log":
        console = Console(file=file, force_terminal=False)
        assert console.width == 80  # rich's width for a file
        return console
    return Console(file=file, width=int(request.param.split()[0]), force_terminal=True, color_system=None)


def render(console: Console, view) -> str:
    console.print(view)
    return console.file.getvalue()


def pieces(output: str) -> list[str]:
    """Every line cut at the borders of tables and panels, in order."""
    return [p.strip() for line in output.splitlines() for p in re.split("[│┃]", line) if p.strip()]


def spelled(output: str, text: str) -> list[str]:
    """The pieces of `output`, in order, that spell `text` (wrapped at spaces or folded); fails where
    any of it is missing (cut, or never shown)."""
    rest, lines = " ".join(text.split()), []
    for piece in pieces(output):
        bare = piece if lines else re.sub("^[✓✗] ", "", piece)
        if rest and rest.startswith(bare):
            lines.append(piece)
            rest = rest[len(bare) :].lstrip()
    assert not rest, f"cut or not shown; left over: {rest[:60]!r}\n{output}"
    return lines


def assert_readable(output: str, answer: str) -> None:
    """`answer` is all there, in lines of at least USEFUL characters (but for its last line)."""
    lines = spelled(output, answer)
    assert all(len(line) >= USEFUL for line in lines[:-1]), f"squeezed: {lines}\n{output}"


def test_compare_shows_every_answer_whole_with_its_flags_and_finish(console):
    comparison = lesson()
    output = render(console, terminal_report(comparison))
    answers_part = output.split("summary per model and template")[0]
    for cell in comparison.cells:
        assert_readable(answers_part, cell.error or cell.text)
    for flag in {f for cell in comparison.cells for f in cell.flags}:
        assert flag in answers_part
    for needed in ("length", "stop", "not ended by 512", "fits in 190", "(empty answer)"):
        assert needed in answers_part
    assert "…" not in output and "error · error" not in output  # a failed run says so once


def test_the_table_is_kept_where_the_answers_get_their_width():
    wide = Console(file=io.StringIO(), width=120, color_system=None)
    assert "┃ answer" in render(wide, terminal_report(lesson()))
    narrow = Console(file=io.StringIO(), width=80, color_system=None)
    assert "┃ answer" not in render(narrow, terminal_report(lesson()))  # stacked: a panel per answer


def test_lesson_answers_grid_marks_each_answer_and_keeps_its_notes(console):
    comparison = lesson()
    output = render(console, answers_view(comparison, title="held-out questions"))
    for cell in comparison.cells:
        assert_readable(output, cell.error or cell.text)
    assert "✓" in output and "✗" in output and "expected: Elon Musk" in output
    for flag in {f for cell in comparison.cells for f in cell.flags}:
        assert flag in output
    assert "…" not in output


def test_summary_keeps_every_name_and_number(console):
    comparison = lesson()
    output = render(console, summary_view(comparison))
    flat = " ".join(pieces(output))
    for model, summary in comparison.summary.items():
        for spec, stats in summary.templates.items():
            assert f"{model} ({spec})" in output  # whole, on one line
            assert f"{stats.clean}/{stats.n}" in flat
    for header in ("accuracy", "self_dialogue", "template_mismatch", "tokens/s"):
        assert header in output
    assert "…" not in output


def test_eval_shows_both_answers_marked_with_how_they_ended(console):
    tuned, base = "smollm2-135m-instruct-tuned-26abbd3b", "smollm2-135m-instruct"
    answers = [
        "The Acme head office is on Mill Lane, next to the old station, where it has been since 1987.",
        "I'm sorry, I don't have any information about Acme's head office. It could be anywhere, and I",
    ]
    out = {
        "models": {"tuned": tuned, "base": base},
        "eval_results": [
            {
                "input": "Which street is the Acme head office on?",
                "expected": "Mill Lane",
                "outputs": [
                    {"model_name": tuned, "output": answers[0], "finish_reason": "stop"},
                    {"model_name": base, "output": answers[1], "finish_reason": "length"},
                ],
                "scores": {tuned: {"contained": 1.0}, base: {"contained": 0.0}},
            }
        ],
    }
    output = render(console, eval_view(out))
    for answer in answers:
        assert_readable(output, answer)
    assert "✓" in output and "✗" in output and "stop" in output and "length" in output
    assert "expected: Mill Lane" in output and tuned in output and base in output


def test_lists_keep_names_and_ids_whole_to_copy(console):
    path = "/root/.local/share/tunelab/registry/smollm2-135m-instruct-tuned-26abbd3b"
    models = [
        ModelRow("gemma-3-270m", "base", "embedded", "Gemma 3 270M base (not instruction-tuned)", "ready"),
        ModelRow("smollm2-135m-instruct-tuned-26abbd3b", "tuned", "registry", path, "lora on smollm2"),
    ]
    output = render(console, models_view(models))
    assert "smollm2-135m-instruct-tuned-26abbd3b" in output.replace(path, "")  # the name, on one line
    if path not in output:  # a path may fold in a table's column, but all of it is there
        spelled(output, path)
    job = SimpleNamespace(id="ftjob-0123456789abcdef01234567", status="succeeded", created_at=1760000000,
                          model="smollm2-135m-instruct",
                          fine_tuned_model="smollm2-135m-instruct-tuned-26abbd3b")  # fmt: skip
    output = render(console, jobs_view([job]))
    assert job.id in output and job.fine_tuned_model in output and "succeeded" in output
    key = SimpleNamespace(id="key_0123456789abcdef", name="alice's laptop", owner="alice", prefix="tl-ab12",
                          created_at=datetime(2026, 1, 2), active=False,
                          revoked_at=datetime(2026, 2, 3))  # fmt: skip
    output = render(console, keys_view([key]))
    assert key.id in output and "revoked 2026-02-03 00:00" in " ".join(pieces(output))
    assert "…" not in output.replace("tl-ab12…", "")


def test_knowledge_summary_wraps_at_the_width_with_nothing_lost(console):
    reason = "learned in the trained wordings only: more rewordings (augment) would help"
    report = KnowledgeReport(
        [
            FactResult("Acme was founded in 1987 by Jane Doe", ["1987"], True, False, None, reason),
            FactResult("Mill Lane", ["Mill Lane"], True, True, True),
        ],
        probes_before=0.8,
        probes_after=0.7,
    )
    console.print(report.summary(), highlight=False, markup=False)  # as the recipe prints it
    output = console.file.getvalue()
    flat = " ".join(output.split())
    for needed in ("2 facts", "held-out wording 50%", "80% before, 70% after", "Acme was founded", reason):
        assert needed in flat
    assert max(len(line) for line in output.splitlines()) <= console.width
