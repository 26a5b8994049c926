"""The same prompts to several models and templates, side by side, measured.

>>> from tunelab import compare
>>> result = compare(["gemma-3-270m", "smollm2-135m-instruct"],
...                  ["Tell me how to train my dog to sit", "Who is the boss of Twitter?"],
...                  templates=["raw", "auto"], expected=[None, "Elon Musk"],
...                  max_new_tokens=64)                                                   # doctest: +SKIP
>>> result.findings                                                                    # doctest: +SKIP
>>> result.save_html("report.html"); result.save_json("report.json")                   # doctest: +SKIP

Every (model, template, prompt) cell holds the answer, how it ended, and its diagnostics
(`tunelab.evaluation.diagnostics`); prompts are answered as one batch per (model, template). Across templates of
one model, a cell whose template answered worse than another template did is flagged
``template_mismatch``. A cell cut by the token limit is rerun with a larger limit (``fit_limit``, 4x by
default) to measure the limit that would have fit. A model that cannot load or answer gets error cells
with the reason; the other models still run. The JSON schema is `Comparison` (docs/compare.md).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field
from rich.progress import Progress

from tunelab.config import Settings
from tunelab.errors import ConfigError, PromptError, TunelabError
from tunelab.evaluation.diagnostics import diagnose
from tunelab.inference.options import Completion, GenerationOptions

log = logging.getLogger("tunelab")

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


# -- prompts files -------------------------------------------------------------------------------


class PromptFileError(TunelabError, ValueError):
    """A prompts or expected-answers file is empty or has a bad line; the message names file and line."""


def load_prompts(path: str | Path) -> tuple[list[str], list[str | None]]:
    """Prompts (and expected answers) from a file: `.jsonl` with `prompt` (and optional `expected`,
    or `answer`) per line, or plain text with one prompt per line (blank lines skipped).

    Every bad line is reported at once, by file and line number; nothing runs on a half-read file.
    """
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: no such prompts file")
    lines = path.read_text(encoding="utf-8").splitlines()
    prompts: list[str] = []
    expected: list[str | None] = []
    problems: list[str] = []
    is_jsonl = (
        path.suffix.lower() in (".jsonl", ".json") or lines[:1] != [] and lines[0].lstrip().startswith("{")
    )
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        if not is_jsonl:
            prompts.append(line.strip())
            expected.append(None)
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            problems.append(f"{path}:{number}: not valid JSON ({exc.msg} at column {exc.colno})")
            continue
        if not isinstance(record, dict):
            problems.append(
                f"{path}:{number}: expected an object with a 'prompt' field, got {line.strip()[:40]}"
            )
            continue
        prompt = record.get("prompt")
        if not isinstance(prompt, str) or not prompt.strip():
            problems.append(f"{path}:{number}: field 'prompt' is missing or not a non-empty string")
            continue
        answer = record.get("expected", record.get("answer"))
        if answer is not None and not isinstance(answer, str):
            problems.append(
                f"{path}:{number}: field 'expected' must be a string, got {type(answer).__name__}"
            )
            continue
        prompts.append(prompt)
        expected.append(answer)
    if problems:
        shown = "\n  ".join(problems[:20]) + (
            f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
        )
        raise PromptFileError(f"{len(problems)} bad line(s) in {path}; fix them and rerun:\n  {shown}")
    if not prompts:
        raise PromptFileError(f"{path} has no prompts (it is empty or only blank lines)")
    return prompts, expected


def load_expected(path: str | Path, n_prompts: int) -> list[str | None]:
    """Expected answers, one per prompt in order: plain text lines, or JSONL with `expected`/`answer`."""
    path = Path(path)
    if not path.is_file():
        raise PromptFileError(f"{path}: no such expected-answers file")
    answers: list[str | None] = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip() and path.suffix.lower() != ".jsonl":
            answers.append(None)  # a blank line: nothing expected for that prompt
            continue
        if path.suffix.lower() == ".jsonl":
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise PromptFileError(f"{path}:{number}: not valid JSON ({exc.msg})") from None
            value = record.get("expected", record.get("answer")) if isinstance(record, dict) else None
            if value is not None and not isinstance(value, str):
                raise PromptFileError(f"{path}:{number}: field 'expected' must be a string")
            answers.append(value)
        else:
            answers.append(line.strip())
    while answers and answers[-1] is None and len(answers) > n_prompts:
        answers.pop()
    if len(answers) != n_prompts:
        raise PromptFileError(
            f"{path} has {len(answers)} expected answers for {n_prompts} prompts; give one per prompt"
        )
    return answers


# -- running ---------------------------------------------------------------------------------------


def compare(
    models: str | Sequence[str],
    prompts: str | Sequence[str],
    templates: Sequence[str] | dict[str, Sequence[str]] = ("auto",),
    expected: Sequence[str | None] | None = None,
    *,
    config: dict[str, Any] | None = None,
    settings: Settings | None = None,
    backend: str | None = None,
    device: str | None = None,
    system_prompt: str | None = None,
    fit_limit: int | None = None,
    progress: bool = False,
    **generation: Any,
) -> Comparison:
    """Answer every prompt with every model and template; measure and explain the differences.

    `templates` is one list for all models, or a dict model -> list. A template that renders exactly
    like another one already run for that model (``auto`` on a base model without a chat template is
    ``raw``) is skipped and said so in `notes`. `expected` (one per prompt, None for "no answer
    expected") scores each answer. `generation` takes the runner's options (`max_new_tokens`, ...).
    `fit_limit`: the limit truncated answers are rerun with (default 4 x max_new_tokens; 0 = no rerun).
    `settings` (instead of `config`): already-loaded settings, as the server passes its own.
    """
    from tunelab import __version__
    from tunelab.runner import BasicModelRunner

    model_names = [models] if isinstance(models, str) else list(models)
    prompt_list = [prompts] if isinstance(prompts, str) else list(prompts)
    if not model_names or not all(isinstance(m, str) and m.strip() for m in model_names):
        raise ConfigError(f"models must be a non-empty list of model names, got {model_names!r}")
    if not prompt_list:
        raise PromptError("no prompts to compare")
    bad = [i for i, p in enumerate(prompt_list) if not isinstance(p, str) or not p.strip()]
    if bad:
        raise PromptError(f"prompt(s) {bad} are empty or not strings")
    expected_list = list(expected) if expected is not None else None
    if expected_list is not None and len(expected_list) != len(prompt_list):
        raise PromptError(
            f"{len(expected_list)} expected answers for {len(prompt_list)} prompts; give one per prompt"
        )
    options = GenerationOptions.from_kwargs(None, **generation)  # a bad option fails before anything runs
    fit_to = 4 * options.max_new_tokens if fit_limit is None else fit_limit
    template_plan = {
        name: list(templates.get(name, ("auto",)) if isinstance(templates, dict) else templates)
        for name in model_names
    }
    for name, specs in template_plan.items():
        if not specs:
            raise ConfigError(f"no templates given for {name!r}")

    cells: list[Cell] = []
    notes: list[str] = []
    total = sum(len(specs) for specs in template_plan.values())
    with Progress(disable=not progress, transient=True) as bar:
        task = bar.add_task("comparing", total=total)
        for name in model_names:
            try:
                bar.update(task, description=f"loading {name}")
                runner = BasicModelRunner(
                    name,
                    config,
                    backend=backend,
                    device=device,
                    system_prompt=system_prompt,
                    settings=settings,
                ).load()
            except Exception as exc:  # one model's failure must not lose the others' answers
                reason = _reason(exc)
                log.warning("%s could not be loaded: %s", name, reason)
                for spec in template_plan[name]:
                    cells += _error_cells(name, spec, prompt_list, expected_list, reason, options)
                bar.advance(task, len(template_plan[name]))
                continue
            rendered: dict[str, str] = {}
            for spec in template_plan[name]:
                duplicate = _same_as(runner, spec, rendered)
                if duplicate:
                    notes.append(
                        f"{name}: template {spec!r} renders the same prompts as {duplicate!r}; not run twice"
                    )
                    bar.advance(task)
                    continue
                bar.update(task, description=f"{name} ({spec}): {len(prompt_list)} prompts as one batch")
                try:
                    completions = runner.generate(prompt_list, template=spec, **generation)
                except Exception as exc:
                    reason = _reason(exc)
                    log.warning("%s with template %s failed: %s", name, spec, reason)
                    cells += _error_cells(name, spec, prompt_list, expected_list, reason, options)
                    bar.advance(task)
                    continue
                run_cells = [
                    _cell(name, spec, i, c, expected_list[i] if expected_list else None)
                    for i, c in enumerate(completions)
                ]
                if fit_to > options.max_new_tokens:
                    bar.update(
                        task, description=f"{name} ({spec}): rerunning cut answers up to {fit_to} tokens"
                    )
                    _measure_fit(runner, spec, run_cells, generation, fit_to)
                cells += run_cells
                bar.advance(task)

    _flag_template_mismatch(cells)
    comparison = Comparison(
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        tunelab_version=__version__,
        models=model_names,
        templates={name: specs for name, specs in template_plan.items()},
        prompts=prompt_list,
        expected=expected_list,
        generation={
            **_options_dict(options),
            "fit_limit": fit_to,
            "backend": backend,
            "system_prompt": system_prompt,
        },
        cells=cells,
        notes=notes,
    )
    comparison.summary = summarize(comparison.cells)
    comparison.findings = findings(comparison)
    return comparison


def _reason(exc: Exception) -> str:
    return str(exc) if isinstance(exc, TunelabError) else f"{type(exc).__name__}: {exc}"


def _options_dict(options: GenerationOptions) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in options.__dict__.items()}


def _same_as(runner, spec: str, rendered: dict[str, str]) -> str | None:
    """Remember how `spec` renders a probe prompt for this model; return an earlier spec that rendered it
    the same (so the run would repeat it), or None."""
    if runner.resolved.remote is not None:
        return None
    backend = runner.engine.load(runner.resolved, runner.backend, runner.device)
    try:
        template = runner.engine.template_for(runner.resolved, backend, spec)
        probe = template.render("\u2063probe\u2063", runner.system_prompt)
    except TunelabError:
        return None  # generate() reports the error in the cells
    for earlier, text in rendered.items():
        if text == probe:
            return earlier
    rendered[spec] = probe
    return None


def _error_cells(model, spec, prompts, expected, reason, options) -> list[Cell]:
    return [
        Cell(
            model=model,
            template=spec,
            prompt_index=i,
            prompt=prompt,
            expected=expected[i] if expected else None,
            finish_reason="error",
            max_new_tokens=options.max_new_tokens,
            error=reason,
            flags=["error"],
        )
        for i, prompt in enumerate(prompts)
    ]


def _cell(model: str, spec: str, index: int, completion: Completion, expected: str | None) -> Cell:
    cell = Cell(
        model=model,
        template=spec,
        template_name=completion.template,
        prompt_index=index,
        prompt=completion.prompt,
        expected=expected,
        text=completion.text,
        finish_reason=completion.finish_reason,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        max_new_tokens=completion.max_new_tokens,
        latency_s=round(completion.latency_s, 4),
        backend=completion.backend,
        error=completion.error,
    )
    if completion.error:
        cell.flags = ["error"]
        return cell
    diagnosis = diagnose(
        cell.prompt, cell.text, cell.finish_reason, expected, raw=completion.template == "raw"
    )
    cell.scores, cell.flags = diagnosis.scores, diagnosis.flags
    return cell


def _measure_fit(runner, spec: str, cells: list[Cell], generation: dict, fit_to: int) -> None:
    """Rerun the truncated answers with a larger limit: the tokens they then take is the limit that fits."""
    cut = [c for c in cells if c.finish_reason == "length"]
    if not cut:
        return
    try:
        options = {k: v for k, v in generation.items() if k != "max_tokens"} | {"max_new_tokens": fit_to}
        longer = runner.generate([c.prompt for c in cut], template=spec, **options)
    except Exception as exc:
        log.warning("could not rerun the truncated answers of %s: %s", runner.model_name, _reason(exc))
        return
    for cell, completion in zip(cut, longer):
        cell.fit_checked_to = fit_to
        if completion.finish_reason == "stop":
            cell.fits_in_tokens = completion.completion_tokens
            cell.scores["fits_in_tokens"] = float(completion.completion_tokens)


def _flag_template_mismatch(cells: list[Cell]) -> None:
    """Flag a cell whose template answered worse than another template did for the same model and prompt."""
    groups: dict[tuple[str, int], list[Cell]] = {}
    for cell in cells:
        if cell.error is None:
            groups.setdefault((cell.model, cell.prompt_index), []).append(cell)
    for group in groups.values():
        if len(group) < 2:
            continue
        best = min(c.problem_weight for c in group)
        for cell in group:
            gap = cell.problem_weight - best
            cell.scores["template_gap"] = float(gap)
            if gap > 0:
                cell.flags.append("template_mismatch")


# -- summaries and findings ---------------------------------------------------------------------------

_CLEAN_BREAKERS = {"echo", "ramble", "self_dialogue", "empty", "incorrect", "error"}


def _stats(cells: list[Cell]) -> RunStats:
    stats = RunStats(n=len(cells))
    ok = [c for c in cells if c.error is None]
    stats.errors = len(cells) - len(ok)
    stats.clean = sum(1 for c in ok if not _CLEAN_BREAKERS & set(c.flags))
    for flag in FLAGS:
        stats.flag_counts[flag] = sum(flag in c.flags for c in cells)
        stats.flag_rates[flag] = round(stats.flag_counts[flag] / len(cells), 4) if cells else 0.0
    judged = [c for c in ok if c.expected is not None]
    stats.n_expected = len(judged)
    if judged:
        stats.accuracy = round(sum(c.scores.get("contained", 0) for c in judged) / len(judged), 4)
        stats.exact = round(sum(c.scores.get("exact", 0) for c in judged) / len(judged), 4)
    stats.completion_tokens = sum(c.completion_tokens for c in ok)
    # cells of one batch share its wall time: count each batch once
    batches = {(c.model, c.template): c.latency_s for c in ok}
    stats.seconds = round(sum(batches.values()), 3)
    stats.tokens_per_s = round(stats.completion_tokens / stats.seconds, 2) if stats.seconds else 0.0
    return stats


def summarize(cells: list[Cell]) -> dict[str, ModelSummary]:
    summary: dict[str, ModelSummary] = {}
    for model in dict.fromkeys(c.model for c in cells):
        mine = [c for c in cells if c.model == model]
        entry = ModelSummary(**_stats(mine).model_dump())
        for spec in dict.fromkeys(c.template for c in mine):
            entry.templates[spec] = _stats([c for c in mine if c.template == spec])
        summary[model] = entry
    return summary


def _of(k: int, n: int) -> str:
    return f"all {n}" if k == n and n > 1 else f"{k} of {n}"


def _short(text: str, width: int = 60) -> str:
    one_line = " ".join(text.split())
    return one_line if len(one_line) <= width else one_line[: width - 1] + "…"


def findings(comparison: Comparison) -> list[str]:
    """Sentences a person would write after reading the cells, computed from the measurements."""
    out: list[str] = []
    cells = comparison.cells
    failed: set[str] = set()
    for model, spec in comparison.runs():
        run = [c for c in cells if (c.model, c.template) == (model, spec)]
        n = len(run)
        if all(c.error for c in run):
            mine = [c for c in cells if c.model == model]
            if len({c.error for c in mine}) == 1 and all(c.error for c in mine):
                if model not in failed:  # one sentence for a model that failed the same way everywhere
                    out.append(f"{model} could not run: {run[0].error}")
                    failed.add(model)
            else:
                out.append(f"{model} ({spec}) could not run: {run[0].error}")
            continue
        count = {flag: sum(flag in c.flags for c in run) for flag in FLAGS}
        clean = sum(1 for c in run if not _CLEAN_BREAKERS & set(c.flags))
        resolved = next((c.template_name for c in run if c.template_name), spec)
        label = f"{model} ({spec}{' = ' + resolved if resolved != spec else ''})"
        parts = []
        if count["echo"]:
            parts.append(f"repeated or continued the prompt instead of answering in {_of(count['echo'], n)}")
        if count["ramble"]:
            parts.append(f"repeated itself in {_of(count['ramble'], n)}")
        if count["self_dialogue"]:
            parts.append(
                f"wrote further turns of the conversation itself in {_of(count['self_dialogue'], n)}"
            )
        if count["empty"]:
            parts.append(f"said nothing at all in {_of(count['empty'], n)}")
        if count["error"]:
            parts.append(f"failed on {_of(count['error'], n)}")
        if parts:
            lead = f"answered {_of(clean, n)} prompts cleanly; " if clean else ""
            out.append(f"{label} {lead}" + "; ".join(parts) + ".")
        else:
            out.append(f"{label} answered {_of(n, n)} prompts without echo, repetition or extra turns.")
    out += _template_findings(comparison)
    out += _truncation_findings(cells)
    out += _accuracy_findings(comparison)
    speeds = sorted(
        ((s.tokens_per_s, m) for m, s in comparison.summary.items() if s.tokens_per_s > 0), reverse=True
    )
    if len(speeds) > 1:
        out.append("Speed: " + ", ".join(f"{m} {tps:.0f} tokens/s" for tps, m in speeds) + ".")
    return out


def _template_findings(comparison: Comparison) -> list[str]:
    out = []
    for model in comparison.models:
        mine = [c for c in comparison.cells if c.model == model and c.error is None]
        specs = list(dict.fromkeys(c.template for c in mine))
        if len(specs) < 2:
            continue
        n = len({c.prompt_index for c in mine})
        worse = {s: sum("template_mismatch" in c.flags for c in mine if c.template == s) for s in specs}
        best = [s for s in specs if worse[s] == 0]
        for spec in specs:
            if worse[spec]:
                than = f"'{best[0]}'" if len(best) == 1 else "another template"
                out.append(
                    f"{model}: template '{spec}' answered worse than {than} on {_of(worse[spec], n)} prompts "
                    "(template_mismatch)."
                )
    return out


def _truncation_findings(cells: list[Cell]) -> list[str]:
    cut = [c for c in cells if c.finish_reason == "length"]
    if not cut:
        return []
    limits = sorted({c.max_new_tokens for c in cut})
    at = " / ".join(str(x) for x in limits)
    sentence = f"{_of(len(cut), len([c for c in cells if c.error is None]))} answers were cut at {at} tokens"
    checked = [c for c in cut if c.fit_checked_to]
    if checked:
        fit = sorted(c.fits_in_tokens for c in checked if c.fits_in_tokens)
        never = len(checked) - len(fit)
        details = []
        if fit:
            details.append(
                f"{len(fit)} end{'s' if len(fit) == 1 else ''} within {fit[-1]} tokens "
                f"(needed: {', '.join(str(x) for x in fit[:8])}{', …' if len(fit) > 8 else ''})"
            )
        if never:
            looping = sum(1 for c in checked if not c.fits_in_tokens and "ramble" in c.flags)
            details.append(
                f"{never} still did not end within {checked[0].fit_checked_to}"
                + (f" ({looping} of them looping)" if looping else "")
            )
        sentence += "; rerun with a larger limit, " + " and ".join(details)
    return [sentence + "."]


def _accuracy_findings(comparison: Comparison) -> list[str]:
    out = []
    for model, spec in comparison.runs():
        judged = [
            c
            for c in comparison.cells
            if (c.model, c.template) == (model, spec) and c.expected is not None and c.error is None
        ]
        if not judged:
            continue
        right = sum(1 for c in judged if "incorrect" not in c.flags)
        sentence = f"{model} ({spec}) gave the expected answer {_of(right, len(judged))} times"
        wrong = next((c for c in judged if "incorrect" in c.flags), None)
        if wrong is not None:
            said = _short(wrong.text) if wrong.text.strip() else "nothing"
            sentence += (
                f"; e.g. expected {wrong.expected!r} to {_short(wrong.prompt, 40)!r}, it said {said!r}"
            )
        out.append(sentence + ".")
    return out
