"""One training step of the knowledge recipe, with and without each of its savings, in one run.

    python benchmarks/train_step.py [--set acme_company] [--steps 12] [--repeats 3]

The recipe's own set-up (`tunelab.training.recipe.setup`: SmolLM2's float32 copy, the LoRA adapter, bf16
autocast where the CPU has it, the set's training questions augmented and mixed with replay as
`runner.train` does) and its own batches (the first `--steps` of epoch 0); each way runs the same
batches forward and backward (no optimizer step), taking turns over `--repeats` rounds; the best round
of each is kept. The ways:

- `baseline`: whole rows through the model, PyTorch's scaled-dot-product attention (sdpa);
- `shared start`: the start every row shares (the template's system prompt) run once, its KV cache
  given to every row (`recipe.summed_loss`);
- `eager attention`: plain matmul + softmax attention instead of sdpa (`recipe.eager_attention_fits`);
- `both`: what the recipe does now on a CPU for rows this short;
- `compiled layers` (`--compile`): each decoder layer through `torch.compile(dynamic=True)` (inductor;
  one graph the layers share), whole rows, eager attention; its compile time is printed apart (the
  first steps), the other ways run with torch.compile's stance `force_eager`.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cores, mem_gib, wait_idle  # noqa: E402

SETS = Path(__file__).resolve().parent / "knowledge"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--set", default="acme_company", help="a fact set in benchmarks/knowledge/")
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--compile", action="store_true", help="also time compiled decoder layers")
    args = parser.parse_args()

    import tunelab.training.recipe as recipe
    from tunelab.config import load_settings
    from tunelab.models.resolve import resolve
    from tunelab.training.data import load_records

    settings = load_settings()
    base = resolve("smollm2-135m-instruct", settings)
    rows = [json.loads(line) for line in (SETS / f"{args.set}.jsonl").read_text().splitlines() if line]
    records = [{"input": r["input"], "output": r["output"]} for r in rows if r["split"] == "train"]
    config = recipe.make_config()
    run = recipe.setup(base, load_records(records).examples, settings, config, None)
    lengths = [len(r.input_ids) for r in run.train_rows]
    batches = recipe.epoch_batches(lengths, config.batch_size, config.seed, 0)[: args.steps]
    batches = [[run.train_rows[i] for i in b] for b in batches]
    shared = [recipe.shared_prefix_length(recipe.collate(b, run.pad_id, "cpu"), 10**6) for b in batches]
    tokens = sum(len(r.input_ids) for b in batches for r in b)
    print(
        f"machine: {cores()} cores, {mem_gib():.0f} GiB; smollm2-135m-instruct on {args.set}, bf16 autocast "
        f"{run.bf16}; {len(batches)} steps of {len(batches[0])} rows, "
        f"{tokens / len(batches):.0f} tokens a step, "
        f"{sum(shared) / len(shared):.0f} of each row shared by its batch"
    )
    model = run.model
    ways = {
        "baseline": (False, "sdpa"),
        "shared start": (True, "sdpa"),
        "eager attention": (False, "eager"),
        "both": (True, "eager"),
    }

    def one_pass() -> float:
        start = time.perf_counter()
        for rows in batches:
            recipe.backward_batch(
                run.accelerator, model, [rows], recipe.answer_tokens(rows), run.pad_id, run.bf16
            )
            model.zero_grad(set_to_none=True)
        return time.perf_counter() - start

    if args.compile:
        import torch

        ways["compiled layers"] = (False, "eager")
        for layer in (m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")):
            layer.compile(dynamic=True)
        recipe.SHARED_PREFIX_MIN = 10**9
        model.set_attn_implementation("eager")
        print(f"compiling: the first pass over the {len(batches)} steps took {one_pass():.0f} s")
    best = {way: float("inf") for way in ways}
    wait_idle(120)
    for _ in range(args.repeats):
        for way, (share, attention) in ways.items():
            recipe.SHARED_PREFIX_MIN = 8 if share else 10**9
            model.set_attn_implementation(attention)
            stance = "default" if way == "compiled layers" else "force_eager"
            with torch.compiler.set_stance(stance) if args.compile else nullcontext():
                best[way] = min(best[way], one_pass() / len(batches))
    for way, seconds in best.items():
        print(f"{way:16s} {seconds:.3f} s a step   {best['baseline'] / seconds:.2f}x the baseline")


if __name__ == "__main__":
    main()
