"""A model fine-tuned by tunelab, on the fast path: as fast as the embedded model it came from?

    python benchmarks/tuned.py [--base smollm2-135m-instruct|gemma-3-270m] [--new-tokens 128] [--prompts 8]

1. Tunes the embedded model `--base` with LoRA on 40 `new_facts` questions for one epoch (a minute or two),
2. measures greedy decode tokens/s, one prompt and the prompt set as one batch, for: the embedded model
   on llama_cpp (the baseline); the tuned model on transformers (its LoRA merged into float32 weights at
   load, run in float32: the reference path); the tuned model as `backend="auto"` runs it (the GGUF
   training wrote into its registry entry: the base file with the merged weights in F16, on
   llama_cpp); the same with the merged weights in Q8_0; and, for a Llama-architecture base, a
   whole-model F32 GGUF export; all in this run;
3. compares each path's greedy answers with the reference path's, prompt by prompt.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
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

    # the reference path in float32, the precision the LoRA was trained against (auto would be bf16 here)
    config = {"dtype": "float32"} if backend == "transformers" else None
    runner = BasicModelRunner(name, config, backend=backend).load()
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
    parser.add_argument("--base", default=BASE, choices=["smollm2-135m-instruct", "gemma-3-270m"])
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--prompts", type=int, default=len(PROMPTS))
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    from tunelab import BasicModelRunner
    from tunelab.config import load_settings
    from tunelab.errors import ConfigError
    from tunelab.export.gguf import export_gguf
    from tunelab.export.gguf_over_base import export_gguf_over_base
    from tunelab.export.merged import base_gguf_for, export_merged
    from tunelab.models.resolve import resolve
    from tunelab.training.datasets import load_dataset

    console = Console()
    settings = load_settings()
    spawn = multiprocessing.get_context("spawn")
    prompts = PROMPTS[: args.prompts]
    base = args.base
    runner = BasicModelRunner(base)
    runner.load_data(load_dataset("new_facts", "train")[:40])
    with console.status("tuning (LoRA, 1 epoch on 40 questions)"):
        tuned = runner.train(epochs=1, eval_fraction=0, progress=False)
    assert resolve(tuned.model_id, settings).fast_gguf is not None, "training wrote no GGUF"
    with tempfile.TemporaryDirectory() as tmp:
        q8 = export_gguf_over_base(tuned.model_id, Path(tmp) / "tuned-q8_0.gguf", settings, outtype="q8_0")
        rows = [
            ("embedded, llama_cpp (baseline)", base, "llama_cpp"),
            ("tuned, LoRA on transformers (reference)", tuned.model_id, "transformers"),
            ("tuned, default: base GGUF + merged F16, llama_cpp", tuned.model_id, "auto"),
            ("tuned, base GGUF + merged Q8_0, llama_cpp", str(q8), "llama_cpp"),
        ]
        merged = export_merged(tuned.model_id, Path(tmp) / "merged", settings)
        try:
            base_gguf = base_gguf_for(tuned.model_id, settings)
            f32 = export_gguf(merged, Path(tmp) / "tuned-f32.gguf", base_gguf=base_gguf, outtype="f32")
            rows.append(("tuned, whole-model F32 GGUF export, llama_cpp", str(f32), "llama_cpp"))
        except ConfigError as exc:  # export_gguf writes Llama-architecture models only
            console.print(f"no whole-model F32 export: {exc}")
        results = {}
        for label, name, backend in rows:
            # each path in a fresh process, as in generate.py: nothing of one path's run (torch's threads,
            # its memory) is left to the next
            with console.status(f"measuring {label}"), ProcessPoolExecutor(1, mp_context=spawn) as pool:
                results[label] = pool.submit(measure, name, backend, prompts, args.new_tokens).result()
    baseline = results[rows[0][0]]
    reference = results[rows[1][0]]["texts"]
    table = Table(title=f"{base} tuned by tunelab: greedy, {args.new_tokens} new tokens, {cores()} threads")
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
