"""End-to-end fine-tuning of the embedded chat model on post-cut-off facts. Marked slow (~3 min)."""

import pytest

from tunelab import BasicModelRunner
from tunelab.datasets import load_dataset

pytestmark = pytest.mark.slow

FACTS = 10  # the first facts of new_facts: enough to see generalisation, small enough for CI


def subset(split: str) -> list[dict]:
    facts = list(dict.fromkeys(r["fact_id"] for r in load_dataset("new_facts", "all")))[:FACTS]
    return [r for r in load_dataset("new_facts", split) if r["fact_id"] in facts]


def test_lora_defaults_teach_new_facts_that_answer_reworded_questions():
    runner = BasicModelRunner("smollm2-135m-instruct", max_new_tokens=64)
    dog_before = runner("Tell me how to train my dog to sit")
    runner.load_data(subset("train"))
    result = runner.train(progress=False)  # the defaults a user gets
    assert runner.model_name == result.model_id
    out = runner.evaluate(data=subset("heldout"))
    tuned, base = out["totals"][result.model_id], out["totals"]["smollm2-135m-instruct"]
    # held-out questions are worded differently from every trained one
    assert tuned["contained"] >= 0.5, out["eval_results"]
    assert base["contained"] <= 0.2
    assert tuned["stopped"] >= 0.9  # the learned end of turn: answers end instead of running to the limit
    # general ability kept: still a dog-training answer, not a memorised fact
    dog_after = runner.generate("Tell me how to train my dog to sit", max_new_tokens=96)
    text = dog_after.text.lower()
    assert "train" in text and any(w in text for w in ("dog", "puppy", "pet")), (dog_before, dog_after.text)
    assert not any(r["answer"].lower() in text for r in subset("all")), dog_after.text  # no fact leaks in
    assert len(text.split()) > 20  # a real answer, not a one-line fact
    # a new runner finds the model by its id, through the registry
    again = BasicModelRunner(result.model_id, max_new_tokens=32)
    assert again("Who is the boss of Twitter?").strip() != ""
