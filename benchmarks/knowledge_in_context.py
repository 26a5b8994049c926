"""The facts handed to the untuned model in its prompt: what the model can do with a fact it reads.

Issue 17 asks a fine-tune to answer >= 90% of held-out questions (other wordings) about its new facts.
This measures the same held-out questions (benchmarks/knowledge/, new_facts) asked of the *untuned*
embedded chat model with the facts in the user message, no training at all:

- `fact`: the fact's own answer sentence alone (a perfect retriever: the reading-comprehension ceiling
  of the model on that wording; what a fine-tune that stored the fact exactly could hope for);
- `set`: every trained answer sentence of the set (the whole FAQ in the prompt, 30-36 facts).

    python benchmarks/knowledge_in_context.py [--sets acme_company ...] [--context fact set]

A question counts as in benchmarks/knowledge.py: the reply names the fact's key phrase. Compare with
the tuned model's held-out accuracy in RESULTS.md (same questions, same scoring).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from knowledge import DOCS, MODEL, SETS, load_set, score  # noqa: E402
from machine import cores, mem_gib, wait_idle  # noqa: E402

ASK = "{facts}\n\nAnswer from the facts above: {question}"


def prompts_for(records: list[dict], context: str) -> tuple[list[str], list[str]]:
    """The held-out questions with the facts in front of each, and their key phrases."""
    train = [r for r in records if r["split"] == "train"]
    heldout = [r for r in records if r["split"] == "heldout"]
    every = list(dict.fromkeys(r["output"] for r in train))
    prompts = []
    for r in heldout:
        facts = [r["output"]] if context == "fact" else every
        prompts.append(ASK.format(facts="\n".join(f"- {f}" for f in facts), question=r["input"]))
    return prompts, [r["answer"] for r in heldout]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sets", nargs="+", default=SETS, choices=[*SETS, DOCS])
    parser.add_argument("--context", nargs="+", default=["fact", "set"], choices=["fact", "set"])
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    from tunelab import BasicModelRunner

    console = Console()
    console.print(f"machine: {cores()} cores, {mem_gib():.0f} GiB; model {MODEL}, untuned, greedy")
    wait_idle(60)
    runner = BasicModelRunner(MODEL)
    table = Table(title="held-out questions answered by the untuned model with the facts in its prompt")
    for col in ("set", "questions", "no facts", *(f"facts: {c}" for c in args.context), "seconds"):
        table.add_column(col, justify="left" if col == "set" else "right")
    for name in args.sets:
        records = load_set(name)
        start = time.perf_counter()
        cells = []
        heldout = [r for r in records if r["split"] == "heldout"]
        bare = score(runner, [r["input"] for r in heldout], [r["answer"] for r in heldout])
        cells.append(f"{sum(bare) / len(bare):.0%}")
        for context in args.context:
            prompts, keys = prompts_for(records, context)
            found = score(runner, prompts, keys)
            cells.append(f"{sum(found) / len(found):.0%} ({sum(found)}/{len(found)})")
        table.add_row(name, str(len(heldout)), *cells, f"{time.perf_counter() - start:.0f}")
        console.print(f"{name}: " + ", ".join(cells))
    console.print(table)


if __name__ == "__main__":
    main()
