"""Rewordings that say a question's nouns in the base model's own words.

A question worded otherwise often names a thing by what it is rather than by its word: "the UI that
comes bundled with the tool" for "the dashboard", "the number of people who work there" for "the
employees". So each noun of the training questions (a word after "the", "a", "its", "'s", ...) is put
to the base model being tuned ("What is a dashboard? Answer in one short sentence."); its answer, cut
to the defining phrase ("visual tool that helps users track and analyze data"), takes the noun's place
in a rewording of the question ("What is the name of the Quillmesh web visual tool that helps users
track and analyze data?"). Nothing from outside the model is taught: these are its own words for
common things, tied to the user's facts. A reply that does not define the word ("A port is a port of
call", "The capital of France is Paris.") is left out. Asked once per word and base model, in one
batch, and cached under ``$TUNELAB_HOME/cache/definitions/``.

Measured (benchmarks/RESULTS.md, session 31): with up to 4 such rewordings a question, held-out
accuracy rose on all five fact sets tried.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
from collections.abc import Callable
from pathlib import Path

from tunelab.config import Settings
from tunelab.export.atomic import atomic_write
from tunelab.inference.templates import Template
from tunelab.models.resolve import ResolvedModel

log = logging.getLogger("tunelab")

QUESTION = "What is a {word}? Answer in one short sentence."
MAX_NEW_TOKENS = 40
MAX_WORDS = 10  # a definition longer than this is a description, not a name for the thing

# words that follow a determiner without being a thing the question asks about
_STOP = set(
    """about above after again against also among another anything around away back because been
    before being below between both called come could does doing done down during each either else
    even ever every first from have having here into just kind know last less like made make many
    more most much must name named need never next only other over same should since some something
    still such tell than that their them then there these they thing things this those though through
    under until upon used using very want what when where which while whom whose will with within
    without would your yours exactly actually really quick question please give going keep start
    started""".split()
)
_NOUN = re.compile(
    r"(?:\b(?:the|a|an|its|my|your|our|their|which|what)\s+|'s\s+)([a-z][a-z-]{3,})(?![\w'-])", re.IGNORECASE
)
_DEFINED = re.compile(
    r"^(?:an?|the)\s+[\w-]+(?:\s[\w-]+)?\s+(?:is|are|refers to)\s+(?P<phrase>(?:an?|the)\s.+)$",
    re.IGNORECASE,  # one line: a reply that goes on over several lines is not a definition
)
# where a definition's naming phrase ends and its elaboration begins
_PHRASE_END = re.compile(r"[,.;:!?(]| often | such as | typically | usually | that is | which is | and is ")

Definer = Callable[[list[str]], dict[str, str]]


def nouns(question: str) -> list[str]:
    """The lower-case words of `question` that follow a determiner or a possessive ("the founder",
    "Acme's slogan"): the things it asks about, not names (capitalised), verbs or function words."""
    words = [m.group(1) for m in _NOUN.finditer(question)]
    return [w for w in words if w.islower() and w not in _STOP and not w.endswith(("ed", "ing", "ly"))]


def definition(word: str, reply: str) -> str | None:
    """The naming phrase of the model's reply to "What is a WORD?" ("A founder is a person who creates
    and leads a startup, ..." -> "person who creates and leads a startup"), or None when the reply
    does not define the word: another form, too short or long, or the word itself inside."""
    found = _DEFINED.match(reply.strip())
    if not found:
        return None
    phrase = _PHRASE_END.split(found.group("phrase"))[0].strip()
    phrase = re.sub(r"^(?:an?|the)\s+", "", phrase, flags=re.IGNORECASE)
    if not 2 <= len(phrase.split()) <= MAX_WORDS or word.rstrip("s") in phrase.lower():
        return None
    return phrase


def defined_rewordings(question: str, definitions: dict[str, str], n: int) -> list[str]:
    """Up to `n` rewordings of `question`, each with one of its nouns replaced by its definition."""
    out = []
    for word in dict.fromkeys(nouns(question)):
        if word in definitions and len(out) < n:
            pattern = rf"(?<![\w'-]){re.escape(word)}(?![\w'-])"
            out.append(re.sub(pattern, definitions[word], question, count=1))
    return out


def _cache_file(settings: Settings, base: ResolvedModel, template: Template) -> Path:
    ident = json.dumps([base.name, str(base.gguf_path or base.hf_path), template.source, QUESTION])
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return settings.home / "cache" / "definitions" / f"{Path(base.name).name}-{digest}.json"


def model_definer(base: ResolvedModel, template: Template, settings: Settings) -> Definer:
    """A function from words to the base model's definitions of those it defines (greedy, through the
    template training uses; the words it was asked before are read from the cache)."""

    def define(words: list[str]) -> dict[str, str]:
        cache = _cache_file(settings, base, template)
        known: dict[str, str | None] = (
            json.loads(cache.read_text(encoding="utf-8")) if cache.is_file() else {}
        )
        new = sorted(set(words) - known.keys())
        if new:
            from tunelab.inference.engine import engine_for
            from tunelab.inference.options import GenerationOptions

            log.info("definitions: asking %s what %d words mean (cached in %s)", base.name, len(new), cache)
            options = GenerationOptions.from_kwargs(None, max_new_tokens=MAX_NEW_TOKENS, temperature=0)
            prompts = [QUESTION.format(word=w) for w in new]
            completions = engine_for(settings).generate(
                base, prompts, options=options, template=template.source, backend=settings.backend
            )
            known |= {w: definition(w, c.text) for w, c in zip(new, completions)}
            with atomic_write(cache) as tmp:
                tmp.write_text(
                    json.dumps(known, indent=1, sort_keys=True, ensure_ascii=False), encoding="utf-8"
                )
        return {w: known[w] for w in words if known.get(w)}

    return define
