"""The same greedy text for a prompt in a batch as alone, on the transformers backend in bf16 on a CPU.

Measured on this project's CPU (torch 2.13, bf16; benchmarks/RESULTS.md, 2026-12-01): torch's kernels
give a row of a batch other bits than the same row alone in three places, and greedy answers part
once one bit flips a choice. Each is taken away here:

1. A matmul with one row (a lone prompt's decode step) takes another kernel than one with several
   rows: 1 ulp apart in a few outputs. Rows from 2 up agree (every linear call of a decode checked).
   So a lone prompt runs as two identical rows (`MIN_ROWS`).
2. torch's fused CPU attention (`scaled_dot_product_attention`) gives a row other bits depending on
   its place in the batch. `grouped_attention` computes attention with plain matmuls and a float32
   softmax instead, each key/value head's query heads stacked as rows of one matmul (no key/value
   copy per query head, as `repeat_kv` makes): the same shapes for a row wherever it sits.
3. Attention over more key positions (a batch pads to its longest prompt) sums in another order.
   Prompts are left-padded to a multiple of `WIDTH_STEP` tokens and batched only with prompts of the
   same padded width (`padded_width`), so each row's attention runs over the key positions it
   would have alone.

`register()` adds the attention function and its mask (transformers' additive eager mask: a custom
attention name gets no mask at all otherwise) under `ATTENTION`, for `attn_implementation=`.
"""

from __future__ import annotations

import torch

ATTENTION = "tunelab_grouped"
WIDTH_STEP = 64
MIN_ROWS = 2


def padded_width(n_tokens: int) -> int:
    return -(-n_tokens // WIDTH_STEP) * WIDTH_STEP


def grouped_attention(
    module: torch.nn.Module,
    query: torch.Tensor,  # (batch, heads, q_len, head_dim)
    key: torch.Tensor,  # (batch, kv_heads, kv_len, head_dim)
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,  # additive, (batch, 1, q_len, >= kv_len); sliding windows in it
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    if dropout:
        raise ValueError("tunelab's batch-invariant attention is for inference (dropout must be 0)")
    if kwargs.get("softcap") is not None:  # models that need it are not given this attention
        raise ValueError("tunelab's batch-invariant attention has no logit softcap")
    batch, heads, q_len, head_dim = query.shape
    kv_heads, kv_len = key.shape[1], key.shape[2]
    group = heads // kv_heads
    # Query head h reads key/value head h // group (transformers' repeat_kv order).
    stacked = query.reshape(batch, kv_heads, group * q_len, head_dim)
    scores = torch.matmul(stacked, key.transpose(2, 3)) * (scaling if scaling is not None else head_dim**-0.5)
    if attention_mask is not None:
        mask = attention_mask[:, :, :, :kv_len]
        scores = scores + (mask.repeat(1, 1, group, 1) if group > 1 else mask)
    probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(value.dtype)
    out = torch.matmul(probs, value).reshape(batch, heads, q_len, head_dim)
    return out.transpose(1, 2).contiguous(), None


def suits(config) -> bool:
    """Models whose attention is plain softmax attention (a sliding window is in the mask)."""
    text = getattr(config, "text_config", None) or config
    return getattr(text, "attn_logit_softcapping", None) is None


def register() -> str:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask

    AttentionInterface.register(ATTENTION, grouped_attention)
    AttentionMaskInterface.register(ATTENTION, eager_mask)
    return ATTENTION
