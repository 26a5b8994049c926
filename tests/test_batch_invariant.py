"""The transformers backend in bf16 on a CPU: a prompt's greedy answer is the same in a batch as alone."""

from __future__ import annotations

import pytest
import torch

from tunelab.inference.backends import batch_invariant
from tunelab.inference.backends.transformers_backend import TransformersBackend
from tunelab.inference.device import cpu_has_native_bf16
from tunelab.inference.options import GenerationOptions

# Lengths on both sides of the 64-token width step, so a batch holds prompts of several widths.
PROMPTS = [
    "Hello",
    "Tell me about the sea and the ships on it.",
    " ".join(["word"] * 30),
    " ".join(["a long prompt about rivers"] * 5),
    "Why?",
    " ".join(["many more words here"] * 7),
    "What is the capital of the land beyond the hills, and who rules it now?",
    " ".join(["x y"] * 40),
]


@pytest.fixture(scope="module")
def bf16_backend(tiny_chat_dir):
    return TransformersBackend(str(tiny_chat_dir), device="cpu", dtype="bfloat16", max_batch=4)


def test_bf16_on_a_cpu_takes_the_batch_invariant_path(bf16_backend, tiny_chat_dir):
    assert bf16_backend.batch_invariant
    assert bf16_backend.model.config._attn_implementation == batch_invariant.ATTENTION
    fp32 = TransformersBackend(str(tiny_chat_dir), device="cpu", dtype="float32")
    assert not fp32.batch_invariant
    auto = TransformersBackend(str(tiny_chat_dir), device="cpu")
    assert auto.model.dtype == (torch.bfloat16 if cpu_has_native_bf16() else torch.float32)


def test_grouped_attention_equals_torch_attention_with_padding_and_gqa():
    torch.manual_seed(0)
    module = torch.nn.Module()
    batch, heads, kv_heads, head_dim = 3, 6, 2, 16
    for q_len, kv_len in ((1, 20), (20, 20)):
        q = torch.randn(batch, heads, q_len, head_dim)
        k = torch.randn(batch, kv_heads, kv_len, head_dim)
        v = torch.randn(batch, kv_heads, kv_len, head_dim)
        keep = torch.ones(batch, 1, q_len, kv_len, dtype=torch.bool)
        keep[1, :, :, :5] = False  # left padding of row 1
        keep &= torch.ones(q_len, kv_len, dtype=torch.bool).tril(kv_len - q_len)  # causal
        keep[1, :, : min(5, q_len), :] = True  # padded query rows: anything finite
        additive = torch.zeros(keep.shape).masked_fill(~keep, torch.finfo(torch.float32).min)
        out, _ = batch_invariant.grouped_attention(module, q, k, v, additive, scaling=head_dim**-0.5)
        expected = torch.nn.functional.scaled_dot_product_attention(
            q, k, v, attn_mask=keep, enable_gqa=True
        ).transpose(1, 2)
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-4)


def test_batched_greedy_equals_each_prompt_alone(bf16_backend):
    options = GenerationOptions(max_new_tokens=24)
    batched = bf16_backend.generate(PROMPTS, options)
    alone = [bf16_backend.generate([p], options)[0] for p in PROMPTS]
    assert [o.text for o in batched] == [o.text for o in alone]
    assert all(o.error is None and o.completion_tokens > 0 for o in batched)


def test_batches_hold_one_padded_width_and_a_lone_prompt_runs_as_two_rows(bf16_backend, monkeypatch):
    lengths = [len(bf16_backend.tokenize(p)) for p in PROMPTS]
    assert len({batch_invariant.padded_width(n) for n in lengths}) >= 2  # the prompts span widths
    shapes = []
    original = bf16_backend.model.generate

    def spy(*args, **kwargs):
        shapes.append(tuple(kwargs["input_ids"].shape))
        return original(*args, **kwargs)

    monkeypatch.setattr(bf16_backend.model, "generate", spy)
    bf16_backend.generate(PROMPTS, GenerationOptions(max_new_tokens=2))
    assert all(width % batch_invariant.WIDTH_STEP == 0 for _, width in shapes)
    assert all(rows <= 4 for rows, _ in shapes)  # max_batch
    assert len(shapes) >= 3
    shapes.clear()
    bf16_backend.generate(["Hello"], GenerationOptions(max_new_tokens=2))
    assert shapes == [(batch_invariant.MIN_ROWS, batch_invariant.WIDTH_STEP)]


def test_streaming_a_lone_prompt_reports_it_once(bf16_backend):
    seen = []
    options = GenerationOptions(max_new_tokens=6)
    out = bf16_backend.generate(["Hello"], options, on_text=lambda i, text: seen.append(i))
    assert seen and set(seen) == {0}
    assert out[0].completion_tokens > 0
