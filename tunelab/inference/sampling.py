"""Next-token choice from raw logits, in numpy, so every backend samples the same way."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tunelab.inference.options import GenerationOptions


def apply_repetition_penalty(logits: np.ndarray, history: Sequence[int], penalty: float) -> np.ndarray:
    """CTRL/HF-style penalty on every token already seen (prompt and generated), once per token.

    Dividing a negative logit would make it *more* likely, hence the sign-dependent multiply.
    """
    if penalty == 1.0 or len(history) == 0:
        return logits
    seen = np.unique(np.asarray(history, dtype=np.int64))
    picked = logits[seen]
    logits = logits.copy()
    logits[seen] = np.where(picked > 0, picked / penalty, picked * penalty)
    return logits


def apply_openai_penalties(
    logits: np.ndarray, generated: Sequence[int], presence: float, frequency: float
) -> np.ndarray:
    """OpenAI's presence and frequency penalties: a token the answer holds c times (the prompt does not
    count) loses `c * frequency + presence` from its logit."""
    if (presence == 0.0 and frequency == 0.0) or len(generated) == 0:
        return logits
    seen, counts = np.unique(np.asarray(generated, dtype=np.int64), return_counts=True)
    logits = logits.copy()
    logits[seen] -= (counts * frequency + presence).astype(logits.dtype)
    return logits


def penalize(
    logits: np.ndarray, history: Sequence[int], n_prompt: int, options: GenerationOptions
) -> np.ndarray:
    """Every penalty of `options` on `logits` [vocab]; `history` is the prompt's `n_prompt` tokens then
    the answer's. The repetition penalty first, then OpenAI's (as vLLM and transformers order them)."""
    logits = apply_repetition_penalty(logits, history, options.repetition_penalty)
    return apply_openai_penalties(
        logits, history[n_prompt:], options.presence_penalty, options.frequency_penalty
    )


def sample_next(
    logits: np.ndarray,
    history: Sequence[int],
    options: GenerationOptions,
    rng: np.random.Generator,
    n_prompt: int = 0,
) -> int:
    """Pick the next token id from `logits` [vocab] given the tokens so far (`history`, of which the
    first `n_prompt` are the prompt)."""
    logits = penalize(np.asarray(logits, dtype=np.float32), history, n_prompt, options)
    if options.greedy:
        return int(np.argmax(logits))

    scaled = logits.astype(np.float64) / options.temperature
    if 0 < options.top_k < scaled.size:
        kth = np.partition(scaled, -options.top_k)[-options.top_k]
        scaled = np.where(scaled < kth, -np.inf, scaled)

    order = np.argsort(-scaled, kind="stable")
    probs = np.exp(scaled[order] - scaled[order[0]])
    probs /= probs.sum()
    if options.top_p < 1.0:
        # Keep the smallest prefix whose mass reaches top_p; the token that crosses it stays in.
        keep = int(np.searchsorted(np.cumsum(probs), options.top_p)) + 1
        probs = probs[:keep] / probs[:keep].sum()
        order = order[:keep]
    return int(order[rng.choice(len(probs), p=probs)])


def sample_batch(
    logits: np.ndarray,
    histories: Sequence[Sequence[int]],
    options: GenerationOptions,
    rngs: Sequence[np.random.Generator],
    n_prompts: Sequence[int] | None = None,
) -> list[int]:
    """`sample_next` for each row of `logits` [batch, vocab]; plain greedy is one vectorised argmax.
    Each row is its own: the same row gives the same token whatever else is in the batch."""
    if options.greedy and not options.penalized:
        return [int(i) for i in np.argmax(logits, axis=-1)]
    n_prompts = n_prompts if n_prompts is not None else [0] * len(histories)
    return [
        sample_next(row, hist, options, rng, n)
        for row, hist, rng, n in zip(logits, histories, rngs, n_prompts, strict=True)
    ]
