"""What training keeps back, and how it knows the model learned: held-out questions answered by generation.

- `split_by_fact`: the held-out questions are *other wordings of trained facts*: from facts with two
  or more questions, one question each is kept back whole (no rewording is generated from it or
  copies it), so held-out accuracy measures what the user wants: the fact answered when asked in
  words it was not trained on. Facts asked only once stay in training (holding them back would test
  a fact the model never saw). Multi-turn conversations are split at random, as before.
- `HeldoutSet.accuracy`: the model *answers* the held-out questions (greedy, batched) and an answer
  counts when it names the fact's key phrase (`augment.key_phrases`), or, for an answer with no
  phrase to look for, when its token F1 against the reference is at least 0.5. Training keeps the
  checkpoint where this is best (Gekhman et al.: stop on held-out accuracy, not on train loss).
- `kept_evaluation`: which evaluation is "best" when the held-out set is small: a later step that is
  worse by no more than the set can tell apart (one standard error, at least one question) replaces
  an earlier peak, since it trained further on a cooler schedule.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass

import torch

from tunelab.evaluation.scoring import names_any, normalise, token_f1
from tunelab.inference.templates import Template
from tunelab.training.augment import group_facts, is_single_turn
from tunelab.training.data import Example

F1_PASS = 0.5


def kept_evaluation(evaluations: list[tuple[int, float]], questions: int) -> tuple[int, float]:
    """The (step, held-out accuracy) to keep, of evaluations in step order, on `questions` questions.

    The highest accuracy so far (the peak) is kept, or a later step within noise of it: at most one
    standard error of the peak (add-one smoothed, so 9 of 9 has one too) or one question below it. On
    the ~10% of a data set held back (9 questions at 30 facts, 36 at 120) an early peak is often one
    lucky question: on 120 facts the last step answered 1 of 36 fewer than step 207 of 362 and 77% of
    the benchmark's questions where step 207 answered 64% (benchmarks/RESULTS.md, session 26).
    """
    if not evaluations:
        raise ValueError("no evaluations to choose from")
    if questions < 1:
        raise ValueError(f"held-out accuracy on {questions} questions: there must be at least one")
    kept = peak = evaluations[0]
    for step, accuracy in evaluations[1:]:
        if accuracy > peak[1]:
            peak = (step, accuracy)
        smoothed = (peak[1] * questions + 1) / (questions + 2)
        margin = max(1 / questions, math.sqrt(smoothed * (1 - smoothed) / questions))
        if accuracy >= peak[1] - margin - 1e-9:
            kept = (step, accuracy)
    return kept


def split_by_fact(examples: list[Example], eval_fraction: float, seed: int) -> tuple[list, list]:
    """(train, held-out): `eval_fraction` of the questions kept back, at most one from each fact asked
    two or more times; multi-turn examples are split at random in the same proportion."""
    if eval_fraction <= 0 or len(examples) < 2:
        return list(examples), []
    rng = random.Random(seed)
    facts = [fact for fact in group_facts(examples) if len(fact.records) >= 2]
    rng.shuffle(facts)
    single = sum(len(f.records) for f in facts)
    n_held = min(len(facts), max(1, round(single * eval_fraction))) if facts else 0
    held = {id(rng.choice(fact.records)) for fact in facts[:n_held]}
    multi = [e for e in examples if not is_single_turn(e)]
    rng.shuffle(multi)
    held |= {id(e) for e in multi[: round(len(multi) * eval_fraction)]}
    train = [e for e in examples if id(e) not in held]
    return train, [e for e in examples if id(e) in held]


def hold_out_rewordings(added: list[Example], eval_fraction: float, seed: int) -> list[Example]:
    """One generated rewording ("reworded") of `eval_fraction` of the facts, to hold back from training."""
    by_answer: dict[str, list[Example]] = {}
    for example in added:
        if example.origin == "reworded":
            by_answer.setdefault(normalise(example.answer), []).append(example)
    rng = random.Random(seed)
    groups = sorted(by_answer.values(), key=lambda g: g[0].source)
    rng.shuffle(groups)
    n = round(len(groups) * eval_fraction) if eval_fraction > 0 else 0
    return [rng.choice(group) for group in groups[: max(n, 1 if groups and eval_fraction > 0 else 0)]]


def answer_passes(answer: str, phrases: list[str], reference: str) -> bool:
    """Does `answer` give the fact? It names one of its key phrases; with none, F1 >= 0.5."""
    if phrases:
        return names_any(answer, phrases)
    return token_f1(answer, reference) >= F1_PASS


@dataclass
class HeldoutSet:
    """The held-out questions, each with what a correct answer names."""

    examples: list[Example]
    phrases: list[list[str]]

    @classmethod
    def of(cls, heldout: list[Example], train: list[Example]) -> HeldoutSet:
        by_answer = {normalise(f.answer): f.phrases for f in group_facts(list(heldout) + list(train))}
        phrases = [[e.expected] if e.expected else by_answer.get(normalise(e.answer), []) for e in heldout]
        return cls([e for e in heldout if is_single_turn(e)], phrases)

    def accuracy(self, model, tokenizer, template: Template, *, add_bos: bool, max_new_tokens: int = 48):
        """(share of held-out questions answered correctly, the answers)."""
        if not self.examples:
            return None, []
        answers = generate(model, tokenizer, template, [e.prompt for e in self.examples], add_bos=add_bos,
                           max_new_tokens=max_new_tokens)  # fmt: skip
        passed = [answer_passes(a, p, e.answer) for a, p, e in zip(answers, self.phrases, self.examples)]
        return sum(passed) / len(passed), answers


def _stop_ids(tokenizer, template: Template) -> list[int]:
    ids = {tokenizer.eos_token_id}
    for stop in template.stop:
        token = tokenizer.convert_tokens_to_ids(stop)
        if isinstance(token, int) and token != tokenizer.unk_token_id:
            ids.add(token)
    return [i for i in ids if i is not None]


@torch.no_grad()
def generate(
    model, tokenizer, template: Template, prompts: list[str], *, add_bos: bool, max_new_tokens: int = 48,
    batch_size: int = 16,
) -> list[str]:  # fmt: skip
    """Greedy answers of the model being trained (LoRA applied), rendered with the training template."""
    was_training, use_cache = model.training, model.config.use_cache
    model.eval()
    model.config.use_cache = True
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    device = next(model.parameters()).device
    # trained under bf16 autocast, the frozen linears are kept in bf16 (store_frozen_linears_in_bf16):
    # generate under the same autocast, or a float32 activation meets a bf16 weight
    bf16 = any(p.dtype == torch.bfloat16 for p in model.parameters())
    answers: list[str] = []
    try:
        for start in range(0, len(prompts), batch_size):
            texts = [template.render(p) for p in prompts[start : start + batch_size]]
            # as the inference backends do: BOS (when the model wants it), then the rendered prompt
            bos = [tokenizer.bos_token_id] if add_bos else []
            rows = [bos + tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
            width = max(len(r) for r in rows)
            ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=device)
            mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=device)
            with torch.autocast(device.type, torch.bfloat16, enabled=bf16):
                out = model.generate(
                    input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                    eos_token_id=_stop_ids(tokenizer, template), pad_token_id=pad,
                )  # fmt: skip
            answers += tokenizer.batch_decode(out[:, width:], skip_special_tokens=True)
    finally:
        model.config.use_cache = use_cache
        model.train(was_training)
    return [a.strip() for a in answers]
