"""End-to-end fine-tuning of the embedded models on post-cut-off facts. Marked slow (~6 min)."""

import pytest

from tunelab import BasicModelRunner
from tunelab.training.datasets import load_dataset

pytestmark = [pytest.mark.slow, pytest.mark.timeout(1800)]  # ~10-13 min each: near the 900 s default

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


def _common_prefix(a: str, b: str) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_a_lora_on_gemma_runs_on_llama_cpp_from_its_base_file_with_the_merged_weights(tmp_path):
    # Gemma 3 is not a Llama: its tuned model is written as the base GGUF with the LoRA-merged weights
    # in F16 and every other tensor (the 262k-token embeddings, the norms) kept as the base has it.
    from gguf import GGUFReader
    from typer.testing import CliRunner

    from tunelab.cli.main import app
    from tunelab.config import load_settings
    from tunelab.models.resolve import resolve

    runner = BasicModelRunner("gemma-3-270m")
    runner.load_data(subset("train"))
    # F16 merged weights (the default is Q8_0): close enough to the float32 adapter to compare texts
    result = runner.train(epochs=1, eval_fraction=0, progress=False, fast_gguf="f16")
    tuned = resolve(result.model_id, load_settings())
    assert tuned.fast_gguf is not None
    fast = {t.name: t for t in GGUFReader(str(tuned.fast_gguf)).tensors}
    base = {t.name: t for t in GGUFReader(str(tuned.gguf_path)).tensors}
    assert fast.keys() == base.keys()
    assert bytes(fast["token_embd.weight"].data) == bytes(base["token_embd.weight"].data)
    assert fast["blk.0.attn_q.weight"].tensor_type.name == "F16"
    questions = [r["input"] for r in subset("heldout")][:4]
    on_fast = BasicModelRunner(result.model_id, max_new_tokens=48).generate(questions)
    exact = BasicModelRunner(
        result.model_id, {"dtype": "float32"}, backend="transformers", max_new_tokens=48
    ).generate(questions)
    assert {c.backend for c in on_fast} == {"llama_cpp"}
    # the same model: greedy answers agree well past their first words (quantized kernels, F16 weights;
    # measured 2026-12-02: 71, 97, 6 and 88 characters, the third where one path ended the answer early)
    agreed = [_common_prefix(a.text, b.text) for a, b in zip(on_fast, exact)]
    texts = ([c.text for c in on_fast], [c.text for c in exact])
    assert sorted(agreed)[1] >= 40, (agreed, texts)
    # `tunelab export --gguf` writes it too (the whole-model writer is Llama-only)
    out = CliRunner().invoke(app, ["export", result.model_id, "--merged", str(tmp_path / "m"), "--gguf"])
    assert out.exit_code == 0, out.output
    written = GGUFReader(str(tmp_path / "m.gguf"))
    field = written.fields["general.architecture"]
    assert bytes(field.parts[field.data[0]]) == b"gemma3"
