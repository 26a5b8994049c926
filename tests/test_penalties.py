"""Presence, frequency and repetition penalties: OpenAI's definitions, the same on both local backends,
and the same for a prompt in a batch as alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import RepetitionPenaltyLogitsProcessor

from tunelab import BasicModelRunner
from tunelab.errors import GenerationOptionError
from tunelab.inference.backends.transformers_backend import OpenAIPenalties, TransformersBackend
from tunelab.inference.options import GenerationOptions
from tunelab.inference.sampling import apply_openai_penalties, apply_repetition_penalty, penalize, sample_next

PROMPTS = [
    "Hello",
    "Tell me about the sea and the ships on it.",
    " ".join(["word"] * 30),
    "<|im_start|>user\nWhat do you think of Mars?<|im_end|>\n<|im_start|>assistant\n",
    " ".join(["many more words here"] * 7),
]
PENALTIES = dict(presence_penalty=1.5, frequency_penalty=0.8, repetition_penalty=1.3)


def test_openai_penalties_follow_openais_formula():
    logits = np.array([1.0, 2.0, 3.0, -1.0], dtype=np.float32)
    out = apply_openai_penalties(logits, [1, 1, 3, 1], presence=0.5, frequency=0.25)
    # token 1 appears 3 times: 2 - 3 * 0.25 - 0.5; token 3 once: -1 - 0.25 - 0.5; the others untouched
    assert out.tolist() == [1.0, 0.75, 3.0, -1.75]
    assert logits.tolist() == [1.0, 2.0, 3.0, -1.0]  # the caller's array is left alone
    assert apply_openai_penalties(logits, [1], presence=-2.0, frequency=0.0).tolist()[1] == 4.0  # rewards


def test_only_the_answer_counts_for_presence_and_frequency_and_the_whole_history_for_repetition():
    logits = np.array([4.0, 2.0, 1.0], dtype=np.float32)
    options = GenerationOptions(presence_penalty=1.0, repetition_penalty=2.0)
    # history: prompt [0], answer [1]; repetition halves both, presence then takes 1 from token 1 only
    assert penalize(logits, [0, 1], 1, options).tolist() == [2.0, 0.0, 1.0]


def test_a_presence_penalty_changes_the_greedy_choice_and_top_p_zero_is_greedy():
    logits = np.array([3.0, 2.0], dtype=np.float32)
    penalized = GenerationOptions(presence_penalty=2.0)
    assert sample_next(logits, [0], penalized, np.random.default_rng(0), n_prompt=0) == 1
    assert sample_next(logits, [0], penalized, np.random.default_rng(0), n_prompt=1) == 0  # prompt only
    top_p_zero = GenerationOptions(temperature=1.0, top_p=0.0)
    assert top_p_zero.greedy
    assert {sample_next(logits, [], top_p_zero, np.random.default_rng(s)) for s in range(50)} == {0}


def test_the_transformers_processor_equals_the_numpy_penalties_row_by_row():
    rng = np.random.default_rng(0)
    scores = rng.normal(size=(3, 40)).astype(np.float32)
    prompt_width = 4
    input_ids = rng.integers(0, 40, size=(3, prompt_width + 9))
    out = OpenAIPenalties(0.7, 0.3, prompt_width)(torch.tensor(input_ids), torch.tensor(scores))
    for row in range(3):
        expected = apply_openai_penalties(scores[row], input_ids[row, prompt_width:].tolist(), 0.7, 0.3)
        np.testing.assert_allclose(out[row].numpy(), expected, rtol=1e-6, atol=1e-6)
    alone = OpenAIPenalties(0.7, 0.3, prompt_width)(torch.tensor(input_ids[1:2]), torch.tensor(scores[1:2]))
    assert torch.equal(alone[0], out[1])  # a row does not depend on the batch around it


def test_transformers_repetition_processor_equals_the_numpy_repetition_penalty():
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(2, 30)).astype(np.float32)
    input_ids = rng.integers(0, 30, size=(2, 12))
    out = RepetitionPenaltyLogitsProcessor(1.4)(torch.tensor(input_ids), torch.tensor(scores))
    for row in range(2):
        expected = apply_repetition_penalty(scores[row], input_ids[row].tolist(), 1.4)
        np.testing.assert_allclose(out[row].numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "bad",
    [dict(presence_penalty=2.5), dict(frequency_penalty=-2.1), dict(repetition_penalty=0), dict(top_p=1.5)],
)
def test_out_of_range_options_are_refused_naming_the_field(bad):
    name = next(iter(bad))
    with pytest.raises(GenerationOptionError, match=name):
        GenerationOptions(**bad)


@pytest.mark.parametrize("backend_name", ["llama", "bf16"])
@pytest.mark.parametrize(
    "options",
    [
        GenerationOptions(max_new_tokens=20, **PENALTIES),
        GenerationOptions(max_new_tokens=20, temperature=0.8, seed=5, presence_penalty=1.0),
    ],
    ids=["greedy", "sampled"],
)
def test_penalized_answers_are_the_same_in_a_batch_as_alone(backend_name, options, request):
    backend = request.getfixturevalue(backend_name)
    if backend_name == "bf16" and not options.greedy:
        pytest.skip("transformers' seeded samples depend on the batch (docs/serving.md); greedy does not")
    batched = backend.generate(PROMPTS, options)
    if options.greedy:
        alone = [backend.generate([p], options)[0] for p in PROMPTS]
    else:  # a seed gives the i-th prompt of a call its own stream: the same with other prompts after it
        alone = [backend.generate(PROMPTS[:1], options)[0]]
        alone += backend.generate(PROMPTS + PROMPTS[::-1], options)[1 : len(PROMPTS)]
    assert [o.text for o in batched] == [o.text for o in alone]
    assert all(o.error is None and o.completion_tokens > 0 for o in batched)
    plain = backend.generate(PROMPTS, GenerationOptions(max_new_tokens=20))
    assert [o.text for o in plain] != [o.text for o in batched]  # the penalties did something


def test_both_backends_penalize_alike_on_the_same_weights(llama, tiny_chat_dir):
    fp32 = TransformersBackend(str(tiny_chat_dir), device="cpu", dtype="float32")
    for penalties in (PENALTIES, dict(frequency_penalty=2.0), dict(presence_penalty=-1.0)):
        options = GenerationOptions(max_new_tokens=16, **penalties)
        assert [o.text for o in llama.generate(PROMPTS[:2], options)] == [
            fp32.generate([p], options)[0].text for p in PROMPTS[:2]
        ], penalties


def test_the_runner_takes_the_penalties(tiny_chat_dir):
    runner = BasicModelRunner(str(tiny_chat_dir), backend="transformers")
    plain = runner.generate("Tell me about the sea", max_new_tokens=16)
    penalized = runner.generate(
        "Tell me about the sea", max_new_tokens=16, presence_penalty=2.0, frequency_penalty=2.0
    )
    assert penalized.text != plain.text
    assert (
        runner.generate("Tell me about the sea", max_new_tokens=16, temperature=1.0, top_p=0).text
        == plain.text
    )
    with pytest.raises(GenerationOptionError, match="frequency_penalty"):
        runner.generate("Hi", frequency_penalty=3)
