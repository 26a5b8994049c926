"""Sentence embeddings from a causal language model, for `/v1/embeddings` and `engine.embed`.

A causal LM has no embedding head, so tunelab takes the mean of the last layer's hidden states (after
the final norm) over the input's tokens, and scales it to unit length, as OpenAI's vectors are:
cosine similarity is then a dot product. Both local backends compute the same thing: llama.cpp in its
embedding mode with mean pooling (a second context over the already loaded weights), transformers from
the model's last hidden state. Each input is embedded alone, so a vector does not depend on the batch.

How good are they? A 135M chat model is no embedding model: similar sentences do score higher than
unrelated ones (tests/test_embeddings.py checks it on a small set), but for retrieval quality use a
dedicated embedding model served elsewhere.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass

import numpy as np

from tunelab.errors import PromptError


@dataclass
class Embedding:
    """One input's vector (unit length, float32) and how many tokens the input took."""

    vector: np.ndarray
    tokens: int


def check_input(tokens: list[int], n_vocab: int, context_length: int) -> None:
    """A PromptError naming what is wrong with an input's token ids: none, not in the vocabulary, too many."""
    bad = [t for t in tokens if not 0 <= t < n_vocab]
    if bad:
        raise PromptError(f"token ids must be in [0, {n_vocab}); got {bad[:5]}")
    if not tokens:
        raise PromptError("an input to embed is empty")
    if len(tokens) > context_length:
        raise PromptError(
            f"an input to embed is {len(tokens)} tokens; the model takes at most {context_length}"
        )


def unit(vector: np.ndarray) -> np.ndarray:
    """`vector` as float32 scaled to length 1 (a zero vector stays zero)."""
    vector = np.asarray(vector, dtype=np.float32)
    norm = float(np.linalg.norm(vector))
    return vector / norm if norm > 0 else vector


def as_base64(vector: np.ndarray) -> str:
    """OpenAI's `encoding_format="base64"`: the float32 values, little-endian, base64-encoded."""
    return base64.b64encode(np.asarray(vector, dtype="<f4").tobytes()).decode("ascii")


def from_base64(text: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(text), dtype="<f4")


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.dot(unit(a), unit(b)))
