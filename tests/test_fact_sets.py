"""The benchmark's fact sets (benchmarks/knowledge/) are what benchmarks/knowledge.py and its readers
assume: each fact asked in training and held out, the key phrase in the answer, no held-out question a
copy of a training one, and a held-out question names its fact's key only when it asks the reverse."""

import json
from collections import defaultdict
from pathlib import Path

import pytest

SETS = sorted((Path(__file__).resolve().parents[1] / "benchmarks" / "knowledge").glob("*.jsonl"))


@pytest.mark.parametrize("path", SETS, ids=lambda p: p.stem)
def test_every_fact_is_trained_and_held_out_and_names_its_key(path):
    by_fact = defaultdict(list)
    for number, line in enumerate(path.read_text().splitlines(), 1):
        record = json.loads(line)
        assert set(record) == {"fact_id", "input", "output", "answer", "split"}, f"{path.name}:{number}"
        assert record["answer"].lower() in record["output"].lower(), f"{path.name}:{number}"
        by_fact[record["fact_id"]].append(record)
    assert len(by_fact) >= 30
    for fact, records in by_fact.items():
        train = [r for r in records if r["split"] == "train"]
        heldout = [r for r in records if r["split"] == "heldout"]
        assert len(train) >= 2 and heldout and len(train) + len(heldout) == len(records), fact
        assert len({r["output"] for r in records}) == 1, fact  # one answer: the fact
        trained = {r["input"].lower() for r in train}
        key = train[0]["answer"].lower()
        assert all(key not in q for q in trained), fact
        for r in heldout:
            assert r["input"].lower() not in trained, fact
            reverse = r["answer"] != train[0]["answer"]
            assert (key in r["input"].lower()) == reverse, (fact, r["input"])
