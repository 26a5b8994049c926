"""Prompts files for `compare`: text (one prompt per line) or JSONL with ``prompt`` (+ ``expected``),
and expected-answer files. Every bad line is reported by file and line number."""

from __future__ import annotations

import json
from pathlib import Path

from tunelab.errors import PromptFileError


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
