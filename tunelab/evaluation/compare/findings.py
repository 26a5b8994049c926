"""What a comparison found: statistics per (model, template) run, and findings as sentences computed
from the diagnostics (never written by hand)."""

from __future__ import annotations

from tunelab.evaluation.compare.schema import FLAGS, Cell, Comparison, ModelSummary, RunStats

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
        hit = next((c for c in judged if "incorrect" not in c.flags), None)
        wrong = next((c for c in judged if "incorrect" in c.flags), None)
        if hit is not None and wrong is not None:  # one of each: what it got, and what it missed
            sentence += f"; e.g. to {_short(hit.prompt, 40)!r} it said {_short(hit.text)!r}"
        if wrong is not None:
            said = _short(wrong.text) if wrong.text.strip() else "nothing"
            sentence += (
                f"; {'missed:' if hit is not None else 'e.g.'} expected {wrong.expected!r} to "
                f"{_short(wrong.prompt, 40)!r}, it said {said!r}"
            )
        out.append(sentence + ".")
    return out
