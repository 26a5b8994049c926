"""A Comparison shown to a person: in the terminal (tunelab.display: tables, or stacked where narrow), or
one self-contained HTML page.

The HTML page needs no network: styles are inline, the charts are SVG drawn by matplotlib and written
into the page, and the full JSON record rides along in a `<script type="application/json">` block.
"""

from __future__ import annotations

import io
from importlib.resources import files
from typing import TYPE_CHECKING

from jinja2 import Environment, select_autoescape
from rich.console import Console, Group, RenderableType
from rich.markup import escape
from rich.panel import Panel
from rich.table import Column

from tunelab.display import Answer, Asked, answers_by_prompt, answers_grid, mark, records

if TYPE_CHECKING:  # the schema's save_html() imports this module
    from tunelab.evaluation.compare.schema import Cell, Comparison, RunStats


FLAG_COLOURS = {
    "echo": "#d35400",
    "ramble": "#8e44ad",
    "truncated": "#b7950b",
    "self_dialogue": "#c0392b",
    "empty": "#616a6b",
    "template_mismatch": "#2471a3",
    "incorrect": "#922b21",
    "error": "#000000",
}
CHART_RATES = ("accuracy", "clean", "echo", "ramble", "truncated", "self_dialogue", "template_mismatch")


def _flags(cell: Cell) -> list[str]:
    if not cell.flags:
        return ["[green]clean[/]"]
    return [f"[{FLAG_COLOURS.get(f, 'white')}]{f}[/]" for f in cell.flags]


def _finish(cell: Cell) -> list[str]:
    if cell.finish_reason == "error":
        return ["[red]error[/]"]
    lines = [cell.finish_reason, f"[dim]{cell.completion_tokens} tok[/]"]
    if cell.finish_reason == "length":
        if cell.fits_in_tokens:
            lines.append(f"[dim]fits in {cell.fits_in_tokens}[/]")
        elif cell.fit_checked_to:
            lines.append(f"[dim]not ended by {cell.fit_checked_to}[/]")
    return lines


def _answer(cell: Cell, *, marked: bool = False) -> Answer:
    """A cell as the terminal shows it; `marked` (an answer was expected): ✓ or ✗ before it."""
    if cell.error:
        text = f"[red]{escape(cell.error)}[/]"
    else:
        text = escape(cell.text.strip()) if cell.text.strip() else "[dim](empty answer)[/]"
        if marked:
            text = mark("incorrect" not in cell.flags) + text
    resolved = f"\n[dim]{escape(cell.template_name)}\n{cell.backend}[/]" if cell.template_name else ""
    who = f"{escape(cell.model)}\n({escape(cell.template)}){resolved}"
    return Answer(who, text, _flags(cell), _finish(cell))


def terminal_report(comparison: Comparison) -> Group:
    """A view per prompt (a row or a panel per model and template), the summary, and the findings."""
    parts: list[RenderableType] = []
    runs = comparison.runs()
    for index, prompt in enumerate(comparison.prompts):
        title = f"prompt {index + 1}: {escape(prompt.splitlines()[0][:80])}"
        if comparison.expected and comparison.expected[index] is not None:
            title += f"  [dim](expected: {escape(comparison.expected[index])})[/]"
        cells = [comparison.cell(model, spec, index) for model, spec in runs]
        parts.append(answers_by_prompt(Asked(title, [_answer(cell) for cell in cells])))
    parts.append(summary_view(comparison))
    if comparison.findings:
        parts.append(Panel("\n".join(f"• {escape(f)}" for f in comparison.findings), title="findings"))
    for note in comparison.notes:
        parts.append(f"[dim]note: {escape(note)}[/]")
    return Group(*parts)


def answers_view(comparison: Comparison, *, title: str = "answers") -> RenderableType:
    """Compact: a row per prompt, a column per (model, template); ✓/✗ where an answer is expected."""
    runs = comparison.runs()
    asked = []
    for index, prompt in enumerate(comparison.prompts):
        expected = comparison.expected[index] if comparison.expected else None
        heading = escape(prompt) + (f"\n[dim]expected: {escape(expected)}[/]" if expected else "")
        cells = [comparison.cell(model, spec, index) for model, spec in runs]
        asked.append(Asked(heading, [_answer(cell, marked=expected is not None) for cell in cells]))
    return answers_grid(title, asked)


SUMMARY_RATES = ("echo", "ramble", "truncated", "self_dialogue", "template_mismatch")


def summary_view(comparison: Comparison) -> RenderableType:
    """A row per model and template (and per model, over its templates): clean, accuracy, flags, speed."""
    rows = []

    def row(label: str, stats: RunStats, bold: bool = False) -> None:
        rows.append(
            [
                f"[bold]{escape(label)}[/]" if bold else escape(label),
                f"{stats.clean}/{stats.n}",
                "–" if stats.accuracy is None else f"{stats.accuracy:.0%}",
                *(f"{stats.flag_rates.get(f, 0):.0%}" for f in SUMMARY_RATES),
                f"{stats.tokens_per_s:.0f}" if stats.tokens_per_s else "–",
            ]
        )

    for model, summary in comparison.summary.items():
        if len(summary.templates) > 1:
            row(f"{model} (all)", summary, bold=True)
        for spec, stats in summary.templates.items():
            row(f"{model} ({spec})", stats)
    numbers = ("clean", "accuracy", *SUMMARY_RATES, "tokens/s")
    columns = [Column("model (template)"), *(Column(c, justify="right", no_wrap=True) for c in numbers)]
    return records("summary per model and template", columns, rows)


def print_report(comparison: Comparison, console: Console | None = None) -> None:
    (console or Console()).print(terminal_report(comparison))


# -- HTML ------------------------------------------------------------------------------------------


def _rate(stats: RunStats, name: str) -> float | None:
    if name == "accuracy":
        return stats.accuracy
    if name == "clean":
        return stats.clean / stats.n if stats.n else 0.0
    return stats.flag_rates.get(name, 0.0)


def chart_svg(model: str, stats: RunStats, max_tokens_per_s: float) -> str:
    """Bars of the rates (0-100 %) and of tokens/s on a scale shared by every model in the report."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [n for n in CHART_RATES if _rate(stats, n) is not None]
    values = [100 * _rate(stats, n) for n in names]
    colours = ["#1e8449" if n in ("accuracy", "clean") else FLAG_COLOURS[n] for n in names]
    with matplotlib.rc_context({"svg.fonttype": "none", "font.size": 9}):
        fig, (rates, speed) = plt.subplots(
            1, 2, figsize=(6.4, 2.6), gridspec_kw={"width_ratios": [5, 1]}, constrained_layout=True
        )
        bars = rates.barh(names[::-1], values[::-1], color=colours[::-1])
        rates.bar_label(bars, labels=[f"{v:.0f}%" for v in values[::-1]], padding=2, fontsize=8)
        rates.set_xlim(0, 115)
        rates.set_xlabel("% of answers")
        rates.set_title(model, loc="left", fontsize=10)
        speed.bar(["tokens/s"], [stats.tokens_per_s], color="#34495e")
        speed.set_ylim(0, max(max_tokens_per_s, 1) * 1.15)
        speed.set_title(f"{stats.tokens_per_s:.0f} tok/s", fontsize=9)
        for axis in (rates, speed):
            axis.spines[["top", "right"]].set_visible(False)
        buffer = io.StringIO()
        fig.savefig(buffer, format="svg")
        plt.close(fig)
    svg = buffer.getvalue()
    return svg[svg.index("<svg") :]  # drop the XML prolog and DOCTYPE: the SVG sits inside HTML


def render_html(comparison: Comparison) -> str:
    environment = Environment(
        autoescape=select_autoescape(default=True), trim_blocks=True, lstrip_blocks=True
    )
    template = environment.from_string(
        files(__package__).joinpath("report.html.j2").read_text(encoding="utf-8")
    )
    fastest = max((s.tokens_per_s for s in comparison.summary.values()), default=0.0)
    charts = {
        model: chart_svg(model, stats, fastest)
        for model, stats in comparison.summary.items()
        if stats.errors < stats.n  # a model that never answered has nothing to draw
    }
    runs = comparison.runs()
    rows = [
        {
            "index": i,
            "prompt": prompt,
            "expected": comparison.expected[i] if comparison.expected else None,
            "cells": [comparison.cell(model, spec, i) for model, spec in runs],
        }
        for i, prompt in enumerate(comparison.prompts)
    ]
    # "</" inside the embedded JSON would end the script block early
    record = comparison.to_json().replace("</", "<\\/")
    return template.render(
        c=comparison, rows=rows, runs=runs, charts=charts, colours=FLAG_COLOURS, record=record
    )
