"""A Comparison shown to a person: rich tables in the terminal, or one self-contained HTML page.

The HTML page needs no network: styles are inline, the charts are SVG drawn by matplotlib and written
into the page, and the full JSON record rides along in a `<script type="application/json">` block.
"""

from __future__ import annotations

import io
from importlib.resources import files
from typing import TYPE_CHECKING

from jinja2 import Environment, select_autoescape
from rich.console import Console, Group
from rich.markup import escape
from rich.panel import Panel
from rich.table import Table

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


def _flag_markup(cell: Cell) -> str:
    if not cell.flags:
        return "[green]clean[/]"
    return "\n".join(f"[{FLAG_COLOURS.get(f, 'white')}]{f}[/]" for f in cell.flags)


def _finish(cell: Cell) -> str:
    if cell.finish_reason == "error":
        return "[red]error[/]"
    text = f"{cell.finish_reason}\n[dim]{cell.completion_tokens} tok[/]"
    if cell.finish_reason == "length":
        if cell.fits_in_tokens:
            text += f"\n[dim]fits in {cell.fits_in_tokens}[/]"
        elif cell.fit_checked_to:
            text += f"\n[dim]not ended by {cell.fit_checked_to}[/]"
    return text


def terminal_report(comparison: Comparison, *, width: int | None = None) -> Group:
    """One table per prompt (a row per model and template), the summary, and the findings."""
    parts = []
    runs = comparison.runs()
    for index, prompt in enumerate(comparison.prompts):
        title = f"prompt {index + 1}: {escape(prompt.splitlines()[0][:80])}"
        if comparison.expected and comparison.expected[index] is not None:
            title += f"  [dim](expected: {escape(comparison.expected[index])})[/]"
        table = Table(title=title, show_lines=True, expand=True)
        table.add_column("model (template)", no_wrap=True, min_width=22)
        table.add_column("answer", ratio=4)
        table.add_column("flags", no_wrap=True)
        table.add_column("finish", no_wrap=True)
        for model, spec in runs:
            cell = comparison.cell(model, spec, index)
            if cell.error:
                answer = f"[red]{escape(cell.error)}[/]"
            else:
                answer = escape(cell.text.strip()) if cell.text.strip() else "[dim](empty answer)[/]"
            resolved = (
                f"\n[dim]{escape(cell.template_name)} · {cell.backend}[/]" if cell.template_name else ""
            )
            table.add_row(
                f"{escape(model)}\n({escape(spec)}){resolved}", answer, _flag_markup(cell), _finish(cell)
            )
        parts.append(table)
    parts.append(summary_table(comparison))
    if comparison.findings:
        parts.append(Panel("\n".join(f"• {escape(f)}" for f in comparison.findings), title="findings"))
    for note in comparison.notes:
        parts.append(f"[dim]note: {escape(note)}[/]")
    return Group(*parts)


def answers_table(comparison: Comparison, *, title: str = "answers") -> Table:
    """Compact: one row per prompt, one column per (model, template); ✓/✗ where an answer is expected."""
    runs = comparison.runs()
    table = Table(title=title, show_lines=True, expand=True)
    table.add_column("prompt", ratio=2)
    for model, spec in runs:
        table.add_column(f"{model} ({spec})", ratio=3)
    for index, prompt in enumerate(comparison.prompts):
        expected = comparison.expected[index] if comparison.expected else None
        row = [escape(prompt) + (f"\n[dim]expected: {escape(expected)}[/]" if expected else "")]
        for model, spec in runs:
            cell = comparison.cell(model, spec, index)
            if cell.error:
                row.append(f"[red]{escape(cell.error)}[/]")
                continue
            mark = "" if expected is None else ("[red]✗[/] " if "incorrect" in cell.flags else "[green]✓[/] ")
            flags = [f for f in cell.flags if f != "incorrect"]
            row.append(mark + escape(cell.text.strip()) + (f"\n[dim]{', '.join(flags)}[/]" if flags else ""))
        table.add_row(*row)
    return table


def summary_table(comparison: Comparison) -> Table:
    table = Table(title="summary per model and template", expand=True)
    for column in (
        "model (template)",
        "clean",
        "accuracy",
        "echo",
        "ramble",
        "truncated",
        "self_dialogue",
        "template_mismatch",
        "tokens/s",
    ):
        table.add_column(column, justify="left" if column.startswith("model") else "right")

    def row(label: str, stats: RunStats, bold: bool = False) -> None:
        values = [
            f"{stats.clean}/{stats.n}",
            "–" if stats.accuracy is None else f"{stats.accuracy:.0%}",
            *(
                f"{stats.flag_rates.get(f, 0):.0%}"
                for f in ("echo", "ramble", "truncated", "self_dialogue", "template_mismatch")
            ),
            f"{stats.tokens_per_s:.0f}" if stats.tokens_per_s else "–",
        ]
        table.add_row(f"[bold]{escape(label)}[/]" if bold else escape(label), *values)

    for model, summary in comparison.summary.items():
        if len(summary.templates) > 1:
            row(f"{model} (all)", summary, bold=True)
        for spec, stats in summary.templates.items():
            row(f"{model} ({spec})", stats)
    return table


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
