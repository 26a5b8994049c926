"""The result of `compare()`, which is also the JSON report's schema (docs/compare.md).

A `Comparison` holds one `Cell` per (model, template, prompt): the answer, how it ended, and its
diagnostics; a summary per model and template; and the findings computed from them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

SCHEMA_VERSION = 1
FLAGS = ("echo", "ramble", "truncated", "self_dialogue", "empty", "template_mismatch", "incorrect", "error")
# What makes an answer worse than another, for template_mismatch: no answer at all or a wrong one
# weighs more than a flaw in an answer. Truncation is left out: it is the limit's fault, not the template's.
PROBLEM_WEIGHTS = {"echo": 1, "ramble": 1, "self_dialogue": 1, "empty": 2, "incorrect": 2, "error": 3}


class Cell(BaseModel):
    """One answer: `model` with `template` on prompt number `prompt_index`."""

    model: str
    template: str = Field(description="the template asked for: auto, raw, llama2, chatml or Jinja text")
    template_name: str = Field("", description="the template it resolved to, e.g. the model's own chatml")
    prompt_index: int
    prompt: str
    expected: str | None = None
    text: str = ""
    finish_reason: str = Field(description="stop | length (cut by max_new_tokens) | error")
    prompt_tokens: int = 0
    completion_tokens: int = 0
    max_new_tokens: int = 0
    latency_s: float = Field(0.0, description="wall time of the batch that answered this prompt")
    backend: str = ""
    error: str | None = None
    scores: dict[str, float] = Field(default_factory=dict, description="diagnostic name -> number")
    flags: list[str] = Field(default_factory=list, description=f"some of {list(FLAGS)}")
    fits_in_tokens: int | None = Field(
        None, description="for a truncated answer: the tokens it took to end when rerun with fit_checked_to"
    )
    fit_checked_to: int | None = Field(None, description="the larger limit a truncated answer was rerun with")

    @property
    def run(self) -> str:
        return f"{self.model} ({self.template})"

    @property
    def problem_weight(self) -> int:
        return sum(PROBLEM_WEIGHTS.get(flag, 0) for flag in self.flags)


class RunStats(BaseModel):
    """Counts over a set of cells: one model, or one model with one template."""

    n: int = 0
    errors: int = 0
    clean: int = Field(0, description="answers with no echo, ramble, self_dialogue, empty or incorrect flag")
    flag_counts: dict[str, int] = Field(default_factory=dict)
    flag_rates: dict[str, float] = Field(default_factory=dict)
    accuracy: float | None = Field(None, description="share of answers containing the expected answer")
    exact: float | None = None
    n_expected: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0
    tokens_per_s: float = 0.0


class ModelSummary(RunStats):
    templates: dict[str, RunStats] = Field(default_factory=dict)


class Comparison(BaseModel):
    """A whole comparison, and the JSON report's schema."""

    schema_version: int = SCHEMA_VERSION
    created_at: str = ""
    tunelab_version: str = ""
    models: list[str]
    templates: dict[str, list[str]] = Field(description="model -> the templates it was run with")
    prompts: list[str]
    expected: list[str | None] | None = None
    generation: dict[str, Any] = Field(default_factory=dict)
    cells: list[Cell]
    summary: dict[str, ModelSummary] = Field(default_factory=dict)
    findings: list[str] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list, description="runs skipped and why")

    def cell(self, model: str, template: str, prompt_index: int) -> Cell:
        for c in self.cells:
            if (c.model, c.template, c.prompt_index) == (model, template, prompt_index):
                return c
        raise KeyError(f"no cell for {model!r} with template {template!r} on prompt {prompt_index}")

    def runs(self) -> list[tuple[str, str]]:
        """(model, template) pairs in the order they ran."""
        return list(dict.fromkeys((c.model, c.template) for c in self.cells))

    def to_json(self) -> str:
        return self.model_dump_json(indent=2)

    def save_json(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    def save_html(self, path: str | Path) -> Path:
        from tunelab.evaluation.compare.report import render_html

        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(render_html(self), encoding="utf-8")
        return path

    @classmethod
    def load_json(cls, path: str | Path) -> Comparison:
        return cls.model_validate_json(Path(path).read_text(encoding="utf-8"))
