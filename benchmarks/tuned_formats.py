"""A tuned model's GGUF: merged weights in F16 (the default) against Q8_0, on speed and on held-out facts.

    python benchmarks/tuned_formats.py [--sets acme_company fictional_people ...] [--new-tokens 128]

For each knowledge fact set (benchmarks/knowledge/) the newest tuned SmolLM2 in the registry trained on
it (`python benchmarks/knowledge.py --sets SET` makes one) is written again over its base GGUF with the
merged weights in Q8_0 (`export_gguf_over_base(..., outtype="q8_0")`), and both files answer the set's
held-out questions on llama.cpp (greedy, a fact counts when the answer names its key, as knowledge.py
scores). Speed: the base file, the F16 file and the Q8_0 file take turns on one prompt and on 8 prompts
as one batch (greedy, `--new-tokens`), in one process, so the ratios against the base come from one run.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from knowledge import load_set  # noqa: E402
from machine import cores, mem_gib, wait_idle  # noqa: E402

SETS = ["acme_company", "fictional_people", "fictional_places", "fictional_products"]
QUESTIONS = [
    "Tell me how to train my dog to sit",
    "What is the capital of France?",
    "Write a short poem about the sea.",
    "Explain what a neural network is.",
    "Give me three tips for a job interview.",
    "What causes the seasons on Earth?",
    "How do I make a cup of tea?",
    "Describe a sunset in two sentences.",
]


def newest_tuned_on(name: str, settings) -> str | None:
    """The newest registry entry whose held-out questions (the split kept back from its training data)
    are training questions of this set."""
    train = {r["input"] for r in load_set(name) if r["split"] == "train"}
    entries = sorted((settings.home / "registry").glob("*/heldout.jsonl"), key=lambda p: -p.stat().st_mtime)
    for path in entries:
        first = json.loads(path.read_text().splitlines()[0])
        if first["messages"][0]["content"] in train and (path.parent / "model.gguf").exists():
            return path.parent.name
    return None


def accuracy(backend, template, records: list[dict]) -> float:
    from tunelab.evaluation.scoring import names_any
    from tunelab.inference.options import GenerationOptions

    texts = [template.render_chat([{"role": "user", "content": r["input"]}]) for r in records]
    outs = backend.generate(texts, GenerationOptions(max_new_tokens=64, stop=template.stop))
    return sum(names_any(o.text, r["answer"]) for o, r in zip(outs, records)) / len(records)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sets", nargs="*", default=SETS)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    from tunelab.config import load_settings
    from tunelab.export.gguf_over_base import export_gguf_over_base
    from tunelab.inference.backends.llama_cpp_backend import LlamaCppBackend
    from tunelab.inference.options import GenerationOptions
    from tunelab.inference.templates import resolve_template
    from tunelab.models.resolve import resolve

    console = Console()
    settings = load_settings()
    console.print(f"machine: {cores()} cores, {mem_gib():.0f} GiB")
    base_path = resolve("smollm2-135m-instruct", settings).gguf_path
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.sets:
            model_id = newest_tuned_on(name, settings)
            if model_id is None:
                console.print(f"[yellow]{name}: no tuned model in the registry (benchmarks/knowledge.py)[/]")
                continue
            f16 = settings.home / "registry" / model_id / "model.gguf"
            q8 = export_gguf_over_base(model_id, Path(tmp) / f"{name}-q8_0.gguf", settings, outtype="q8_0")
            files = {"base Q4_1": base_path, "tuned F16": f16, "tuned Q8_0": q8}
            backends = {label: LlamaCppBackend(path) for label, path in files.items()}
            template = resolve_template("auto", model_chat_template=backends["tuned F16"].chat_template)
            heldout = [r for r in load_set(name) if r["split"] == "heldout"]
            tuned = ("tuned F16", "tuned Q8_0")
            acc = {label: accuracy(backends[label], template, heldout) for label in tuned}
            texts = [template.render_chat([{"role": "user", "content": q}]) for q in QUESTIONS]
            options = GenerationOptions(max_new_tokens=args.new_tokens, stop=template.stop)
            speed = {label: {"1": [0, 0.0], "8": [0, 0.0]} for label in files}
            wait_idle(120)
            for _ in range(args.repeats):
                for label, backend in backends.items():  # the files take turns: a busy spell hits all
                    for case, batch in (("1", texts[:1]), ("8", texts)):
                        start = time.perf_counter()
                        outs = backend.generate(batch, options)
                        speed[label][case][0] += sum(o.completion_tokens for o in outs)
                        speed[label][case][1] += time.perf_counter() - start
            for backend in backends.values():
                backend.close()
            rate = {label: {c: n / s for c, (n, s) in cases.items()} for label, cases in speed.items()}
            mb = {label: Path(p).stat().st_size / 1e6 for label, p in files.items()}
            rows.append({"set": name, "model": model_id, "accuracy": acc, "rate": rate, "mb": mb})
    table = Table(title=f"tuned SmolLM2 GGUFs on llama.cpp: greedy, {args.new_tokens} new tokens")
    for col in ("set", "file", "MB", "held-out", "1 prompt tok/s", "vs base", "8 prompts tok/s", "vs base"):
        table.add_column(col, justify="left" if col in ("set", "file") else "right")
    for row in rows:
        base = row["rate"]["base Q4_1"]
        for i, (label, r) in enumerate(row["rate"].items()):
            acc = row["accuracy"].get(label)
            table.add_row(
                row["set"] if i == 0 else "", label, f"{row['mb'][label]:.0f}",
                f"{acc:.0%}" if acc is not None else "-", f"{r['1']:.1f}", f"{r['1'] / base['1']:.2f}x",
                f"{r['8']:.1f}", f"{r['8'] / base['8']:.2f}x", end_section=(i == 2),
            )  # fmt: skip
    console.print(table)
    for label in ("tuned F16", "tuned Q8_0"):
        if rows:
            mean = sum(r["accuracy"][label] for r in rows) / len(rows)
            one = sum(r["rate"][label]["1"] / r["rate"]["base Q4_1"]["1"] for r in rows) / len(rows)
            eight = sum(r["rate"][label]["8"] / r["rate"]["base Q4_1"]["8"] for r in rows) / len(rows)
            console.print(
                f"{label}: held-out {mean:.1%} mean; {one:.2f}x / {eight:.2f}x the base (1 / 8 prompts)"
            )


if __name__ == "__main__":
    main()
