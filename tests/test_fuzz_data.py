"""Data fuzzing (issue 19): hypothesis writes records of every shape tunelab reads (input/output,
question/answer with custom keys, alpaca's instruction/input/output, chat messages) mixed with broken ones
(wrong types, empty strings, unknown roles, non-objects, lines that are not JSON or not UTF-8), as a
list, a JSONL file, a CSV file and a data frame. What must hold: loading never raises anything but
DataError, every record is either kept or reported (count in == kept + reported, nothing silently
dropped), and every report names where the record is (file:line, record N or row N). Templates: any
prompt renders with the prompt in it; any conversation renders or is a ConfigError saying why."""

from __future__ import annotations

import csv
import json
import re
import tempfile
from pathlib import Path

import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunelab.errors import ConfigError, DataError
from tunelab.inference.templates import BUILTIN_TEMPLATES, resolve_template
from tunelab.training.data import load_records

FUZZ = settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))

text = st.text(min_size=0, max_size=20)  # with empty, whitespace-only and odd unicode strings
anything = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True) | text,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(text, children, max_size=3),
    max_leaves=6,
)
value = text | anything  # mostly text: most records are close to right
message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant", "tool", "bot", ""]) | anything, "content": value}
)
record = st.one_of(
    st.fixed_dictionaries({"input": value, "output": value}),
    st.fixed_dictionaries({"question": value, "answer": value}),
    st.fixed_dictionaries({"instruction": value, "input": value, "output": value}),
    st.fixed_dictionaries({"messages": st.lists(message, max_size=4) | anything}),
    st.dictionaries(text, value, max_size=3),
    anything,
)


def assert_every_record_accounted_for(report, count: int, where: re.Pattern) -> None:
    assert report.kept + report.rejected == count, report.summary()
    for issue in report.issues:
        assert where.fullmatch(issue.where), issue
        assert str(issue).strip()
    assert all(where.fullmatch(example.source) for example in report.examples)


def load(source, **keys):
    """load_records, where a DataError (a whole source refused, with its reason) is an answer too."""
    try:
        return load_records(source, **keys)
    except DataError as exc:
        assert str(exc).strip()
        return None


@FUZZ
@given(st.lists(record, max_size=12), st.sampled_from([("input", "output"), ("question", "answer")]))
def test_records_in_a_list_are_kept_or_reported_by_index(records, keys):
    report = load(records, input_key=keys[0], output_key=keys[1])
    if report is not None:
        assert_every_record_accounted_for(report, len(records), re.compile(r"record \d+"))


@FUZZ
@given(st.lists(record | st.binary(max_size=12) | st.just("{not json"), max_size=12))
def test_jsonl_lines_are_kept_or_reported_by_file_and_line(lines):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.jsonl"
        raw = [
            line if isinstance(line, bytes) else json.dumps(line, allow_nan=True).encode() for line in lines
        ]
        raw = [line.replace(b"\n", b" ").replace(b"\r", b" ") for line in raw]  # one record per line
        path.write_bytes(b"\n".join(raw) + b"\n")
        report = load(path)
        assert report is not None  # a JSONL file is read line by line: no line refuses the whole file
        # a line of whitespace alone is not a record; every other line is kept or reported
        count = sum(1 for line in raw if line.decode("utf-8", "replace").strip())
        assert_every_record_accounted_for(report, count, re.compile(re.escape(str(path)) + r":\d+"))


@FUZZ
@given(st.lists(st.tuples(text, text), max_size=10))
def test_csv_rows_are_kept_or_reported_by_file_and_line(rows):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "train.csv"
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f)
            writer.writerow(["input", "output"])
            writer.writerows(rows)
        report = load(path)
        assert report is not None
        with open(path, newline="", encoding="utf-8") as f:
            count = sum(1 for _ in csv.DictReader(f))
        assert_every_record_accounted_for(report, count, re.compile(re.escape(str(path)) + r":\d+"))


@FUZZ
@given(st.lists(st.tuples(value, value), max_size=10))
def test_data_frame_rows_are_kept_or_reported_by_row(rows):
    frame = pd.DataFrame(rows, columns=["input", "output"])
    report = load(frame)
    if report is not None:
        assert_every_record_accounted_for(report, len(frame), re.compile(r"row \d+"))


# -- templates: any prompt and any conversation renders or is a ConfigError that says why ----------------

SMOLLM2_LIKE = (  # a ChatML chat template in Jinja, as SmolLM2's GGUF carries one
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] "
    "+ '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
TEMPLATES = [*(resolve_template(name, model_chat_template=None) for name in BUILTIN_TEMPLATES)]
TEMPLATES.append(resolve_template("auto", model_chat_template=SMOLLM2_LIKE, eos_token="<|im_end|>"))
chat_message = st.fixed_dictionaries(
    {"role": st.sampled_from(["system", "user", "assistant"]), "content": st.text(max_size=30)}
)


@FUZZ
@given(st.text(min_size=1, max_size=60), st.none() | st.text(max_size=20))
def test_every_template_renders_any_prompt_with_the_prompt_in_it(prompt, system):
    for template in TEMPLATES:
        rendered = template.render(prompt, system)
        assert prompt in rendered, (template.name, prompt, rendered)


@FUZZ
@given(st.lists(chat_message, max_size=5))
def test_every_template_renders_a_conversation_or_says_why_not(messages):
    for template in TEMPLATES:
        try:
            rendered = template.render_chat(messages)
        except ConfigError as exc:
            assert str(exc).strip()
            continue
        # (a prefill's trailing spaces are cut, as transformers' continue_final_message does)
        assert messages and messages[-1]["content"].strip() in rendered
