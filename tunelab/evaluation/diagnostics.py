"""Why an answer looks wrong, measured: each diagnostic is a number and a flag a person would agree with.

- ``echo``: the answer repeats or continues the question instead of answering: it holds most of the
  prompt's word n-grams and adds little of its own (so restating the question *and answering it* is not
  echo), or it goes on with the prompt's unfinished sentence;
- ``ramble``: the answer repeats itself (share of its word 4-grams seen earlier in it);
- ``truncated``: the token limit cut it (``finish_reason == "length"``);
- ``self_dialogue``: the model writes further turns itself (lines opening with a speaker label such as
  ``Customer:`` or ``User:``, or a chat template's turn markers);
- ``empty``: the model stopped at once and said nothing;
- ``incorrect``: an expected answer was given and the reply does not contain it (normalised).

``template_mismatch`` compares answers across templates, so it lives with the comparison, not here.
These functions only read text: they work for any prompt, not only the lesson's four.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tunelab.evaluation.scoring import score, token_f1

ECHO_THRESHOLD = 0.5
NOVELTY_THRESHOLD = 0.5
RAMBLE_THRESHOLD = 0.2
_WORD = re.compile(r"[a-z0-9']+")
_SPEAKER = re.compile(r"^\s*([A-Z][A-Za-z]{0,20}(?: [A-Z][A-Za-z]{0,20})?)\s*:", re.MULTILINE)
_ROLE_NAMES = {"user", "human", "customer", "assistant", "agent", "system", "q", "a", "question", "answer"}
_MARKER_WORDS = (
    "[INST]",
    "[/INST]",
    "<<SYS>>",
    "<</SYS>>",
    "<|im_start|>",
    "<|im_end|>",
    "<start_of_turn>",
    "<end_of_turn>",
)
_TURN_MARKERS = ("[INST]", "<|im_start|>", "<start_of_turn>", "<|start_header_id|>", "### Instruction")


@dataclass
class Diagnosis:
    """Scores (name -> number) and the flags they raise, for one answer."""

    scores: dict[str, float] = field(default_factory=dict)
    flags: list[str] = field(default_factory=list)


def _words(text: str) -> list[str]:
    return _WORD.findall(text.lower())


def _ngrams(words: list[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]


def echo_score(prompt: str, answer: str) -> float:
    """Share of the prompt's word trigrams (bigrams or words for short prompts) that the answer repeats."""
    prompt_words, answer_words = _words(prompt), _words(answer)
    n = 3 if len(prompt_words) >= 6 else 2 if len(prompt_words) >= 3 else 1
    wanted = set(_ngrams(prompt_words, n))
    if not wanted or not answer_words:
        return 0.0
    return len(wanted & set(_ngrams(answer_words, n))) / len(wanted)


def novelty_score(prompt: str, answer: str) -> float:
    """Share of the answer's word n-grams (n as in `echo_score`, counted each time they occur, template
    markers such as ``[INST]`` left out) that are not in the prompt.

    An answer that restates the question and then answers it ("The capital of France is Paris, ...")
    covers the prompt but is mostly new; an echo is mostly the prompt again, often many times."""
    for marker in _MARKER_WORDS:
        answer = answer.replace(marker, " ")
    prompt_words, answer_words = _words(prompt), _words(answer)
    n = 3 if len(prompt_words) >= 6 else 2 if len(prompt_words) >= 3 else 1
    grams = _ngrams(answer_words, n)
    if not grams:
        return 1.0
    known = set(_ngrams(prompt_words, n))
    return sum(gram not in known for gram in grams) / len(grams)


def ramble_score(answer: str) -> float:
    """Share of the answer's word 4-grams that already occurred earlier in it (0 = no repetition)."""
    grams = _ngrams(_words(answer), 4)
    if len(grams) < 4:
        return 0.0
    seen: set[tuple[str, ...]] = set()
    repeats = 0
    for gram in grams:
        repeats += gram in seen
        seen.add(gram)
    return repeats / len(grams)


def continues_prompt(prompt: str, answer: str) -> bool:
    """The answer goes on with the prompt's unfinished sentence (" on a chair?", ", and then ...")
    instead of starting one of its own. A prompt that ends a sentence or a speaker label cannot be
    continued this way."""
    if re.search(r"[.?!:)\]\"']\s*$", prompt):
        return False
    head = answer.lstrip(" ")
    return bool(head) and (head[0] in ",;.)" or head[0].islower())


def speakers(text: str) -> set[str]:
    return {name.lower() for name in _SPEAKER.findall(text)}


_OWN_LABELS = {"assistant", "answer", "a"}  # how a model may label its own single reply


def self_dialogue_turns(prompt: str, answer: str) -> int:
    """Turns the model wrote beyond its own reply: lines opening with a speaker of the prompt or a role
    name, and chat-template turn markers.

    The answerer's own label does not count until someone else has spoken: after a prompt ending
    "Agent:", a line "Agent: ..." is its reply; elsewhere "Answer: Paris" is one reply, not a dialogue.
    """
    known = speakers(prompt) | _ROLE_NAMES
    label = re.search(r"(?:^|\n)\s*([A-Z][A-Za-z]{0,20}(?: [A-Z][A-Za-z]{0,20})?)\s*:\s*$", prompt)
    own = {label.group(1).lower()} if label else _OWN_LABELS
    lines = 0
    for name in (n.lower() for n in _SPEAKER.findall(answer)):
        if name in known and (name not in own or lines):
            lines += 1
    markers = sum(answer.count(marker) for marker in _TURN_MARKERS)
    return lines + markers


def diagnose(
    prompt: str, answer: str, finish_reason: str, expected: str | None = None, *, raw: bool = True
) -> Diagnosis:
    """Every diagnostic for one answer to `prompt`. `raw`: the model saw the prompt as it is (no
    template): only then can an answer go on with the prompt's own unfinished sentence; through a
    template the prompt's turn is closed, and an answer starting in lower case is still an answer."""
    result = Diagnosis()
    result.scores["echo"] = round(echo_score(prompt, answer), 3)
    result.scores["novelty"] = round(novelty_score(prompt, answer), 3)
    result.scores["continues"] = float(raw and continues_prompt(prompt, answer))
    result.scores["ramble"] = round(ramble_score(answer), 3)
    result.scores["truncated"] = float(finish_reason == "length")
    result.scores["self_dialogue"] = float(self_dialogue_turns(prompt, answer))
    repeats_prompt = result.scores["echo"] >= ECHO_THRESHOLD and result.scores["novelty"] < NOVELTY_THRESHOLD
    if repeats_prompt or result.scores["continues"]:
        result.flags.append("echo")
    if result.scores["ramble"] >= RAMBLE_THRESHOLD:
        result.flags.append("ramble")
    if finish_reason == "length":
        result.flags.append("truncated")
    if result.scores["self_dialogue"] > 0:
        result.flags.append("self_dialogue")
    if not _words(answer):
        result.flags.append("empty")
    if expected is not None:
        scores = score(answer, expected)
        result.scores["exact"] = scores["exact"]
        result.scores["contained"] = scores["contained"]
        result.scores["token_f1"] = round(token_f1(answer, expected), 3)
        if not scores["contained"]:
            result.flags.append("incorrect")
    return result
