"""More training material from the user's own records, before training, offline.

A fact stored from one phrasing is memorised but not extractable from another (Allen-Zhu & Li,
*Physics of Language Models 3.1*); "A is B" does not teach "B is A" (Berglund et al.). So each
question/answer record is grouped with the others that share its answer (one *fact*), and the fact
gets:

- **rewordings** of each question, by rules that need no model: indirect questions ("Tell me who
  ..."), wrappers ("Quick question: ..."), possessive word order ("the boss of Twitter" <->
  "Twitter's boss"), contractions, synonyms from a small list, lower case without punctuation;
- **reverse questions** about the entity the answer names ("What do you know about Elon Musk?"), whose
  answer is the same sentence, so the fact is reachable from its other end; and questions that ask for
  the answer's *subject* in the answer's own words ("Ilse Marvaine's most famous novel is The Salt
  Cartographer." -> "Whose most famous novel is The Salt Cartographer?");
- **statements**: the answer itself as a declarative sentence with its key phrase blanked out ("Fill
  in the blank: ___ owns Twitter."), so the fact is also learned from the answer's own words, not only
  from the questions' (Allen-Zhu & Li: mixing statements with questions helps extraction);
- **defined** rewordings: a noun of the question said as the base model itself defines it ("the
  visual tool that helps users track and analyze data" for "the dashboard"; `training.definitions`),
  so questions that name a thing by what it is reach the fact;
- optionally, rewordings by a **teacher**: any model tunelab runs (`augment="teacher:chat-gpt"`),
  asked to paraphrase each question.

Nothing the user gave is dropped or changed: augmented examples are added, each marked with its
origin and the record it came from. `tunelab augment DATA -o out.jsonl` shows what would be added.

>>> reword("What is the capital of Elbonia?", 3, random.Random(0))  # doctest: +SKIP
['Tell me what the capital of Elbonia is.', "What's Elbonia's capital?", 'what is the capital of elbonia']
"""

from __future__ import annotations

import logging
import random
import re
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from tunelab.errors import ConfigError
from tunelab.evaluation.scoring import normalise
from tunelab.training.data import Example
from tunelab.training.definitions import Definer, defined_rewordings, nouns

log = logging.getLogger("tunelab")

AUGMENT_CHOICES = ("rules", "none", "teacher:MODEL")

# -- facts --------------------------------------------------------------------------------------


@dataclass
class Fact:
    """The records that share one answer: several questions about the same thing."""

    answer: str
    records: list[Example]
    phrases: list[str] = field(default_factory=list)  # what a correct answer names (key phrases)


def is_single_turn(example: Example) -> bool:
    """One user question and one answer (a system message may lead): what can be reworded."""
    roles = [m["role"] for m in example.messages if m["role"] != "system"]
    return roles == ["user", "assistant"]


def group_facts(examples: list[Example]) -> list[Fact]:
    """Single-turn examples grouped by their normalised answer, in the order first seen."""
    facts: dict[str, Fact] = {}
    for example in examples:
        if is_single_turn(example):
            key = normalise(example.answer) or example.answer
            facts.setdefault(key, Fact(example.answer, [])).records.append(example)
    for fact in facts.values():
        fact.phrases = key_phrases(fact)
    return list(facts.values())


# a capitalised word or a number (18,350; 3.10; 10:30), and those that follow it joined by "of", "the" ...;
# never from inside a word ("MPL-2.0, the ..." is no number "0, the ...", "smollm2-135m" none "135m")
_NUMBER = r"[0-9](?:[\w.:/-]*\w)?(?:,[0-9]{3}(?![0-9]))*"
_NAME = re.compile(
    rf"(?:(?<![\w.])[A-Z][\w'-]*|(?<![\w.-]){_NUMBER})(?:\s+(?:of|the|de|van|von|da|and|&)?\s*(?:[A-Z][\w'-]*|{_NUMBER}))*"
)
_QUOTED = re.compile(r"[\"“]([^\"”]{2,60})[\"”]")
# what documentation answers name: `backticked` code, --flags, paths, dotted and snake_case names
# (quillmesh.toml, QMESH_HOME, MPL-2.0, /var/log/app.log)
_CODE = re.compile(
    r"`([^`]{2,60})`|(?<![\w./-])(--[A-Za-z][\w-]*|/[A-Za-z][\w./-]*[\w/]|\.?[A-Za-z][\w-]*(?:[._][\w-]+)+"
    r"|\.[A-Za-z][\w-]{2,})"
)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[^a-z\s])")
_WEAK = {"i", "the", "a", "an", "it", "yes", "no", "this", "that", "he", "she", "they", "we", "you"}
# words that begin a sentence of prose or documentation without being a name: a capitalised one of
# these at a sentence's start is cut off what follows it ("Besides CSV" -> "CSV")
_OPENERS = set(
    """a an the this that these those it its you your we our they their he she his her i if when
    while where whenever once after before because since although though unless until to for from
    by in on at with without within into onto of as so then also besides however otherwise instead
    each every all any some both either neither no not most many more only just here there set use
    run make create add point pass call install open check see note click select enter type start
    stop keep go try give put get let do don't is are was were be can could will would should may
    must first next finally mostly usually often one two three four five six seven eight nine ten""".split()
)
_GERUND = re.compile(r"[a-z]{3}ing$")  # "Installing the package ...": no name


def _sentence_names(sentence: str, first: bool) -> tuple[list[str], str | None]:
    """(names, or None): the names and numbers of one sentence of an answer. Its first word is cut off
    what follows when it is a common opener ("Besides CSV" -> "CSV"); on its own it is a name in the
    answer's first sentence ("Bristlewick is the mascot ...", "Rodri, the ... midfielder, won ..."),
    but kept aside (returned second) in a later one or as an -ing word ("Installing the
    package ...", "Recurring pipelines are ...")."""
    names, opener = [], None
    for match in _NAME.finditer(sentence):
        words = match.group(0).strip(" ,.:;").split()
        if match.start() == 0:
            while words and words[0].lower() in _OPENERS:
                words = words[1:]
            if words == match.group(0).split()[:1] and (not first or _GERUND.search(words[0])):
                opener, words = words[0], []
        while words and words[0] in _DETERMINERS:
            words = words[1:]
        if words:
            names.append(" ".join(words))
    return names, opener


def key_phrases(fact: Fact) -> list[str]:
    """What a correct answer to the fact's questions names: the records' own key (an ``answer`` field
    beside input/output), else the quoted terms, code, names and numbers of the answer that none of
    its questions mentions (a question's own words are no evidence of knowing the answer). A word
    capitalised only as a sentence's start counts when nothing else is found."""
    given = [r.expected for r in fact.records if r.expected]
    if given:
        return list(dict.fromkeys(given))
    asked = " ".join(normalise(r.prompt) for r in fact.records).split()
    code = [a or b for a, b in _CODE.findall(fact.answer)]
    found = _QUOTED.findall(fact.answer) + [c for c in code if len(c.strip(".")) >= 4]  # not "e.g"
    openers = []
    for i, sentence in enumerate(_SENTENCE.split(" ".join(fact.answer.split()))):
        names, opener = _sentence_names(sentence, first=i == 0)
        found += names
        openers += [opener] if opener else []
    phrases, possessives = [], []  # "Quillmesh's" when the questions name Quillmesh: a last resort
    for opener, phrase in [(False, p) for p in found] + [(True, p) for p in openers]:
        phrase = phrase.strip(" ,:;").rstrip(".")
        words = normalise(phrase).split()
        if not words or all(w in _WEAK for w in words) or all(w in asked for w in words):
            continue
        if all(w in asked for w in normalise(re.sub(r"['’]s$", "", phrase)).split()):
            possessives.append(phrase)
        elif not opener or not phrases:
            phrases.append(phrase)
    return list(dict.fromkeys(phrases or possessives))[:3]


# -- rewording rules ------------------------------------------------------------------------------

_WH = r"(?P<wh>who|what|where|when|which|how many|how much|how|why|whose)"
_AUX = r"(?P<aux>is|are|was|were|does|do|did|can|could|will|would|should|has|have|had)"
# "What is the capital of X?" -> wh + aux + rest; "Who founded X?" -> wh + verb phrase
_WH_AUX = re.compile(rf"^{_WH}(?P<noun>\s+\w+)??\s+{_AUX}\s+(?P<rest>.+?)\s*\??$", re.IGNORECASE)
_AUX_FIRST = re.compile(r"(?:does|do|did|is|are|was|were)\b")
_WH_SUBJ = re.compile(rf"^{_WH}\s+(?P<rest>.+?)\s*\??$", re.IGNORECASE)
_OF = re.compile(r"\bthe (?P<thing>[a-z][\w -]{1,30}?) of (?P<owner>[A-Z][\w'&.-]*(?: [A-Z][\w'&.-]*){0,3})")
_POSSESSIVE = re.compile(
    r"\b(?P<owner>[A-Z][\w&.-]*(?: [A-Z][\w&.-]*){0,3})'s (?P<thing>[a-z][\w-]*(?: [a-z][\w-]*)?)"
)

_PARTICIPLES = {
    "born",
    "made",
    "built",
    "held",
    "sold",
    "run",
    "led",
    "known",
    "set",
    "put",
    "located",
    "based",
}
_CONTRACTIONS = {"what is": "what's", "who is": "who's", "where is": "where's", "how is": "how's"}
# Words and phrases that can stand for each other in a question: general English, not any data set's.
# Each group is interchangeable; a word in two groups may take either's words.
_SYNONYM_GROUPS = (
    ("boss", "head", "leader", "chief"),
    ("ceo", "chief executive", "top executive"),
    ("founder", "creator"),
    ("founded", "started", "established", "set up"),
    ("created", "made"),
    ("invented", "came up with", "created"),
    ("owner", "proprietor"),
    ("owns", "is the owner of"),
    ("company", "firm", "business"),
    ("companies", "firms", "businesses"),
    ("employees", "workers", "staff"),
    ("employee", "worker", "staff member"),
    ("customers", "clients"),
    ("city", "town"),
    ("country", "nation"),
    ("headquarters", "head office", "main office"),
    ("headquartered", "based"),
    ("located", "based", "situated"),
    ("biggest", "largest"),
    ("smallest", "tiniest"),
    ("first", "earliest"),
    ("bought", "purchased", "acquired"),
    ("buy", "purchase"),
    ("won", "took home", "received"),
    ("award", "prize"),
    ("released", "launched", "introduced"),
    ("release", "launch"),
    ("named", "called"),
    ("price", "cost"),
    ("wrote", "authored"),
    ("author", "writer"),
    ("book", "novel"),
    ("current", "present"),
    ("currently", "now", "these days"),
    ("famous", "well known", "best known"),
    ("main", "primary", "principal"),
    ("use", "utilize"),
    ("uses", "utilizes"),
    ("make", "produce", "manufacture"),
    ("makes", "produces", "manufactures"),
    ("product", "item"),
    ("products", "items", "goods"),
    ("run", "lead", "manage"),
    ("runs", "leads", "manages"),
    ("holds", "has"),
    ("job", "role", "position"),
    ("symbol", "emblem"),
    ("logo", "emblem"),
    ("slogan", "motto", "tagline"),
    ("rival", "competitor"),
    ("rivals", "competitors"),
    ("lives", "resides"),
    ("died", "passed away"),
    ("married", "wed"),
    ("discovered", "found"),
    ("built", "constructed"),
    ("located in", "found in"),
    ("big", "large"),
    ("small", "little"),
    ("begin", "start"),
    ("began", "started"),
    ("person", "individual"),
    ("leader", "head"),
    ("team", "group"),
    ("game", "match"),
    ("river", "waterway"),
    ("mountain", "peak"),
    ("capital", "capital city"),
    ("population", "number of inhabitants"),
    ("known for", "famous for"),
    ("made of", "made from"),
)
_SYNONYMS: dict[str, list[str]] = {}
for _group in _SYNONYM_GROUPS:
    for _word in _group:
        _SYNONYMS.setdefault(_word, [])
        _SYNONYMS[_word] += [w for w in _group if w != _word and w not in _SYNONYMS[_word]]
_SYNONYM_RE = re.compile(
    r"\b(" + "|".join(re.escape(w) for w in sorted(_SYNONYMS, key=len, reverse=True)) + r")\b", re.IGNORECASE
)
_WRAPPERS = (
    "Quick question: {q}",
    "I'd like to know: {q}",
    "{q} Please answer briefly.",
    "Hey, {lq}",
    "Could you answer this? {q}",
)
_INDIRECT = (
    "Tell me {i}.",
    "Do you know {i}?",
    "Can you tell me {i}?",
    "I was wondering {i}.",
    "Please tell me {i}.",
    "Any idea {i}?",
)


def _question(text: str) -> str:
    text = " ".join(text.split())
    return text if text.endswith("?") else text.rstrip(".!") + "?"


def indirect(question: str) -> str | None:
    """The question as an embedded clause: "What is the capital of X?" -> "what the capital of X is";
    "Who founded X?" -> "who founded X". None when no rule fits."""
    q = _question(question)
    m = _WH_AUX.match(q)
    if m:
        wh, aux, rest = (
            (m.group("wh") + (m.group("noun") or "")).lower(),
            m.group("aux").lower(),
            m.group("rest"),
        )
        *head, last = rest.split()
        if aux in {"is", "are", "was", "were"}:
            if head and (last.lower() in _PARTICIPLES or re.fullmatch(r"[a-z]+(ed|en|wn)", last)):
                return f"{wh} {' '.join(head)} {aux} {last}"  # when X was founded
            return f"{wh} {rest} {aux}"  # what the capital of X is
        if aux in {"does", "do"} and head and last.lower() == "have":
            return f"{wh} {' '.join(head)} {'has' if aux == 'does' else 'have'}"
        return None  # "where did X go" -> "where X went" needs a verb's forms
    m = _WH_SUBJ.match(q)
    if m:
        return f"{m.group('wh').lower()} {m.group('rest')}"
    return None


_WHAT_NP = re.compile(
    r"^(?:what|which|who) (?:is|are|was|were) (?P<np>(?:the|a|an) .+?)\s*\?$", re.IGNORECASE
)
_WH_NOUN = re.compile(
    r"^(?:what|which) (?P<noun>[a-z]+(?: [a-z]+)?) (?P<rest>(?:did|does|do|is|was|are|were) .+?)\s*\?$",
    re.IGNORECASE,
)
_HOW_MANY = re.compile(r"^how many (?P<noun>.+?) (?:does|do|did) (?P<rest>.+?) have\s*\?$", re.IGNORECASE)
_IMPERATIVES = ("Tell me {np}.", "Name {np}.", "Give me {np}.")


def imperatives(question: str, rng: random.Random) -> list[str]:
    """The question as a request for a noun phrase: "What is the capital of X?" -> "Name the capital of
    X."; "How many staff does X have?" -> "Tell me the number of staff X has."."""
    q = _question(question)
    found = []
    if m := _WHAT_NP.match(q):
        found.append(m.group("np"))
    elif m := _HOW_MANY.match(q):
        found.append(f"the number of {m.group('noun')} {m.group('rest')} has")
    elif (m := _WH_NOUN.match(q)) and not m.group("noun").lower().startswith(("is ", "was ")):
        noun, clause = m.group("noun").lower(), indirect(q) or ""
        lead = f"{q.split()[0]} {noun} ".lower()  # "what voice assistant "
        rest = clause[len(lead) :] if clause.lower().startswith(lead) else ""
        # "what voice assistant does X make" -> "the voice assistant X makes" needs a verb's forms, and
        # "what movement is X known for" is left as it was asked: no request made of either
        if rest and not _AUX_FIRST.match(rest):
            found.append(f"the {noun} {rest}")
    forms = [
        t for t in _IMPERATIVES if not (t.startswith("Name") and found and found[0].startswith("the name"))
    ]
    return [t.format(np=np) for np in found for t in rng.sample(forms, 2)]


def _swap_possessive(question: str) -> str | None:
    m = _OF.search(question)
    if m:
        return question[: m.start()] + f"{m.group('owner')}'s {m.group('thing')}" + question[m.end() :]
    m = _POSSESSIVE.search(question)
    if m:
        return question[: m.start()] + f"the {m.group('thing')} of {m.group('owner')}" + question[m.end() :]
    return None


def with_synonyms(question: str, rng: random.Random, n: int = 2) -> list[str]:
    """Up to `n` rewordings, each with one word or phrase of the question swapped for a synonym
    (a different word each time where the question has several)."""
    found = [m for m in _SYNONYM_RE.finditer(question) if _SYNONYMS[m.group(0).lower()]]
    out = []
    for m in rng.sample(found, len(found))[:n]:
        other = rng.choice(_SYNONYMS[m.group(0).lower()])
        if m.group(0)[0].isupper():
            other = other[0].upper() + other[1:]
        out.append(question[: m.start()] + other + question[m.end() :])
    return out


def _contracted(question: str) -> str | None:
    for full, short in _CONTRACTIONS.items():
        if question.lower().startswith(full + " "):
            return short.capitalize() + question[len(full) :]
    return None


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:] if text[:2] != text[:2].upper() else text


def rewordings(question: str, rng: random.Random) -> list[str]:
    """Every rule's rewording of `question` (each rule at most once), in a seeded order."""
    q = _question(question)
    out: list[str] = []
    embedded = indirect(q)
    if embedded:
        out += [t.format(i=embedded) for t in rng.sample(_INDIRECT, 2)]
    out += imperatives(q, rng)
    out += [t.format(q=q, lq=_lower_first(q)) for t in rng.sample(_WRAPPERS, 2)]
    for rule in (_swap_possessive, _contracted):
        if changed := rule(q):
            out.append(changed)
    for changed in with_synonyms(q, rng):
        out.append(changed)
        if embedded and (changed_embedded := indirect(changed)):
            out.append(rng.choice(_INDIRECT).format(i=changed_embedded))
    out.append(normalise(q))  # lower case, no punctuation: how people type
    rng.shuffle(out)
    return out


def reword(question: str, n: int, rng: random.Random) -> list[str]:
    """Up to `n` distinct rewordings of `question`, none equal to it (after normalising)."""
    seen = {normalise(question)}
    chosen = []
    for text in rewordings(question, rng):
        key = normalise(text)
        if key not in seen:
            seen.add(key)
            chosen.append(text)
        if len(chosen) == n:
            break
    return chosen


_REVERSE = ("What do you know about {e}?", "Tell me about {e}.", "What can you tell me about {e}?")


_ENTITY = re.compile(r"(?<!^)\b(?:The |the )?[A-Z][\w'-]*(?: (?:of |the |de )?[A-Z][\w'-]*)*")


def _relation_reversed(question: str, key: str) -> list[str]:
    """The question turned around its entity: "Who painted The Lantern Moths?" with key "Casimir
    Lothwell" -> "Tell me what Casimir Lothwell painted.", "Casimir Lothwell painted what?";
    "What is the capital of Elbonia?" -> "Port Ardeny is the capital of what?"."""
    q = _question(question)
    entities = [
        m.group(0) for m in _ENTITY.finditer(q.rstrip("?")) if normalise(m.group(0)) != normalise(key)
    ]
    if not entities:
        return []
    entity = max(entities, key=len)
    m = _WH_AUX.match(q)
    if m:  # "What is the capital of X?" -> "KEY is the capital of what?"
        rest, aux = m.group("rest"), m.group("aux").lower()
        if (
            aux in {"is", "are", "was", "were"}
            and m.group("wh").lower() in {"what", "who"}
            and rest.endswith(entity)
        ):
            return [f"{key} {aux} {rest[: -len(entity)]}what?"]
        return []
    m = _WH_SUBJ.match(q)  # "Who founded X?" -> "KEY founded what?", "Tell me what KEY founded."
    if m and m.group("wh").lower() == "who" and m.group("rest").endswith(entity):
        verb = m.group("rest")[: -len(entity)].strip()
        if verb and not verb[0].isupper():
            return [f"{key} {verb} what?", f"Tell me what {key} {verb}."]
    return []


def reverse_questions(fact: Fact, rng: random.Random, n: int = 2) -> list[str]:
    """Questions from the other end of the fact, about what the answer names: the fact's questions
    turned around their entity where a rule fits, else "What do you know about KEY?"."""
    questions: list[str] = []
    for phrase in fact.phrases[:1]:
        for record in fact.records:
            questions += [q for q in _relation_reversed(record.prompt, phrase) if q not in questions]
        questions += [t.format(e=phrase) for t in rng.sample(_REVERSE, n)]
    return questions[: max(n, 1) + 2]


_NAME_JOINERS = {"of", "de", "van", "von", "da", "the", "and", "&"}
_DETERMINERS = {"The", "A", "An"}


@dataclass
class _Subject:
    """A sentence cut at its subject: "The novelist Ilse Marvaine was born ..." -> descriptor
    ["novelist"], name ["Ilse", "Marvaine"], rest "was born ..."."""

    descriptor: list[str]
    name: list[str]
    possessive: bool  # "Ilse Marvaine's most famous novel ..."
    rest: str


def _split_subject(words: list[str]) -> _Subject:
    i, descriptor = 0, []
    if words[0] in _DETERMINERS and words[1][:1].islower():  # "The novelist Ilse Marvaine ..."
        i = 1
        while i < len(words) and words[i][:1].islower() and words[i] != "of" and len(descriptor) < 2:
            descriptor.append(words[i])
            i += 1
        if descriptor and i + 1 < len(words) and words[i] == "of" and words[i + 1][:1].isupper():
            i += 1  # "The city of Marovel ..."
    name, possessive = [], False
    while i < len(words) and not possessive:
        word = words[i]
        joiner = word in _NAME_JOINERS and name and i + 1 < len(words) and words[i + 1][:1].isupper()
        if not (word[:1].isupper() or word[:1].isdigit() or joiner):
            break
        possessive = word.endswith("'s")
        name.append(word.removesuffix("'s"))
        i += 1
    return _Subject(descriptor, name, possessive, " ".join(words[i:]))


def subject_questions(fact: Fact) -> list[tuple[str, str]]:
    """Questions that ask for the *subject* of the fact's answer, made from the answer's own words:
    "Ilse Marvaine's most famous novel is The Salt Cartographer." -> "Whose most famous novel is The
    Salt Cartographer?"; "The novelist Ilse Marvaine was born in Corrabeth." -> "Which novelist was
    born in Corrabeth?"; "Nadia Orsolt commanded the Halcyon-4 mission." -> "Who commanded the
    Halcyon-4 mission?". Each with the subject as what a correct answer names. Only for a short answer
    whose key phrase stays in the question (so the question asks from the fact's other end)."""
    words = " ".join(fact.answer.split()).rstrip(".!").split()
    if not fact.phrases or not 3 <= len(words) <= 40:
        return []
    cut = _split_subject(words)
    name, rest = cut.name, cut.rest
    if not name or not rest[:1].islower() or (cut.descriptor and cut.possessive):
        return []
    if not any(p in rest for p in fact.phrases):
        return []  # the key is the subject itself: the fact's own questions ask for it already
    copula = re.fullmatch(r"(?:is|are|was|were) (?:the |a |an )?(?P<complement>.+)", rest)
    if copula and not cut.possessive and copula.group("complement") in fact.phrases:
        return []  # "X is K": "Who is K?" asks what K is, not for X
    subject = " ".join(name[1:] if name[0] in _DETERMINERS and len(name) > 1 else name)
    if cut.possessive:
        return [(f"Whose {rest}?", subject)]
    if cut.descriptor:
        return [(f"Which {' '.join(cut.descriptor)} {rest}?", subject)]
    person = 2 <= len(name) <= 3 and all(w.isalpha() for w in name) and words[0] not in _DETERMINERS
    return [(f"{'Who' if person else 'What'} {rest}?", subject)]


def focused_answer(fact: Fact, over: int | None) -> str:
    """What a generated question about the fact is answered with: its answer, or, when that is longer
    than `over` words (a paragraph of documentation), the answer cut after the sentence that names its
    first key phrase ("Quillmesh is published on PyPI under the package name quillmesh-core, so ...").

    A paragraph's key is learned from its first tokens, where the model chooses which answer it is
    writing; the rest of a paragraph is memorised text that drowns those tokens' share of the loss.
    The user's own records keep their whole answer."""
    answer = " ".join(fact.answer.split())
    phrase = next((p for p in fact.phrases if p in answer), None)
    if over is None or phrase is None or len(answer.split()) <= over:
        return fact.answer
    sentences = _SENTENCE.split(answer)
    named = next((i for i, s in enumerate(sentences) if phrase in s), len(sentences) - 1)
    return " ".join(sentences[: named + 1])


_STATEMENTS = ("Fill in the blank: {blank}", "Complete this statement: {blank}")
_BLANK = "___"


def statements(fact: Fact, rng: random.Random, n: int = 1, answer: str | None = None) -> list[str]:
    """The fact's answer (or the `answer` given: its focused answer) as a fill-in-the-blank prompt,
    its first key phrase blanked out: "Acme has 18,350 employees." -> "Fill in the blank: Acme has ___
    employees.". Nothing without a key phrase that the answer spells out, or with a long answer (a
    paragraph is not one statement)."""
    answer = " ".join((answer or fact.answer).split())
    phrase = next((p for p in fact.phrases if p in answer), None)
    if phrase is None or len(answer.split()) > 40:
        return []
    blank = answer.replace(phrase, _BLANK, 1)
    return [t.format(blank=blank) for t in rng.sample(_STATEMENTS, min(n, len(_STATEMENTS)))]


_CONTRASTS = ("{q} Is it {other}?", "{q} I thought it was {other}.", "Is it {other}? {q}")


_CAPITALISED = re.compile(r"(?<=[\w,;:'\"-] )[A-Z][\w-]*")  # not a sentence's first word


def _names(fact: Fact) -> set[str]:
    """The capitalised words (names) an answer and its questions mention, other than what the answer
    names: the entities the fact is about."""
    keys = {w for p in fact.phrases for w in normalise(p).split()}
    text = " ".join([fact.answer] + [r.prompt for r in fact.records])
    return {w for m in _CAPITALISED.finditer(text) for w in normalise(m.group(0)).split()} - keys - _WEAK


_ASKS = re.compile(r"^\W*(how many|how much|what year|who|whose|where|when|why|how|what|which)\b", re.I)


def _asks(fact: Fact) -> set[str]:
    """What kind of thing the fact's questions ask for, by their question word ("who", "how many")."""
    return {m.group(1).lower() for r in fact.records if (m := _ASKS.match(r.prompt))} - {"what", "which"}


def contrast_questions(
    fact: Fact, facts: list[Fact], rng: random.Random, n: int = 1
) -> list[tuple[Example, str]]:
    """Up to `n` of the fact's questions, each with a wrong guess added: the key phrase of a
    *neighbouring* fact (one about the same entity, asked with the same question word: "Who founded
    Acme?" beside "Who is the CEO of Acme?"): "Who founded Acme? Is it Doriana Plesk?", answered with
    the fact's own answer. What a tuned model gets wrong is mostly the answer of a neighbouring fact; a
    guess it must answer past makes it tell the two apart."""
    mine = _names(fact)
    others = [f for f in facts if f is not fact and f.phrases and normalise(f.phrases[0]) not in
              {normalise(p) for p in fact.phrases}]  # fmt: skip
    if not mine or not others:
        return []
    asks = _asks(fact)
    shared = sorted(others, key=lambda f: (-len(mine & _names(f)), -len(asks & _asks(f)), rng.random()))
    near = [f for f in shared if mine & _names(f)] or shared
    out = []
    for record, other in zip(rng.sample(fact.records, len(fact.records)), near[: max(n, 0)]):
        q = _question(record.prompt)
        out.append((record, rng.choice(_CONTRASTS).format(q=q, other=other.phrases[0])))
    return out


# -- putting it together ---------------------------------------------------------------------------


@dataclass
class Augmented:
    """The training examples after augmentation: the user's, then what was added, and the counts."""

    examples: list[Example]
    added: list[Example]
    facts: list[Fact]

    def drop(self, examples: list[Example]) -> None:
        """Take generated examples back out (held back for evaluation); the user's stay."""
        gone = {id(e) for e in examples}
        self.added = [e for e in self.added if id(e) not in gone]
        self.examples = [e for e in self.examples if id(e) not in gone or e.origin == "data"]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {"records": len(self.examples) - len(self.added)}
        for example in self.added:
            out[example.origin] = out.get(example.origin, 0) + 1
        return out


def _added(
    record: Example, question: str, origin: str, expected: str | None, answer: str | None = None
) -> Example:
    messages = [m for m in record.messages if m["role"] == "system"]
    messages += [
        {"role": "user", "content": question},
        {"role": "assistant", "content": answer or record.answer},
    ]
    return replace(record, messages=messages, source=f"{record.source} ({origin})", expected=expected,
                   origin=origin)  # fmt: skip


Paraphraser = Callable[[list[str], int], list[list[str]]]


def augment(
    examples: list[Example],
    method: str = "rules",
    *,
    per_fact: int = 12,
    per_question: int | None = None,
    reverse: int = 2,
    statement: int = 1,
    contrast: int = 0,
    focus_over: int | None = None,
    seed: int = 0,
    avoid: list[str] | None = None,
    paraphraser: Paraphraser | None = None,
    definer: Definer | None = None,
    defined: int = 4,
) -> Augmented:
    """The user's examples followed by generated ones (see the module docstring).

    `per_fact` rewordings are shared among a fact's questions (a fact asked three times gets four of
    each; one asked five times, three), unless `per_question` fixes the number for every question.
    `method`: "rules" (the default), "none", or "teacher:MODEL" (rules, plus as many rewordings by
    MODEL through `paraphraser`, which the caller builds). `avoid`: questions that must not be
    generated (the held-out ones, so a rewording never copies a question kept back for evaluation).
    `focus_over`: a fact whose answer is longer than this many words has its generated questions
    answered with the answer's sentences up to the one naming its first key phrase (`focused_answer`);
    None: whole answers. `definer` (training.definitions.model_definer: the base model's own
    definitions of words): up to `defined` rewordings of each question with one of its nouns said as
    the model defines it.
    """
    method = method or "rules"
    if method == "none":
        return Augmented(list(examples), [], group_facts(examples))
    if method != "rules" and not method.startswith("teacher:"):
        raise ConfigError(f"augment={method!r}: choose one of {', '.join(AUGMENT_CHOICES)}")
    rng = random.Random(seed)
    statement_rng = random.Random(seed + 1)  # its own stream: the other rules' choices do not move
    contrast_rng = random.Random(seed + 2)
    facts = group_facts(examples)
    taken = {normalise(e.prompt) for e in examples if is_single_turn(e)} | {normalise(q) for q in avoid or []}
    added: list[Example] = []

    def add(record: Example, question: str, origin: str, expected: str | None, answer: str | None) -> None:
        key = normalise(question)
        if key and key not in taken:
            taken.add(key)
            added.append(_added(record, question, origin, expected, answer))

    def how_many(fact: Fact) -> int:
        return per_question if per_question is not None else -(-per_fact // len(fact.records))

    teacher = paraphraser if method.startswith("teacher:") else None
    by_model = _model_rewordings(facts, teacher, max(map(how_many, facts), default=0), definer, defined)
    for fact in facts:
        expected = fact.phrases[0] if fact.phrases else None
        focus = focused_answer(fact, focus_over)
        for record in fact.records:
            for question in reword(record.prompt, how_many(fact), rng):
                add(record, question, "reworded", record.expected or expected, focus)
            for question, origin in by_model[record.prompt]:
                add(record, question, origin, record.expected or expected, focus)
        for question, subject in _reverse_material(fact, rng, reverse):
            add(fact.records[0], question, "reverse", subject, focus)
        said = statements(fact, statement_rng, statement, focus)
        whole_fact = [(fact.records[0], p, "statement") for p in said]
        whole_fact += [(r, q, "contrast") for r, q in contrast_questions(fact, facts, contrast_rng, contrast)]
        for record, prompt, origin in whole_fact:
            add(record, prompt, origin, record.expected or expected, focus)
    return Augmented(list(examples) + added, added, facts)


def _reverse_material(fact: Fact, rng: random.Random, n: int) -> list[tuple[str, str | None]]:
    """(question, what the answer names) from the fact's other end: `n` reverse questions about what
    its answer names, and the questions asking for its answer's subject."""
    if not n:
        return []
    return [(q, None) for q in reverse_questions(fact, rng, n)] + subject_questions(fact)


def _model_rewordings(
    facts: list[Fact], paraphraser: Paraphraser | None, n: int, definer: Definer | None, defined: int
) -> dict[str, list[tuple[str, str]]]:
    """Each question's rewordings that a model made, with their origin: its nouns as the base model
    defines them ("defined"), then a teacher's paraphrases ("teacher"; none without a teacher)."""
    questions = [r.prompt for fact in facts for r in fact.records]
    definitions = definer([w for q in questions for w in nouns(q)]) if definer and defined else {}
    taught = dict(zip(questions, paraphraser(questions, n))) if paraphraser else {}
    return {
        q: [(t, "defined") for t in defined_rewordings(q, definitions, defined)]
        + [(t, "teacher") for t in taught.get(q, [])]
        for q in questions
    }


_TEACHER_PROMPT = (
    "Rewrite the question below in {n} different ways that ask for exactly the same thing. Vary the "
    "words and the sentence form. Write one question per line, nothing else.\nQuestion: {q}"
)


def parse_paraphrases(text: str, question: str, n: int) -> list[str]:
    """The rewordings in a teacher's reply: one per line, list marks and quotes stripped; lines that
    repeat the question, or are too short to be a question, are left out."""
    out = []
    for line in text.splitlines():
        line = re.sub(r"^\s*(?:[-*•]|\d+[.)])\s*", "", line).strip().strip("\"'")
        if len(line.split()) >= 3 and normalise(line) != normalise(question) and line not in out:
            out.append(line)
    return out[:n]


def teacher_paraphraser(method: str, settings) -> Paraphraser | None:
    """For augment="teacher:MODEL": a function that asks MODEL (any name tunelab runs: a configured
    remote "chat-gpt", a larger local model) for rewordings of each question, in one batch."""
    if not method or not method.startswith("teacher:"):
        return None
    name = method.removeprefix("teacher:").strip()
    if not name:
        raise ConfigError('augment="teacher:MODEL" needs a model name after "teacher:"')

    def paraphrase(questions: list[str], n: int) -> list[list[str]]:
        from tunelab.inference.engine import engine_for
        from tunelab.inference.options import GenerationOptions
        from tunelab.models.resolve import resolve

        prompts = [_TEACHER_PROMPT.format(n=n, q=q) for q in questions]
        options = GenerationOptions.from_kwargs(None, max_new_tokens=48 * n, temperature=0)
        completions = engine_for(settings).generate(resolve(name, settings), prompts, options=options)
        found = [parse_paraphrases(c.text, q, n) for c, q in zip(completions, questions)]
        log.info("teacher %s gave %d rewordings for %d questions", name, sum(map(len, found)), len(questions))
        return found

    return paraphrase
