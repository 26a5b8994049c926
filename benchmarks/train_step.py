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
- `both`: what the recipe does now on a CPU for rows this short.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
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
    best = {way: float("inf") for way in ways}
    wait_idle(120)
    for _ in range(args.repeats):
        for way, (share, attention) in ways.items():
            recipe.SHARED_PREFIX_MIN = 8 if share else 10**9
            model.set_attn_implementation(attention)
            start = time.perf_counter()
            for rows in batches:
                recipe.backward_batch(
                    run.accelerator, model, [rows], recipe.answer_tokens(rows), run.pad_id, run.bf16
                )
                model.zero_grad(set_to_none=True)
            best[way] = min(best[way], (time.perf_counter() - start) / len(batches))
    for way, seconds in best.items():
        print(f"{way:16s} {seconds:.3f} s a step   {best['baseline'] / seconds:.2f}x the baseline")


if __name__ == "__main__":
    main()
