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


def sample_next(
    logits: np.ndarray, history: Sequence[int], options: GenerationOptions, rng: np.random.Generator
) -> int:
    """Pick the next token id from `logits` [vocab] given the tokens so far (`history`)."""
    logits = apply_repetition_penalty(
        np.asarray(logits, dtype=np.float32), history, options.repetition_penalty
    )
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
) -> list[int]:
    """`sample_next` for each row of `logits` [batch, vocab]; plain greedy is one vectorised argmax."""
    if options.greedy and options.repetition_penalty == 1.0:
        return [int(i) for i in np.argmax(logits, axis=-1)]
    return [
        sample_next(row, hist, options, rng) for row, hist, rng in zip(logits, histories, rngs, strict=True)
    ]
