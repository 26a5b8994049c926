"""How an answer is scored against an expected answer: normalised exact match, containment, token F1.

Answers are normalised as SQuAD does (case, punctuation, articles, spaces) before any comparison.
The held-out evaluation, compare's `incorrect` flag and the benchmarks all score through here.

>>> score("It is Elon Musk.", "Elon Musk")
{'exact': 0.0, 'contained': 1.0}
"""

from __future__ import annotations

import re
import string

_ARTICLES = re.compile(r"\b(a|an|the)\b")
_PUNCT = str.maketrans("", "", string.punctuation)


def normalise(text: str) -> str:
    """Lower case, no punctuation, no articles, single spaces (SQuAD's answer normalisation)."""
    text = _ARTICLES.sub(" ", text.lower().translate(_PUNCT))
    return " ".join(text.split())


def names_any(text: str, phrases: str | list[str]) -> bool:
    """Does `text` name one of `phrases` (a key phrase, or a list of accepted ones), normalised?"""
    got = normalise(text)
    return any(
        normalise(p) and normalise(p) in got for p in ([phrases] if isinstance(phrases, str) else phrases)
    )


def score(output: str, expected: str) -> dict[str, float]:
    got, want = normalise(output), normalise(expected)
    return {"exact": float(got == want), "contained": float(bool(want) and want in got)}


def token_f1(answer: str, expected: str) -> float:
    """SQuAD's token F1 between the normalised answer and expected answer."""
    got, want = normalise(answer).split(), normalise(expected).split()
    if not got or not want:
        return 0.0
    common = sum(min(got.count(w), want.count(w)) for w in set(want))
    if common == 0:
        return 0.0
    precision, recall = common / len(got), common / len(want)
    return 2 * precision * recall / (precision + recall)
