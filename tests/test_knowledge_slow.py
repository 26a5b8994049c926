"""Knowledge tuning end to end: the embedded chat model, tuned with the defaults on a fact set it has
never seen (a fictional company, given as a user's FAQ: question/answer, no key phrases), answers
questions worded otherwise. Marked slow (~12 min: two epochs, about 126 steps; the same steps on any
machine, so the same weights)."""

import json
from pathlib import Path

import pytest

from tunelab import BasicModelRunner, load_dataset
from tunelab.evaluation.scoring import names_any

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2700)]  # ~15-20 min: over the 900 s default

FACTS = Path(__file__).resolve().parents[1] / "benchmarks" / "knowledge" / "acme_company.jsonl"


def test_the_defaults_teach_a_new_fact_set_asked_in_other_words():
    records = [json.loads(line) for line in FACTS.read_text().splitlines()]
    train = [r for r in records if r["split"] == "train"]
    heldout = [r for r in records if r["split"] == "heldout"]
    probes = load_dataset("general_probes", "all")
    base = BasicModelRunner("smollm2-135m-instruct", max_new_tokens=64)
    probes_before = [names_any(a, p["answer"]) for a, p in zip(base([p["input"] for p in probes]), probes)]

    runner = BasicModelRunner("smollm2-135m-instruct", max_new_tokens=64)
    runner.load_data([{"question": r["input"], "answer": r["output"]} for r in train],
                     input_key="question", output_key="answer")  # fmt: skip
    # the defaults, without the time guard: it does not bind on an idle 2-core machine (156 steps, 4.4 s
    # each), but a slower CI machine must train the same steps to make the same model
    result = runner.train(progress=False, time_budget_s=None)
    replies = runner([r["input"] for r in heldout])
    accuracy = sum(names_any(a, r["answer"]) for a, r in zip(replies, heldout)) / len(heldout)
    # measured 83% with these defaults (the kept step of session 26), 164 steps (RESULTS.md; goal 90%);
    # the base answers none
    assert accuracy >= 0.6, list(zip([r["input"] for r in heldout], replies))
    probes_after = [names_any(a, p["answer"]) for a, p in zip(runner([p["input"] for p in probes]), probes)]
    # general knowledge, the goal: lose at most 1 in 10 (measured 31 -> 34 of 40, with short general
    # questions among the replay prompts)
    assert sum(probes_after) >= sum(probes_before) - 4
    # the knowledge report is in the registry entry, and says the same of the trained questions
    report = json.loads((result.path / "knowledge.json").read_text())
    assert len(report["facts"]) == 30 and report["trained"] >= 0.9
    # the model's own definitions of the questions' nouns made rewordings (SmolLM2 defines "founder",
    # "slogan", "headquarters", ...)
    entry = json.loads((result.path / "tunelab.json").read_text())
    assert entry["metrics"]["examples"].get("defined", 0) >= 10
    assert report["probes_before"] is not None and result.heldout_accuracy is not None
