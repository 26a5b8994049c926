"""The same prompts to several models and templates, side by side, measured.

>>> from tunelab import compare
>>> result = compare(["gemma-3-270m", "smollm2-135m-instruct"],
...                  ["Tell me how to train my dog to sit", "Who is the boss of Twitter?"],
...                  templates=["raw", "auto"], expected=[None, "Elon Musk"],
...                  max_new_tokens=64)                                                   # doctest: +SKIP
>>> result.findings                                                                    # doctest: +SKIP
>>> result.save_html("report.html"); result.save_json("report.json")                   # doctest: +SKIP

Every (model, template, prompt) cell holds the answer, how it ended, and its diagnostics
(`tunelab.evaluation.diagnostics`); prompts are answered as one batch per (model, template). Across
templates of one model, a cell whose template answered worse than another template did is flagged
``template_mismatch``. A cell cut by the token limit is rerun with a larger limit (``fit_limit``, 4x by
default) to measure the limit that would have fit. A model that cannot load or answer gets error cells
with the reason; the other models still run. The JSON schema is `Comparison` (docs/compare.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime, timezone
from typing import Any

from rich.progress import Progress

from tunelab.config import Settings
from tunelab.errors import ConfigError, PromptError, TunelabError
from tunelab.evaluation.compare.findings import findings, summarize
from tunelab.evaluation.compare.schema import Cell, Comparison
from tunelab.evaluation.diagnostics import diagnose
from tunelab.inference.options import Completion, GenerationOptions

log = logging.getLogger("tunelab")


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

    model_names, prompt_list, expected_list = _checked_inputs(models, prompts, expected)
    options = GenerationOptions.from_kwargs(None, **generation)  # a bad option fails before anything runs
    fit_to = 4 * options.max_new_tokens if fit_limit is None else fit_limit
    template_plan = _template_plan(model_names, templates)

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
                else:
                    bar.update(task, description=f"{name} ({spec}): {len(prompt_list)} prompts as one batch")
                    cells += _run_cells(runner, name, spec, prompt_list, expected_list, generation, fit_to)
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


def _checked_inputs(models, prompts, expected) -> tuple[list[str], list[str], list[str | None] | None]:
    """The models, prompts and expected answers as lists, or an error naming what is wrong."""
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
    return model_names, prompt_list, expected_list


def _template_plan(model_names: list[str], templates) -> dict[str, list[str]]:
    plan = {
        name: list(templates.get(name, ("auto",)) if isinstance(templates, dict) else templates)
        for name in model_names
    }
    for name, specs in plan.items():
        if not specs:
            raise ConfigError(f"no templates given for {name!r}")
    return plan


def _run_cells(runner, name: str, spec: str, prompts, expected, generation: dict, fit_to: int) -> list[Cell]:
    """One (model, template) run: its prompts as one batch, cut answers rerun up to `fit_to` tokens;
    a run that fails gets error cells with the reason."""
    options = GenerationOptions.from_kwargs(None, **generation)
    try:
        completions = runner.generate(prompts, template=spec, **generation)
    except Exception as exc:
        reason = _reason(exc)
        log.warning("%s with template %s failed: %s", name, spec, reason)
        return _error_cells(name, spec, prompts, expected, reason, options)
    cells = [_cell(name, spec, i, c, expected[i] if expected else None) for i, c in enumerate(completions)]
    if fit_to > options.max_new_tokens:
        _measure_fit(runner, spec, cells, generation, fit_to)
    return cells


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
