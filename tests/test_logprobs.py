"""Token log-probabilities, prompts as token ids and scoring, on both backends (tiny random-weight models)."""

import math

import numpy as np
import pytest

from tunelab import BasicModelRunner
from tunelab.errors import GenerationOptionError, PromptError
from tunelab.inference.backends.transformers_backend import TransformersBackend
from tunelab.inference.logprobs import logprob_rows
from tunelab.inference.options import GenerationOptions

PROMPTS = [
    "Hello world! A tiny model",
    "The quick brown fox jumps over the lazy dog and then some more words",
    "Agent: I'm here to help",
]
# llama.cpp (F32 GGUF, its KV cache in f16) against transformers in float32 on the same tiny weights, as
# measured (280 logprobs, the tiny model's are wide: median |logprob| 10): at most 0.060 apart, 0.003 on
# average (docs/serving.md)
SAME_WEIGHTS_MAX, SAME_WEIGHTS_MEAN = 0.1, 0.01


@pytest.fixture(scope="module")
def fp32(tiny_chat_dir):
    return TransformersBackend(str(tiny_chat_dir), device="cpu", dtype="float32")


def test_logprob_rows_is_a_log_softmax_with_the_top_k():
    logits = np.array([[1.0, 3.0, 2.0, 3.0], [0.0, 0.0, 0.0, 10.0]], dtype=np.float32)
    rows = logprob_rows(logits, [2, 0], 2, str)
    expected = logits[0] - np.log(np.exp(logits[0]).sum())
    assert rows[0].logprob == pytest.approx(expected[2], abs=1e-6)
    assert [t.token_id for t in rows[0].top] == [1, 3]  # a tie goes to the lower id
    assert rows[0].top[0].logprob == pytest.approx(expected[1], abs=1e-6)
    assert not rows[0].greedy and rows[1].top[0].token_id == 3 and not rows[1].greedy
    assert sum(math.exp(lp) for lp in expected) == pytest.approx(1.0)
    assert logprob_rows(logits, [1, 3], 0, str)[1].greedy  # nothing asked for the top: greedy by default


@pytest.mark.parametrize("backend_name", ["llama", "bf16"])
def test_answer_and_prompt_logprobs_have_the_shapes_asked_for(backend_name, request):
    backend = request.getfixturevalue(backend_name)
    options = GenerationOptions(max_new_tokens=6, logprobs=3, prompt_logprobs=2)
    out = backend.generate(PROMPTS[:1], options)[0]
    assert out.error is None and len(out.logprobs) == out.completion_tokens == 6
    ids = backend.tokenize(PROMPTS[0])
    assert [e.token_id for e in out.prompt_logprobs] == ids
    assert out.prompt_logprobs[0].logprob is None and out.prompt_logprobs[0].top == ()
    assert all(len(e.top) == 2 and e.logprob <= 0 for e in out.prompt_logprobs[1:])
    for entry in out.logprobs:  # greedy: each answer token is the top one, its logprob the top's
        assert len(entry.top) == 3 and entry.top[0].token_id == entry.token_id
        assert entry.logprob == entry.top[0].logprob >= entry.top[1].logprob >= entry.top[2].logprob
    plain = backend.generate(PROMPTS[:1], GenerationOptions(max_new_tokens=6))[0]
    assert plain.text == out.text and plain.logprobs is None and plain.prompt_logprobs is None


@pytest.mark.parametrize("backend_name", ["llama", "bf16"])
def test_each_entry_has_its_tokens_own_bytes(backend_name, request):
    # OpenAI's `bytes`: a token that holds part of a UTF-8 character shows U+FFFD as text, but its
    # bytes are its own, so the entries' bytes joined are the answer's bytes
    backend = request.getfixturevalue(backend_name)
    outs = backend.generate(PROMPTS, GenerationOptions(max_new_tokens=24, logprobs=2))
    partial = 0
    for out in outs:
        assert b"".join(e.bytes for e in out.logprobs).decode("utf-8", errors="replace") == out.text
        for entry in out.logprobs:
            partial += "\ufffd" in entry.text and "\ufffd".encode() not in entry.bytes
            assert all(t.bytes.decode("utf-8", errors="replace") == t.text for t in entry.top)
    assert partial > 0  # the random model writes partial characters (else this test shows nothing)


@pytest.mark.parametrize("backend_name", ["llama", "bf16"])
def test_logprobs_are_the_same_in_a_batch_as_alone(backend_name, request):
    backend = request.getfixturevalue(backend_name)
    options = GenerationOptions(max_new_tokens=8, logprobs=2, prompt_logprobs=1)
    batched = backend.generate(PROMPTS, options)
    for prompt, together in zip(PROMPTS, batched):
        alone = backend.generate([prompt], options)[0]
        assert [e.logprob for e in together.logprobs] == [e.logprob for e in alone.logprobs]
        assert [e.logprob for e in together.prompt_logprobs] == [e.logprob for e in alone.prompt_logprobs]
        assert together.logprobs == alone.logprobs


@pytest.mark.parametrize("backend_name", ["llama", "bf16"])
def test_token_id_prompts_and_scoring_only(backend_name, request):
    backend = request.getfixturevalue(backend_name)
    ids = backend.tokenize(PROMPTS[1])
    by_text = backend.generate([PROMPTS[1]], GenerationOptions(max_new_tokens=5, prompt_logprobs=0))[0]
    by_ids = backend.generate([ids], GenerationOptions(max_new_tokens=5, prompt_logprobs=0))[0]
    assert by_ids.text == by_text.text and by_ids.prompt_tokens == len(ids)
    assert by_ids.prompt_logprobs == by_text.prompt_logprobs
    scored = backend.generate([ids], GenerationOptions(max_new_tokens=0, prompt_logprobs=0))[0]
    assert scored.text == "" and scored.completion_tokens == 0 and scored.finish_reason == "length"
    assert scored.prompt_logprobs == by_text.prompt_logprobs
    bad = backend.generate([[1, 10**7], ids], GenerationOptions(max_new_tokens=2))
    assert bad[0].finish_reason == "error" and "10000000" in bad[0].error and bad[1].error is None
    assert backend.detokenize(backend.tokenize("Hello world!", add_bos=False)) == "Hello world!"


def test_both_backends_give_the_same_logprobs_on_the_same_weights(llama, fp32):
    options = GenerationOptions(max_new_tokens=8, logprobs=3, prompt_logprobs=3)
    gaps = []
    for a, b in zip(llama.generate(PROMPTS, options), fp32.generate(PROMPTS, options)):
        assert a.text == b.text
        assert [e.token_id for e in a.prompt_logprobs] == [e.token_id for e in b.prompt_logprobs]
        assert [e.token_id for e in a.logprobs] == [e.token_id for e in b.logprobs]
        for x, y in zip(a.prompt_logprobs[1:] + a.logprobs, b.prompt_logprobs[1:] + b.logprobs):
            gaps.append(abs(x.logprob - y.logprob))
            gaps += [abs(s.logprob - t.logprob) for s, t in zip(x.top, y.top, strict=True)]
    assert len(gaps) > 200 and max(gaps) < SAME_WEIGHTS_MAX and float(np.mean(gaps)) < SAME_WEIGHTS_MEAN


def test_logprob_options_are_checked():
    with pytest.raises(GenerationOptionError, match="logprobs must be an integer in"):
        GenerationOptions(logprobs=21)
    with pytest.raises(GenerationOptionError, match="max_new_tokens"):
        GenerationOptions(max_new_tokens=0)  # 0 only when the prompt is scored
    assert GenerationOptions(max_new_tokens=0, prompt_logprobs=0).max_new_tokens == 0


@pytest.mark.parametrize("backend", ["llama_cpp", "transformers"])
def test_the_runner_fills_logprobs_and_scores(backend, tiny_chat_dir, tiny_gguf):
    model = str(tiny_gguf if backend == "llama_cpp" else tiny_chat_dir)
    runner = BasicModelRunner(model, backend=backend, template="raw")
    out = runner.generate(PROMPTS[0], max_new_tokens=5, logprobs=5)
    assert len(out.logprobs) == 5 and all(len(e.top) == 5 for e in out.logprobs)
    # the random model's greedy next token here is a plain word (most of its answers are stray bytes,
    # which do not survive a round trip through text)
    prompt = "think of Mars? Who"
    first = runner.generate(prompt, max_new_tokens=1, logprobs=1)
    assert first.text == " over"
    score = runner.score(prompt, first.text)
    assert score.greedy and [t.token_id for t in score.tokens] == [first.logprobs[0].token_id]
    assert score.logprob == pytest.approx(first.logprobs[0].logprob, abs=0.02)
    longer = runner.score(prompt, " over the lazy dog")  # causal: its first token scores the same
    assert len(longer.tokens) > 1 and longer.tokens[0] == score.tokens[0]
    assert longer.logprob == pytest.approx(sum(t.logprob for t in longer.tokens)) and not longer.greedy
    pair = runner.score([prompt, PROMPTS[1]], [first.text, " zebra"])
    assert pair[0].logprob == pytest.approx(score.logprob, abs=1e-4) and pair[1].logprob < 0
    with pytest.raises(PromptError, match="continuation to score is empty"):
        runner.score(prompt, "")
