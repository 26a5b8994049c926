"""Did the facts take? The knowledge report written at the end of a fine-tune.

Per fact: whether the tuned model answers one of its *trained* questions, its *held-out* questions
(other wordings kept back from training) and a *reverse* question (about what the answer names); the
general probes (`general_probes`, easy questions) answered before (the base: the adapter switched
off) and after; and, for each fact that did not take, the likely reason. It goes to the terminal, to
the registry entry (``knowledge.json``, ``knowledge.html``) and to `TrainResult.knowledge`.
"""

from __future__ import annotations

import html
import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunelab.evaluation.scoring import names_any, normalise
from tunelab.training.augment import Fact, group_facts, reverse_questions
from tunelab.training.data import Example
from tunelab.training.heldout import answer_passes, generate

_STOP = {"what", "who", "is", "the", "of", "a", "an", "in", "was", "does", "do", "did", "which", "how", "to"}


@dataclass
class FactResult:
    answer: str
    phrases: list[str]
    trained: bool | None  # one trained question answered
    heldout: bool | None  # every held-out question answered (None: none was kept back)
    reverse: bool | None  # a question about what the answer names, answered with the answer
    reason: str | None = None  # why it did not take, when it did not


@dataclass
class KnowledgeReport:
    facts: list[FactResult]
    probes_before: float | None
    probes_after: float | None
    probes_lost: list[str] = field(default_factory=list)

    def share(self, what: str) -> float | None:
        values = [getattr(f, what) for f in self.facts if getattr(f, what) is not None]
        return sum(values) / len(values) if values else None

    def to_dict(self) -> dict:
        return asdict(self) | {k: self.share(k) for k in ("trained", "heldout", "reverse")}

    def summary(self) -> str:
        def pct(x):
            return "-" if x is None else f"{x:.0%}"

        missed = [f for f in self.facts if f.trained is False or f.heldout is False]
        lines = [
            f"knowledge: {len(self.facts)} facts; trained wording {pct(self.share('trained'))}, held-out "
            f"wording {pct(self.share('heldout'))}, reverse {pct(self.share('reverse'))}; general probes "
            f"{pct(self.probes_before)} before, {pct(self.probes_after)} after"
        ]
        lines += [f"  did not take: {f.answer[:70]!r} ({f.reason})" for f in missed[:10]]
        return "\n".join(lines)

    def save(self, directory: Path) -> None:
        (directory / "knowledge.json").write_text(
            json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8"
        )
        (directory / "knowledge.html").write_text(self.html(), encoding="utf-8")

    def html(self) -> str:
        def mark(value):
            return "" if value is None else ("&#10003;" if value else "&#10007;")

        rows = "".join(
            f"<tr class={'ok' if f.reason is None else 'miss'}><td>{html.escape(f.answer)}</td>"
            f"<td>{html.escape(', '.join(f.phrases))}</td>"
            f"<td>{mark(f.trained)}</td><td>{mark(f.heldout)}</td>"
            f"<td>{mark(f.reverse)}</td><td>{html.escape(f.reason or '')}</td></tr>"
            for f in self.facts
        )
        lost = "".join(f"<li>{html.escape(q)}</li>" for q in self.probes_lost)
        return _PAGE.format(summary=html.escape(self.summary().splitlines()[0]), rows=rows,
                            lost=lost or "<li>none</li>")  # fmt: skip


_PAGE = """<!doctype html><html><head><meta charset="utf-8"><title>knowledge report</title><style>
body{{font-family:system-ui,sans-serif;margin:2rem;max-width:70rem}}
table{{border-collapse:collapse;width:100%}}
td,th{{border:1px solid #ccc;padding:.3rem .5rem;text-align:left;vertical-align:top}}
tr.miss{{background:#fde8e8}} tr.ok{{background:#eaf7ea}}</style></head><body>
<h1>Knowledge report</h1><p>{summary}</p>
<table><tr><th>fact (answer)</th><th>key phrases</th><th>trained wording</th><th>held-out wording</th>
<th>reverse</th><th>likely reason it did not take</th></tr>{rows}</table>
<h2>General probes answered before but not after</h2><ul>{lost}</ul></body></html>
"""


def _words(text: str) -> set[str]:
    return {w for w in normalise(text).split() if w not in _STOP}


def likely_reason(fact: Fact, facts: list[Fact], trained: bool | None) -> str:
    """Why a fact may not have taken: it shares most of its question words with another fact, it has no
    key phrase to check, or it was not even learned in its trained wording."""
    asked = set().union(*(_words(r.prompt) for r in fact.records))
    for other in facts:
        if other is fact:
            continue
        theirs = set().union(*(_words(r.prompt) for r in other.records))
        if asked and len(asked & theirs) / len(asked) >= 0.6:
            return f"its questions share most words with another fact's ({other.records[0].prompt!r})"
    if not fact.phrases:
        return "no key phrase found in the answer: scored by word overlap"
    if trained is False:
        return "not learned even in a trained wording: more epochs or a higher learning rate"
    return "learned in the trained wordings only: more rewordings (augment) would help"


def knowledge_report(
    model, tokenizer, template, *, add_bos: bool, train: list[Example], heldout: list[Example],
    probes: list[dict], max_new_tokens: int = 48,
) -> KnowledgeReport:  # fmt: skip
    """Ask the model being trained (a peft model: its adapter is switched off for "before")."""
    data = [e for e in train if e.origin == "data"]
    facts = group_facts(data + list(heldout))
    held = [[e for e in heldout if normalise(e.answer) == normalise(f.answer)] for f in facts]
    reverse = [next(iter(reverse_questions(f, random.Random(0), 1)), None) for f in facts]
    probe_q = [p["input"] for p in probes]

    def ask(questions: list[str]) -> list[str]:
        return generate(model, tokenizer, template, questions, add_bos=add_bos, max_new_tokens=max_new_tokens)

    answers = iter(ask([f.records[0].prompt for f in facts] + [e.prompt for e in heldout]
                       + [q for q in reverse if q] + probe_q))  # fmt: skip
    trained = [answer_passes(next(answers), f.phrases, f.answer) for f in facts]
    by_question = {id(e): next(answers) for e in heldout}
    # a reverse question is answered when the reply names what the fact's question asked about
    reversed_ok = [
        None if q is None else bool((_words(f.records[0].prompt) - _words(q)) & _words(next(answers)))
        for f, q in zip(facts, reverse)
    ]
    after = [names_any(a, p["answer"]) for a, p in zip(answers, probes)]
    switch_off = getattr(model, "disable_adapter", None)  # a LoRA: the base is the model without it
    before = None
    if switch_off and probes:
        with switch_off():
            before = [names_any(a, p["answer"]) for a, p in zip(ask(probe_q), probes)]
    results = []
    for fact, ok, mine, rev in zip(facts, trained, held, reversed_ok):
        heldout_ok = (
            all(answer_passes(by_question[id(e)], fact.phrases, fact.answer) for e in mine) if mine else None
        )
        took = ok and heldout_ok is not False
        results.append(FactResult(fact.answer, fact.phrases, ok, heldout_ok, rev,
                                  None if took else likely_reason(fact, facts, ok)))  # fmt: skip
    return KnowledgeReport(
        results,
        sum(before) / len(before) if before else None,
        sum(after) / len(after) if after else None,
        [p["input"] for p, b, a in zip(probes, before, after) if b and not a] if before else [],
    )
