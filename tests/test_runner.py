"""BasicModelRunner on a tiny random-weight model: batching, padding, stops, finish reasons, errors."""

import json

import pytest

from tunelab import BasicModelRunner, BatchError, Completion, GenerationOptionError, PromptError

PROMPTS = [
    "Tell me how to train my dog to sit",
    "Hi",
    "What do you think of Mars? Who is the boss of Twitter? The quick brown fox jumps over the lazy dog.",
]


@pytest.fixture(scope="module")
def chat(tiny_chat_dir):
    return BasicModelRunner(str(tiny_chat_dir), backend="transformers", max_new_tokens=12)


def test_string_in_string_out_and_list_in_list_out(chat):
    one = chat(PROMPTS[0])
    many = chat(PROMPTS)
    assert isinstance(one, str) and one
    assert isinstance(many, list) and len(many) == 3 and all(isinstance(t, str) for t in many)


def test_batch_keeps_order_and_matches_single_prompts(chat):
    # Left padding and the attention mask must make each batched answer what the prompt gets alone.
    batched = chat(PROMPTS)
    singles = [chat(p) for p in PROMPTS]
    assert batched == singles
    assert len(set(batched)) > 1  # different prompts, different answers: order is really checked


def test_batch_is_one_generate_call(chat, monkeypatch):
    backend = chat.engine.load(chat.resolved, "transformers")
    calls = []
    original = backend.model.generate

    def counting(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape)
        return original(*args, **kwargs)

    monkeypatch.setattr(backend.model, "generate", counting)
    chat(PROMPTS)
    assert len(calls) == 1 and calls[0][0] == len(PROMPTS)


def test_greedy_is_deterministic_and_seeded_sampling_repeats(chat):
    assert chat(PROMPTS[0]) == chat(PROMPTS[0])
    a = chat(PROMPTS[0], temperature=1.0, seed=7)
    b = chat(PROMPTS[0], temperature=1.0, seed=7)
    assert a == b


def test_completion_record_fields_and_length_finish(chat):
    c = chat.generate(PROMPTS[0], max_new_tokens=5)
    assert isinstance(c, Completion)
    assert c.finish_reason == "length" and c.completion_tokens == 5 and c.truncated
    assert c.prompt_tokens > 5
    assert c.model == str(chat.resolved.name) and c.backend == "transformers"
    assert c.template == "chatml (model's own)"
    assert c.latency_s > 0 and c.tokens_per_s > 0
    assert c.max_new_tokens == 5


def test_lamini_max_tokens_is_accepted(chat):
    assert chat.generate(PROMPTS[0], max_tokens=3).completion_tokens == 3
    with pytest.raises(GenerationOptionError, match="max_new_tokens or max_tokens"):
        chat.generate(PROMPTS[0], max_tokens=3, max_new_tokens=4)
    with pytest.raises(GenerationOptionError, match="unknown generation option"):
        chat.generate(PROMPTS[0], max_lenght=3)


def test_stop_string_cuts_the_answer_and_finishes_with_stop(chat):
    full = chat(PROMPTS[0], max_new_tokens=12, template="raw")
    stop = full.strip()[len(full.strip()) // 2 :][:3]
    assert stop
    c = chat.generate(PROMPTS[0], max_new_tokens=12, template="raw", stop=[stop])
    assert c.finish_reason == "stop"
    assert stop not in c.text and full.startswith(c.text)
    assert c.completion_tokens < 12


def test_end_of_generation_token_stops_with_stop(tmp_path):
    # Make a token the tiny model emits greedily an end-of-generation id: it must stop there.
    from tests.tiny_models import make_tiny_llama

    model_dir = make_tiny_llama(tmp_path / "eos-model", chat=False)
    runner = BasicModelRunner(str(model_dir), backend="transformers")
    backend = runner.engine.load(runner.resolved, "transformers")
    first = runner.generate("Hello world!", max_new_tokens=6)
    import torch

    prompt_ids = backend.tokenize("Hello world!")
    out = backend.model.generate(torch.tensor([prompt_ids]), max_new_tokens=6, do_sample=False)
    eos_like = int(out[0, len(prompt_ids) + 2])
    config_path = model_dir / "generation_config.json"
    config = json.loads(config_path.read_text())
    config["eos_token_id"] = [config["eos_token_id"], eos_like]
    config_path.write_text(json.dumps(config))
    fresh = BasicModelRunner(str(model_dir), backend="transformers", config={"device": "cpu"})
    fresh.engine._backends.clear()
    c = fresh.generate("Hello world!", max_new_tokens=6)
    assert c.finish_reason == "stop"
    assert c.completion_tokens < 6
    assert first.text.startswith(c.text)


def test_base_model_runs_raw_by_default(tiny_base_dir):
    base = BasicModelRunner(str(tiny_base_dir), backend="transformers", max_new_tokens=4)
    assert base.generate("Hi").template == "raw"
    assert base.generate("Hi", template="llama2").template == "llama2"


def test_empty_prompt_is_a_clear_error(chat):
    with pytest.raises(PromptError, match="empty"):
        chat("   ")


def test_one_bad_prompt_does_not_lose_the_others(chat):
    with pytest.raises(BatchError) as info:
        chat(["Hi", 42, "", PROMPTS[0]])
    err = info.value
    assert "#1" in str(err) and "int, not a string" in str(err) and "#2" in str(err)
    records = err.completions
    assert [c.finish_reason == "error" for c in records] == [False, True, True, False]
    assert records[0].text == chat("Hi") and records[3].text == chat(PROMPTS[0])
    records = chat.generate(["Hi", None])
    assert records[0].text and records[1].error


def test_prompt_longer_than_the_context_is_an_error_naming_the_sizes(chat):
    too_long = "dog " * 400  # the tiny model's context is 256 positions
    with pytest.raises(PromptError, match=r"prompt is \d+ tokens; the model's context is 256"):
        chat(too_long)
    records = chat.generate(["Hi", too_long])
    assert records[0].error is None and records[1].finish_reason == "error"
