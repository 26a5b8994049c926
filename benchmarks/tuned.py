"""A model fine-tuned by tunelab, on the fast path: as fast as the embedded model it came from?

    python benchmarks/tuned.py [--new-tokens 128] [--prompts 8]

1. Tunes `smollm2-135m-instruct` with LoRA on 40 `new_facts` questions for one epoch (about a minute),
2. measures greedy decode tokens/s, one prompt and the prompt set as one batch, for: the embedded model
   on llama_cpp (the baseline); the tuned model on transformers (its LoRA merged into float32 weights at
   load: the reference path); the tuned model as `backend="auto"` runs it (the F16 GGUF training wrote
   into its registry entry, on llama_cpp); and an F32 GGUF export of it, all in this run;
3. compares each path's greedy answers with the reference path's, prompt by prompt.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cores, wait_idle  # noqa: E402

BASE = "smollm2-135m-instruct"
PROMPTS = [
    "Who is the pope now?",
    "Who owns Twitter?",
    "Tell me how to train my dog to sit",
    "What do you think of Mars?",
    "Who won the Super Bowl in 2025?",
    "Explain how a bill becomes a law.",
    "Write a short poem about the sea.",
    "What is the capital of France?",
]


def first_difference(a: str, b: str) -> int | None:
    if a == b:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def measure(name: str, backend: str, prompts: list[str], new_tokens: int) -> dict:
    from tunelab import BasicModelRunner

    runner = BasicModelRunner(name, backend=backend).load()
    runner.generate(prompts[0], max_new_tokens=4)  # warm
    wait_idle(30)
    start = time.perf_counter()
    one = runner.generate(prompts[0], max_new_tokens=new_tokens)
    single_s = time.perf_counter() - start
    wait_idle(30)
    start = time.perf_counter()
    many = runner.generate(prompts, max_new_tokens=new_tokens)
    batch_s = time.perf_counter() - start
    return {
        "one": one.completion_tokens / single_s,
        "batch": sum(c.completion_tokens for c in many) / batch_s,
        "texts": [c.text for c in many],
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    from tunelab import BasicModelRunner
    from tunelab.config import load_settings
    from tunelab.datasets import load_dataset
    from tunelab.export import base_gguf_for, export_gguf, export_merged
    from tunelab.models import resolve

    console = Console()
    settings = load_settings()
    prompts = PROMPTS[: args.prompts]
    runner = BasicModelRunner(BASE)
    runner.load_data(load_dataset("new_facts", "train")[:40])
    with console.status("tuning (LoRA, 1 epoch on 40 questions)"):
        tuned = runner.train(epochs=1, eval_fraction=0, progress=False)
    assert resolve(tuned.model_id, settings).fast_gguf is not None, "training wrote no GGUF"
    with tempfile.TemporaryDirectory() as tmp:
        merged = export_merged(tuned.model_id, Path(tmp) / "merged", settings)
        base_gguf = base_gguf_for(tuned.model_id, settings)
        f32 = export_gguf(merged, Path(tmp) / "tuned-f32.gguf", base_gguf=base_gguf, outtype="f32")
        rows = [
            ("embedded, llama_cpp (baseline)", BASE, "llama_cpp"),
            ("tuned, LoRA on transformers (reference)", tuned.model_id, "transformers"),
            ("tuned, default: its F16 GGUF on llama_cpp", tuned.model_id, "auto"),
            ("tuned, F32 GGUF export, llama_cpp", str(f32), "llama_cpp"),
        ]
        results = {}
        for label, name, backend in rows:
            with console.status(f"measuring {label}"):
                results[label] = measure(name, backend, prompts, args.new_tokens)
    baseline = results[rows[0][0]]
    reference = results[rows[1][0]]["texts"]
    table = Table(title=f"{BASE} tuned by tunelab: greedy, {args.new_tokens} new tokens, {cores()} threads")
    # the reference path's answers are what the others are compared with
    for col in ("path", "1 prompt tok/s", "vs embedded", f"{len(prompts)} prompts tok/s", "vs embedded",
                "same text as reference"):  # fmt: skip
        table.add_column(col, justify="left" if col == "path" else "right")
    for label, _, _ in rows:
        r = results[label]
        same = [first_difference(a, b) for a, b in zip(r["texts"], reference)]
        agree = f"{sum(d is None for d in same)}/{len(same)}"
        parted = [d for d in same if d is not None]
        if parted:
            agree += f" (others part after {min(parted)}-{max(parted)} chars)"
        table.add_row(
            label,
            f"{r['one']:.1f}",
            f"{r['one'] / baseline['one']:.2f}x",
            f"{r['batch']:.1f}",
            f"{r['batch'] / baseline['batch']:.2f}x",
            agree,
        )
    console.print(table)


if __name__ == "__main__":
    main()
