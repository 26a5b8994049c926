"""Training data: load and validate examples from lists, JSONL, CSV and data frames.

Three record shapes are accepted, and each becomes a chat conversation (`Example.messages`), so the
same template is used in training and inference:

- input/output (Lamini's): ``{"input": "...", "output": "..."}`` (keys configurable; an output that
  is a dict or list is typed output and is stored as JSON);
- alpaca: ``{"instruction": "...", "input": "...", "output": "..."}`` (``input`` optional);
- OpenAI chat: ``{"messages": [{"role": "user", "content": "..."}, {"role": "assistant", ...}]}``.

Lamini's older pair form ``[{"input": ...}, {"output": ...}]`` is merged into one record.
Every bad record is reported with where it is (``file.jsonl:12`` or ``record 3``) and which field is
wrong; nothing is dropped silently: the report says how many were kept and why any were not.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunelab.errors import DataError

log = logging.getLogger("tunelab")

ROLES = ("system", "user", "assistant")


@dataclass
class Example:
    """One training conversation; the assistant turns are what the model learns to write."""

    messages: list[dict[str, str]]
    source: str  # where it came from: "data.jsonl:12" or "record 3"
    # A short key a correct answer must contain (a record's optional "answer" field), for evaluate().
    expected: str | None = None
    # "data" (the user's record), or what made it: "reworded", "defined", "reverse", "teacher"
    # (training.augment), "replay" (the base model's own answer to a general prompt, training.replay)
    origin: str = "data"

    @property
    def prompt(self) -> str:
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")

    @property
    def answer(self) -> str:
        return self.messages[-1]["content"]


@dataclass
class DataIssue:
    where: str
    field: str | None
    problem: str

    def __str__(self) -> str:
        return f"{self.where}: {f'field {self.field!r}: ' if self.field else ''}{self.problem}"


@dataclass
class DataReport:
    """What a load kept and what it could not use, and why."""

    examples: list[Example] = field(default_factory=list)
    issues: list[DataIssue] = field(default_factory=list)

    @property
    def kept(self) -> int:
        return len(self.examples)

    @property
    def rejected(self) -> int:
        return len({issue.where for issue in self.issues})

    def summary(self) -> str:
        text = f"kept {self.kept} of {self.kept + self.rejected} records"
        if self.issues:
            text += f"; {self.rejected} not used:\n" + "\n".join(f"  {issue}" for issue in self.issues)
        return text


def _text(
    value: Any, where: str, name: str, issues: list[DataIssue], *, typed_ok: bool = False
) -> str | None:
    if isinstance(value, str):
        if value.strip():
            return value
        issues.append(DataIssue(where, name, "is empty"))
        return None
    if typed_ok and isinstance(value, dict | list):
        return json.dumps(value, ensure_ascii=False)  # typed output: the model learns to write JSON
    if value is None:
        issues.append(DataIssue(where, name, "is missing"))
    else:
        issues.append(DataIssue(where, name, f"must be a string, got {type(value).__name__}"))
    return None


def _from_messages(value: Any, where: str, issues: list[DataIssue]) -> list[dict[str, str]] | None:
    if not isinstance(value, list) or not value:
        issues.append(DataIssue(where, "messages", "must be a non-empty list of {role, content}"))
        return None
    messages, ok = [], True
    for i, message in enumerate(value):
        name = f"messages[{i}]"
        if not isinstance(message, dict):
            issues.append(DataIssue(where, name, f"must be an object, got {type(message).__name__}"))
            ok = False
            continue
        role = message.get("role")
        if role not in ROLES:
            issues.append(DataIssue(where, f"{name}.role", f"must be one of {ROLES}, got {role!r}"))
            ok = False
        content = _text(
            message.get("content"), where, f"{name}.content", issues, typed_ok=role == "assistant"
        )
        ok = ok and content is not None
        messages.append({"role": role, "content": content})
    if ok and messages[-1]["role"] != "assistant":
        issues.append(
            DataIssue(where, "messages", "must end with an assistant message (the answer to learn)")
        )
        ok = False
    if ok and not any(m["role"] == "user" for m in messages):
        issues.append(DataIssue(where, "messages", "has no user message"))
        ok = False
    return messages if ok else None


def parse_record(
    record: Any, where: str, *, input_key: str = "input", output_key: str = "output"
) -> tuple[Example | None, list[DataIssue]]:
    """One record -> an Example, or None and the reasons it cannot be used."""
    issues: list[DataIssue] = []
    if isinstance(record, list | tuple) and all(isinstance(part, dict) for part in record):
        merged: dict[str, Any] = {}
        for part in record:  # Lamini's [{"input": ...}, {"output": ...}]
            merged.update(part)
        record = merged
    if not isinstance(record, dict):
        return None, [DataIssue(where, None, f"a record must be an object, got {type(record).__name__}")]
    if "messages" in record:
        messages = _from_messages(record["messages"], where, issues)
    elif "instruction" in record:
        instruction = _text(record.get("instruction"), where, "instruction", issues)
        extra = record.get("input")
        if extra is not None and not isinstance(extra, str):
            issues.append(DataIssue(where, "input", f"must be a string, got {type(extra).__name__}"))
        output = _text(record.get("output"), where, "output", issues, typed_ok=True)
        prompt = (
            f"{instruction}\n\n{extra}"
            if instruction and isinstance(extra, str) and extra.strip()
            else instruction
        )
        messages = (
            None
            if issues
            else [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
        )
    else:
        if input_key not in record and output_key not in record:
            keys = sorted(record)[:8]
            return None, [
                DataIssue(
                    where,
                    None,
                    f"has neither {input_key!r}/{output_key!r}, 'instruction'/'output' nor 'messages' "
                    f"(keys: {keys}); pass input_key=/output_key= for other names",
                )
            ]
        prompt = _text(record.get(input_key), where, input_key, issues)
        output = _text(record.get(output_key), where, output_key, issues, typed_ok=True)
        messages = (
            None
            if issues
            else [{"role": "user", "content": prompt}, {"role": "assistant", "content": output}]
        )
    # "answer" is a key phrase beside the output, unless the data names its outputs "answer" (lamini_docs)
    expected = record.get("answer") if "answer" not in (input_key, output_key) else None
    if expected is not None and not (isinstance(expected, str) and expected.strip()):
        issues.append(
            DataIssue(where, "answer", "must be a non-empty string (the key a correct answer contains)")
        )
    return (Example(messages, where, expected) if messages and not issues else None), issues


def _jsonl_records(path: Path) -> Iterator[tuple[str, Any]]:
    with open(path, "rb") as f:  # decoded line by line: a line that is not UTF-8 is reported, not fatal
        for number, raw in enumerate(f, start=1):
            where = f"{path}:{number}"
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as exc:
                bad = f"byte 0x{raw[exc.start]:02x} at column {exc.start + 1}"
                yield where, _Invalid(f"not UTF-8 text ({bad}); save the file as UTF-8")
                continue
            if not line.strip():
                continue
            try:
                yield where, json.loads(line)
            except json.JSONDecodeError as exc:
                yield where, _Invalid(f"not valid JSON ({exc.msg} at column {exc.colno})")
            except RecursionError:
                yield where, _Invalid("not usable JSON (nested too deeply)")


def _utf8_text(path: Path) -> str:
    """The file's text; a file that is not UTF-8 raises DataError naming the line of the first bad byte."""
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path}:{line}: not UTF-8 text (byte 0x{data[exc.start]:02x}); save the file as UTF-8",
            DataReport(),
        ) from None


def _csv_records(path: Path) -> Iterator[tuple[str, Any]]:
    reader = csv.DictReader(io.StringIO(_utf8_text(path), newline=""))
    for row in reader:
        yield f"{path}:{reader.line_num}", {k: v for k, v in row.items() if k is not None}


@dataclass
class _Invalid:
    """A line that could not even be parsed; reported like any other bad record."""

    problem: str


def _file_records(path: Path, fmt: str) -> Iterable[tuple[str, Any]]:
    """(where, record) pairs of a JSONL, JSON or CSV file; `fmt` "auto" goes by the suffix."""
    kind = fmt if fmt != "auto" else path.suffix.lstrip(".")
    if kind not in {"jsonl", "json", "csv"}:
        raise DataError(f"{path}: unknown data file type; use .jsonl, .json or .csv", DataReport())
    if not path.is_file():
        raise DataError(f"{path}: no such file", DataReport())
    if kind == "csv":
        return _csv_records(path)
    if kind == "jsonl":
        return _jsonl_records(path)
    try:
        data = json.loads(_utf8_text(path))
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})", DataReport()) from None
    except RecursionError:
        raise DataError(f"{path}: not usable JSON (nested too deeply)", DataReport()) from None
    items = data if isinstance(data, list) else [data]
    return ((f"{path} record {i}", r) for i, r in enumerate(items))


def load_records(
    source: Any, *, fmt: str = "auto", input_key: str = "input", output_key: str = "output"
) -> DataReport:
    """Parse a list of records, a JSONL/JSON/CSV file, or a data frame (anything with `to_dict`).

    `fmt` forces how a path is read ("jsonl", "json" or "csv"); "auto" goes by the file suffix.
    """
    if isinstance(source, str | Path):
        records = _file_records(Path(source), fmt)
    elif hasattr(source, "to_dict"):
        records = ((f"row {i}", r) for i, r in enumerate(source.to_dict("records")))
    elif isinstance(source, dict):
        records = [("record 0", source)]
    elif isinstance(source, Iterable) and not isinstance(source, bytes):
        records = ((f"record {i}", r) for i, r in enumerate(source))
    else:
        raise DataError(
            f"cannot read training data from a {type(source).__name__}; give a list of records, "
            "a .jsonl/.json/.csv path or a data frame",
            DataReport(),
        )
    report = DataReport()
    for where, record in records:
        if isinstance(record, _Invalid):
            report.issues.append(DataIssue(where, None, record.problem))
            continue
        example, issues = parse_record(record, where, input_key=input_key, output_key=output_key)
        report.issues.extend(issues)
        if example is not None:
            report.examples.append(example)
    return report
