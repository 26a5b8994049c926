"""End-to-end on the two embedded models: the lesson's behaviour, for real. Marked slow."""

import pytest

from tunelab import BasicModelRunner

pytestmark = pytest.mark.slow

DOG = "Tell me how to train my dog to sit"
BACKENDS = ["llama_cpp", "transformers"]


@pytest.fixture(scope="module", params=BACKENDS)
def backend(request):
    return request.param


def test_base_model_continues_the_question_instead_of_answering(backend):
    base = BasicModelRunner("gemma-3-270m", backend=backend, max_new_tokens=64)
    c = base.generate(DOG)
    assert c.template == "raw"
    # It carries on writing as the asker ("... to sit on a chair? I'm not sure how to train my dog ...").
    assert "train my dog" in c.text.lower()
    tagged = base.generate(f"[INST]{DOG}[/INST]")
    assert "[INST]" in tagged.text or "train my dog" in tagged.text.lower()


def test_chat_model_answers_through_its_own_template(backend):
    chat = BasicModelRunner("smollm2-135m-instruct", backend=backend, max_new_tokens=96)
    c = chat.generate(DOG)
    assert c.template == "chatml (model's own)"
    text = c.text.lower()
    assert "sit" in text and DOG.lower() not in text
    assert any(word in text for word in ("treat", "command", "reward", "step", "praise"))


def test_five_token_limit_finishes_with_length(backend):
    for name in ("gemma-3-270m", "smollm2-135m-instruct"):
        c = BasicModelRunner(name, backend=backend).generate(DOG, max_new_tokens=5)
        assert c.finish_reason == "length" and c.completion_tokens == 5, (name, c)


LONG = (
    "Here is a long question, so that the batch holds prompts of several padded widths. "
    "My garden has sandy soil, a shady corner under an old oak and a sunny strip by the wall, "
    "and I would like to grow tomatoes, beans, lettuce and some herbs this summer. "
    "What should I plant where, and when?"
)


@pytest.mark.parametrize("name", ["smollm2-135m-instruct", "gemma-3-270m"])
def test_batched_answers_equal_single_answers(backend, name):
    # Gemma's Q4_K_M file on llama_cpp held only with llama.cpp's tiled K-quant kernel off
    # (measured 2026-12-02: 4 of these 8 differed with it on; tunelab turns it off).
    runner = BasicModelRunner(name, backend=backend, max_new_tokens=48)
    prompts = [
        DOG,
        "What do you think of Mars?",
        "Who is the boss of Twitter?",
        LONG,
        "Name five fruits.",
        "Why is the sky blue?",
        LONG + " Please answer in detail.",
        "How far is the moon?",
    ]
    batched = runner(prompts)
    alone = [runner(p) for p in prompts]
    assert batched == alone


def _common_prefix(a: str, b: str) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_both_backends_agree_on_the_first_greedy_tokens():
    # Same prompt ids, different arithmetic (llama.cpp's Q4 kernels against dequantized fp32 weights).
    # Measured on the dog prompt (benchmarks/RESULTS.md): Gemma agrees over the first 311 characters
    # (100 tokens), SmolLM2 (Q4_1, more sensitive) parts after 27 characters, about five words.
    for name, min_chars in (("gemma-3-270m", 200), ("smollm2-135m-instruct", 20)):
        a = BasicModelRunner(name, backend="llama_cpp").generate(DOG, max_new_tokens=100)
        b = BasicModelRunner(name, backend="transformers").generate(DOG, max_new_tokens=100)
        assert a.prompt_tokens == b.prompt_tokens, name
        agreed = _common_prefix(a.text, b.text)
        print(f"{name}: backends agree on {agreed} characters")
        assert agreed >= min_chars, (name, a.text[:200], b.text[:200])
