"""How every table tunelab prints fits the width it is printed at.

A table squeezed below the width it needs wraps an answer at a word a line and cuts what does not fit,
and rich prints 80 columns to a file or a pipe (a CI log, `| tee`), narrower than most of tunelab's
tables want. So each view here is made when rich renders it, for the width it is given (the console's,
or the panel's around it): the table where every answer column gets `ANSWER_MIN` characters and every
other column what it needs, else the same content stacked at the full width (a panel per answer, a block
per record), with nothing cut. Three kinds of view, one helper each:

- `answers_by_prompt`: one prompt, a row per model (compare's view),
- `answers_grid`: a row per prompt, a column per model (the lesson's part 2, `tunelab eval`),
- `records`: a list of things (models, jobs, keys, a summary's rows).

    from rich.console import Console
    from tunelab.display import Answer, Asked, answers_by_prompt

    view = answers_by_prompt(Asked("prompt 1: Hi", [Answer("gemma (raw)", "Hi there.", finish=["stop"])]))
    Console(width=80).print(view)  # stacked: "prompt 1: Hi", then a panel titled "gemma (raw)"
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

from rich.cells import cell_len
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.padding import Padding
from rich.panel import Panel
from rich.table import Column, Table
from rich.text import Text

# the narrowest answer column worth reading: below it, answers are stacked. Lines wrap at the end of a
# word, so a 50-column answer has lines of 40 characters and more
ANSWER_MIN = 50
PROMPT_MAX = 30  # the prompt column of a grid wraps at this width, to leave the rest to the answers
WRAP_MIN = 24  # a record's column that may wrap (a path, a description) is not made narrower than this


@dataclass
class Answer:
    """One answer as shown, in rich markup: who gave it, the answer, its flags and how it ended."""

    who: str  # a line per part: the model, "(the template)", what it resolved to, the backend
    text: str
    flags: list[str] = field(default_factory=list)
    finish: list[str] = field(default_factory=list)  # the finish reason first, then its details

    def notes(self) -> str:
        """The flags and the finish on one line, for a panel or under an answer in a grid ("error" once)."""
        said = {Text.from_markup(f).plain for f in self.flags}
        finish = [f for f in self.finish if Text.from_markup(f).plain not in said]
        return " · ".join(([", ".join(self.flags)] if self.flags else []) + finish)


@dataclass
class Asked:
    """A prompt as shown (its heading, in markup: the prompt, what was expected) and the answers to it."""

    heading: str
    answers: list[Answer]


def mark(correct: bool | None) -> str:
    """✓ or ✗ before an answer when an answer was expected; nothing when none was."""
    return "" if correct is None else ("[green]✓[/] " if correct else "[red]✗[/] ")


class _Fit:
    """`wide` where rich gives it `needs` columns, else `narrow` made for the width given."""

    def __init__(self, needs: int, wide: RenderableType, narrow: Callable[[int], RenderableType]):
        self.needs, self.wide, self.narrow = needs, wide, narrow

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield self.wide if options.max_width >= self.needs else self.narrow(options.max_width)


def _longest(*cells: str) -> int:
    """The widest line of these markup strings, in terminal cells."""
    return max((cell_len(line) for c in cells for line in Text.from_markup(c).plain.splitlines()), default=0)


def _borders(columns: int) -> int:
    """What a table with a box adds to its columns' content: a line between columns, a space each side."""
    return 3 * columns + 1


def answers_by_prompt(asked: Asked) -> _Fit:
    """One prompt's answers, a row per model and template: who | answer | flags | finish."""
    table = Table(title=asked.heading, show_lines=True, expand=True)
    table.add_column("model (template)", no_wrap=True)
    table.add_column("answer", ratio=1, overflow="fold")  # every column the others leave; a long word folds
    table.add_column("flags", no_wrap=True)
    table.add_column("finish", no_wrap=True)
    for answer in asked.answers:
        table.add_row(answer.who, answer.text, "\n".join(answer.flags), "\n".join(answer.finish))
    fixed = (
        _longest("model (template)", *(a.who for a in asked.answers))
        + _longest("flags", *(f for a in asked.answers for f in a.flags))
        + _longest("finish", *(f for a in asked.answers for f in a.finish))
    )
    return _Fit(fixed + ANSWER_MIN + _borders(4), table, lambda width: _stacked(None, [asked], width))


def answers_grid(title: str, asked: list[Asked]) -> _Fit:
    """Prompts down, models across: a row per prompt, a column per model (the first prompt's order);
    each cell the answer with its flags and finish under it."""
    whos = [a.who for a in asked[0].answers] if asked else []
    table = Table(title=title, show_lines=True, expand=True)
    table.add_column("prompt", max_width=PROMPT_MAX, overflow="fold")
    for who in whos:
        table.add_column(who, overflow="fold")
    for one in asked:
        table.add_row(one.heading, *(f"{a.text}\n[dim]{a.notes()}[/]" for a in one.answers))
    prompt = min(_longest("prompt", *(a.heading for a in asked)), PROMPT_MAX)
    needs = prompt + len(whos) * ANSWER_MIN + _borders(1 + len(whos))
    return _Fit(needs, table, lambda width: _stacked(title, asked, width))


def _stacked(title: str | None, asked: list[Asked], width: int) -> Group:
    """Each prompt's heading, then a panel per answer: at the full width, nothing squeezed or cut."""
    parts: list[RenderableType] = [Text.from_markup(title, style="bold")] if title else []
    for one in asked:
        parts += [Text(), Text.from_markup(one.heading, style="bold")]
        parts.extend(_panel(answer, width) for answer in one.answers)
    return Group(*parts)


def _panel(answer: Answer, width: int) -> Panel:
    who = re.sub(r"\n(?=\()", " ", answer.who).replace("\n", " · ")  # one line: "model (template) · ..."
    body = [Text.from_markup(answer.notes()), Text.from_markup(answer.text)]
    if _longest(who) <= width - 6:  # a panel's title is cut where it does not fit: then it goes inside
        return Panel(Group(*body), title=who, title_align="left")
    return Panel(Group(Text.from_markup(who, style="bold"), *body))


def records(
    title: str | None,
    columns: Sequence[str | Column],
    rows: Sequence[Sequence[str]],
    *,
    styles: Sequence[str | None] | None = None,
) -> _Fit:
    """A list of things in rich markup, a row each: a table where every column gets its width (one that
    is not `no_wrap`: up to `WRAP_MIN`), else a block per row: its first field in bold, then the others
    by name, wrapped."""
    # copies (a Table keeps its rows in its Column objects); a column that wraps folds a path, never cuts it
    columns = [replace(c if isinstance(c, Column) else Column(c), _cells=[]) for c in columns]
    for column in (c for c in columns if not c.no_wrap):
        column.overflow = "fold"
    styles = list(styles or [None] * len(rows))
    table = Table(*columns, title=title)
    for row, style in zip(rows, styles):
        table.add_row(*row, style=style)
    widths = [_longest(c.header, *(row[i] for row in rows)) for i, c in enumerate(columns)]
    needs = sum(w if c.no_wrap else min(w, WRAP_MIN) for w, c in zip(widths, columns))
    needs += _borders(len(columns))

    def blocks(_width: int) -> Group:
        parts: list[RenderableType] = [Text(), Text(title, style="bold")] if title else []
        for row, style in zip(rows, styles):
            first = Text.from_markup(row[0], style="bold")
            rest = Text(" · ").join(
                Text.assemble((f"{c.header}: ", "dim"), Text.from_markup(value))
                for c, value in zip(columns[1:], row[1:])
            )
            if style:  # e.g. a revoked key, dim
                first.stylize(style)
                rest.stylize(style)
            parts += [first, Padding(rest, (0, 0, 0, 2), expand=False)]
        return Group(*parts)

    return _Fit(needs, table, blocks)
