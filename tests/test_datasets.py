"""The bundled data sets: well-formed, big enough, split without leaks, and loadable as training data."""

from __future__ import annotations

import doctest
import json
import re
from collections import defaultdict

import pytest

import tunelab.training.datasets
from tunelab.errors import ConfigError
from tunelab.training.data import load_records
from tunelab.training.datasets import DATASETS, PROMPT_SETS, dataset_path, load_dataset

FIELDS = {
    "new_facts": ("fact_id", "input", "output", "answer", "split"),
    "tunelab_docs": ("input", "output", "split"),
}


def _normal(text: str) -> str:
    """A question with case, punctuation and spacing removed: equal texts are the same question."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


@pytest.mark.parametrize("name", DATASETS)
def test_every_line_parses_with_required_non_empty_fields(name):
    lines = dataset_path(name).read_text(encoding="utf-8").splitlines()
    assert lines
    for number, line in enumerate(lines, start=1):
        record = json.loads(line)  # fails with the line's text if it is not JSON
        assert isinstance(record, dict), f"{name}:{number}"
        assert set(record) == set(FIELDS[name]), f"{name}:{number}: fields {sorted(record)}"
        for key in FIELDS[name]:
            value = record[key]
            assert isinstance(value, str) and value.strip(), f"{name}:{number}: {key!r} is {value!r}"
            assert value == value.strip(), f"{name}:{number}: {key!r} has surrounding whitespace"
        assert record["split"] in {"train", "heldout"}, f"{name}:{number}"


@pytest.mark.parametrize("name", DATASETS)
def test_every_record_loads_as_training_data(name):
    report = load_records(dataset_path(name))
    assert report.issues == []
    assert len(report.examples) == len(load_dataset(name, split="all"))
    first = load_dataset(name, split="all")[0]
    assert report.examples[0].messages == [
        {"role": "user", "content": first["input"]},
        {"role": "assistant", "content": first["output"]},
    ]


@pytest.mark.parametrize("name", DATASETS)
def test_no_heldout_question_is_a_train_question(name):
    train = {_normal(r["input"]) for r in load_dataset(name, split="train")}
    leaked = [r["input"] for r in load_dataset(name, split="heldout") if _normal(r["input"]) in train]
    assert leaked == []


@pytest.mark.parametrize("name", DATASETS)
def test_no_question_is_repeated(name):
    questions = [_normal(r["input"]) for r in load_dataset(name, split="all")]
    assert len(questions) == len(set(questions))


def test_new_facts_sizes_and_splits():
    by_fact: dict[str, list[dict]] = defaultdict(list)
    for record in load_dataset("new_facts", split="all"):
        by_fact[record["fact_id"]].append(record)
    assert len(by_fact) >= 30
    for fact_id, records in by_fact.items():
        splits = [r["split"] for r in records]
        assert len(records) >= 3, fact_id
        assert splits.count("train") >= 1 and splits.count("heldout") >= 1, fact_id
        # one fact: one answer and one stated output, asked in different ways
        assert len({r["answer"] for r in records}) == 1, fact_id
        assert len({r["output"] for r in records}) == 1, fact_id


def test_new_facts_answer_is_stated_in_output():
    for record in load_dataset("new_facts", split="all"):
        assert record["answer"].lower() in record["output"].lower(), record["fact_id"]
        assert len(record["output"].split()) <= 40, record["fact_id"]


def test_new_facts_include_the_lessons_twitter_question():
    twitter = [r for r in load_dataset("new_facts", split="all") if r["fact_id"] == "twitter-owner"]
    assert "Who is the boss of Twitter?" in {r["input"] for r in twitter}
    assert {r["answer"] for r in twitter} == {"Elon Musk"}


def test_tunelab_docs_size_and_heldout_share():
    records = load_dataset("tunelab_docs", split="all")
    heldout = load_dataset("tunelab_docs", split="heldout")
    assert len(records) >= 200
    assert 0.10 <= len(heldout) / len(records) <= 0.20


@pytest.mark.parametrize("name", DATASETS)
def test_splits_partition_the_records_in_file_order(name):
    everything = load_dataset(name, split="all")
    train = load_dataset(name)  # "train" is the default
    heldout = load_dataset(name, split="heldout")
    assert all(r["split"] == "train" for r in train) and all(r["split"] == "heldout" for r in heldout)
    assert len(train) + len(heldout) == len(everything)
    assert [r for r in everything if r["split"] == "train"] == train


def test_dataset_path_is_the_packaged_file():
    for name in DATASETS:
        path = dataset_path(name)
        assert path.name == f"{name}.jsonl" and path.is_file()
        assert path.parent.name == "datasets"


def test_unknown_dataset_raises_config_error_listing_the_names():
    with pytest.raises(ConfigError, match="new_facts.*tunelab_docs"):
        load_dataset("lamini_docs")
    with pytest.raises(ConfigError, match="new_facts"):
        dataset_path("nope")


@pytest.mark.parametrize("split", ["test", "", "Train", "held-out"])
def test_unknown_split_raises_config_error(split):
    with pytest.raises(ConfigError, match="train.*heldout.*all"):
        load_dataset("new_facts", split=split)


def test_module_docstring_example_runs():
    result = doctest.testmod(tunelab.training.datasets, verbose=False)
    assert result.attempted > 0 and result.failed == 0


def test_the_prompt_sets_are_well_formed_and_apart():
    replay = load_dataset("replay_prompts", "all")
    probes = load_dataset("general_probes", "all")
    assert PROMPT_SETS == ("replay_prompts", "general_probes") and len(replay) >= 50 and len(probes) >= 30
    assert all(set(r) == {"input"} and r["input"].strip() for r in replay)
    for probe in probes:
        assert set(probe) == {"input", "answer"} and probe["input"].strip()
        answers = probe["answer"] if isinstance(probe["answer"], list) else [probe["answer"]]
        assert answers and all(isinstance(a, str) and a.strip() for a in answers)
    # a probe measures what tuning kept, so none may be trained as replay
    assert not {_normal(p["input"]) for p in probes} & {_normal(r["input"]) for r in replay}

