"""Training data: every accepted shape, and every bad record named with where it is and which field."""

import json

import pytest

from tunelab import BasicModelRunner, DataError
from tunelab.training.data import load_records


@pytest.fixture
def runner(tiny_chat_dir):
    return BasicModelRunner(str(tiny_chat_dir))


def _pair(prompt, answer):
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": answer}]


def test_lamini_list_of_input_output_dicts(runner):
    report = runner.load_data(
        [{"input": "Who owns X?", "output": "Elon Musk."}, {"input": "a", "output": "b"}]
    )
    assert report.kept == 2 and not report.issues
    assert runner.data[0].messages == _pair("Who owns X?", "Elon Musk.")
    assert runner.data[0].source == "record 0"
    runner.load_data([{"q": "c", "a": "d"}], input_key="q", output_key="a")
    assert len(runner.data) == 3
    runner.clear_data()
    assert runner.data == []


def test_lamini_pair_form_and_alpaca_and_messages():
    report = load_records(
        [
            [{"input": "Hi"}, {"output": "Hello!"}],
            {"instruction": "Translate to French", "input": "cat", "output": "chat"},
            {"instruction": "Say hi", "output": "hi"},
            {"messages": [{"role": "system", "content": "Be brief."}, *_pair("Q", "A")]},
        ]
    )
    assert report.kept == 4 and not report.issues
    assert report.examples[0].messages == _pair("Hi", "Hello!")
    assert report.examples[1].messages[0]["content"] == "Translate to French\n\ncat"
    assert report.examples[2].messages[0]["content"] == "Say hi"
    assert report.examples[3].messages[0] == {"role": "system", "content": "Be brief."}


def test_typed_output_is_stored_as_json():
    report = load_records([{"input": "Rate it", "output": {"score": 3, "ok": True}}])
    assert json.loads(report.examples[0].messages[1]["content"]) == {"score": 3, "ok": True}


def test_jsonl_errors_name_file_line_and_field(tmp_path, runner):
    path = tmp_path / "train.jsonl"
    lines = [
        json.dumps({"input": "good", "output": "yes"}),
        "",
        "{not json",
        json.dumps({"input": "", "output": "x"}),
        json.dumps({"input": "q", "output": 5}),
        json.dumps({"question": "q", "answer": "a"}),
        json.dumps({"messages": [{"role": "user", "content": "only a question"}]}),
        json.dumps({"messages": [{"role": "bot", "content": "x"}, {"role": "assistant", "content": "y"}]}),
        json.dumps(["just", "strings"]),
        json.dumps({"input": "also good", "output": "yes"}),
    ]
    path.write_text("\n".join(lines) + "\n")
    report = runner.load_data_from_jsonlines(path)
    assert report.kept == 2 and report.rejected == 7
    text = report.summary()
    assert text.startswith("kept 2 of 9 records")
    assert f"{path}:3: not valid JSON" in text
    assert f"{path}:4: field 'input': is empty" in text
    assert f"{path}:5: field 'output': must be a string, got int" in text
    assert f"{path}:6: has neither 'input'/'output'" in text and "question" in text
    assert f"{path}:7: field 'messages': must end with an assistant message" in text
    assert f"{path}:8: field 'messages[0].role': must be one of" in text
    assert f"{path}:9: a record must be an object, got list" in text
    assert [e.source for e in runner.data] == [f"{path}:1", f"{path}:10"]


def test_strict_raises_and_keeps_nothing(tmp_path, runner):
    path = tmp_path / "t.jsonl"
    path.write_text(json.dumps({"input": "a", "output": "b"}) + "\n" + json.dumps({"input": "a"}) + "\n")
    with pytest.raises(DataError, match=r"(?s)strict=True.*t.jsonl:2: field 'output': is missing") as info:
        runner.load_data_from_jsonlines(path, strict=True)
    assert info.value.report.kept == 1 and runner.data == []


def test_no_usable_record_is_an_error(runner):
    with pytest.raises(DataError, match="no record was usable"):
        runner.load_data([{"input": "", "output": ""}])


def test_csv_rows_carry_their_line_numbers(tmp_path, runner):
    path = tmp_path / "t.csv"
    path.write_text('input,output\n"Who owns X?","Elon Musk"\n"multi\nline question",answer\nq,\n')
    report = runner.load_data_from_csv(path)
    assert report.kept == 2
    assert report.examples[1].messages[0]["content"] == "multi\nline question"
    assert str(report.issues[0]) == f"{path}:5: field 'output': is empty"


def test_dataframe_like_objects(runner):
    class Frame:  # the part of pandas.DataFrame that tunelab uses
        def to_dict(self, orient):
            assert orient == "records"
            return [{"input": "a", "output": "b"}, {"input": "c", "output": None}]

    report = runner.load_data_from_dataframe(Frame())
    assert report.kept == 1 and str(report.issues[0]) == "row 1: field 'output': is missing"


def test_bad_sources_are_clear_errors(tmp_path, runner):
    with pytest.raises(DataError, match="no such file"):
        runner.load_data_from_jsonlines(tmp_path / "missing.jsonl")
    with pytest.raises(DataError, match="unknown data file type"):
        runner.load_data(str(tmp_path / "data.txt"))
    with pytest.raises(DataError, match="cannot read training data from a int"):
        runner.load_data(42)
    bad_json = tmp_path / "d.json"
    bad_json.write_text('[{"input": "a",\n "output": }]')
    with pytest.raises(DataError, match=r"d.json:2: not valid JSON"):
        runner.load_data(bad_json)
    latin1 = tmp_path / "d.csv"
    latin1.write_bytes('input,output\nq,a\ncaf\u00e9,b\n'.encode("latin-1"))
    with pytest.raises(DataError, match=r"d.csv:3: not UTF-8 text \(byte 0xe9\)"):
        runner.load_data(latin1)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataError, match=r"deep.json: not usable JSON \(nested too deeply\)"):
        runner.load_data(deep)


def test_a_jsonl_line_that_is_not_utf8_or_nested_too_deep_is_reported_with_the_others(tmp_path, runner):
    path = tmp_path / "mixed.jsonl"
    good = json.dumps({"input": "q", "output": "a"}).encode()
    path.write_bytes(b"\n".join([good, b'{"input": "caf\xe9", "output": "a"}', b"[" * 100_000, good]) + b"\n")
    report = runner.load_data_from_jsonlines(path)
    assert report.kept == 2 and report.rejected == 2
    text = report.summary()
    assert f"{path}:2: not UTF-8 text (byte 0xe9 at column 15)" in text
    assert f"{path}:3: not" in text  # a JSON error or the nesting: named, never a crash
