"""Token log-probabilities: the record every backend fills, and the one numpy function that computes them.

Both backends hand their raw logits (float32, before penalties, temperature, top_p or a JSON grammar:
the model's own distribution, as vLLM reports by default) to `logprob_rows`, so the arithmetic is the
same whatever computed the logits; only the logits themselves differ between backends.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

MAX_TOP_LOGPROBS = 20  # OpenAI's limit for chat `top_logprobs`


@dataclass(frozen=True)
class TopLogprob:
    """One of the most likely tokens at a position."""

    token_id: int
    text: str
    logprob: float
    # the token's own bytes where the backend knows them (a partial UTF-8 character's, which `text`
    # shows as U+FFFD); None: `text` encoded
    piece: bytes | None = field(default=None, compare=False)

    @property
    def bytes(self) -> bytes:
        return self.piece if self.piece is not None else self.text.encode("utf-8")


@dataclass(frozen=True)
class TokenLogprob:
    """A token of a prompt or an answer with its log-probability given the tokens before it.

    `logprob` is None for a prompt's first token (nothing comes before it). `top` holds the k most likely
    tokens at that position, most likely first (k = the `logprobs` asked for; ties by token id).
    """

    token_id: int
    text: str
    logprob: float | None
    top: tuple[TopLogprob, ...] = field(default=())
    piece: bytes | None = field(default=None, compare=False)  # as TopLogprob.piece

    @property
    def bytes(self) -> bytes:
        return self.piece if self.piece is not None else self.text.encode("utf-8")

    @property
    def greedy(self) -> bool:
        """Whether no other token was more likely here (True when nothing was asked for the top)."""
        return self.logprob is None or not self.top or self.logprob >= self.top[0].logprob


@dataclass(frozen=True)
class Score:
    """How likely a model finds a continuation after a prompt (lm-eval's loglikelihood).

    `logprob` is the sum of the continuation tokens' log-probabilities; `greedy` says whether each of
    them was the model's most likely token (greedy decoding would have written the continuation).
    """

    logprob: float
    greedy: bool
    tokens: tuple[TokenLogprob, ...]


def logprob_rows(
    logits: np.ndarray,
    chosen: Sequence[int],
    k: int,
    text_of: Callable[[int], str],
    piece_of: Callable[[int], bytes | None] | None = None,
) -> list[TokenLogprob]:
    """For each row of `logits` [rows, vocab], the log-probability of `chosen[row]` and the `k` most
    likely tokens (log-softmax in float32, the max subtracted first); `piece_of` gives a token's own
    bytes, where the backend knows them."""
    piece_of = piece_of or (lambda _: None)
    logits = np.asarray(logits, dtype=np.float32)
    if logits.ndim == 1:
        logits = logits[None, :]
    if logits.shape[0] == 0:
        return []
    rows = np.arange(logits.shape[0])
    top_logit = logits.max(axis=1)
    log_norm = top_logit + np.log(np.exp(logits - top_logit[:, None]).sum(axis=1, dtype=np.float32))
    chosen_ids = np.asarray(chosen, dtype=np.int64)
    chosen_lp = logits[rows, chosen_ids] - log_norm
    tops: list[tuple[TopLogprob, ...]] = [()] * len(rows)
    for r in rows if k > 0 else ():
        tops[r] = tuple(
            TopLogprob(t, text_of(t), float(logits[r, t] - log_norm[r]), piece_of(t))
            for t in _top_ids(logits[r], k)
        )
    return [
        TokenLogprob(int(t), text_of(int(t)), float(lp), top, piece_of(int(t)))
        for t, lp, top in zip(chosen_ids.tolist(), chosen_lp.tolist(), tops, strict=True)
    ]


def _top_ids(row: np.ndarray, k: int) -> list[int]:
    """The k largest entries' ids, largest first, ties to the lower id: k argmax passes (for k <= 20 about
    10x faster than argpartition over a whole vocabulary, which a logprobs request pays every token)."""
    row = row.copy()
    ids = []
    for _ in range(min(k, row.size)):
        t = int(np.argmax(row))
        ids.append(t)
        row[t] = -np.inf
    return ids


def first_token(token_id: int, text_of: Callable[[int], str]) -> TokenLogprob:
    """A prompt's first token: no log-probability (nothing before it)."""
    return TokenLogprob(token_id, text_of(token_id), None)
