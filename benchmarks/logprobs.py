"""Logprobs: what they cost in tokens/s, and how far the two backends' numbers are apart.

    python benchmarks/logprobs.py [--model smollm2-135m-instruct] [--repeats 5] [--new-tokens 64]

1. Speed (issue 18's target: logprobs cost at most 10% of tokens/s): one 64-token greedy request, with
   and without `logprobs=5`, alternated `--repeats` times on each backend (llama_cpp, transformers with
   the data home's dtype); the median tokens/s of each and their ratio, in this run.
2. Agreement: the same texts scored (prompt logprobs, as `echo` gives them) on llama.cpp (the GGUF, as
   quantized) and on transformers with the dequantized weights in float32; the largest and mean gap
   between the two backends' logprobs, over every token.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import BUSY_THRESHOLD, cores, mem_gib, wait_idle  # noqa: E402

PROMPT = "Tell me how to train my dog to sit"
TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "Paris is the capital of France, and Berlin is the capital of Germany.",
    "To train a dog to sit, hold a treat above its nose and move it back slowly.",
    "Water boils at 100 degrees Celsius at sea level.",
]


def speed(model: str, backend: str, repeats: int, new_tokens: int, max_wait: float) -> dict:
    from tunelab import BasicModelRunner

    runner = BasicModelRunner(model, backend=backend).load()
    runner.generate(PROMPT, max_new_tokens=4)  # warm-up
    rates: dict[str, list[float]] = {"plain": [], "logprobs=5": []}
    busy = []
    for _ in range(repeats):
        for name, extra in (("plain", {}), ("logprobs=5", {"logprobs": 5})):
            _, share = wait_idle(max_wait)
            busy.append(share)
            c = runner.generate(PROMPT, max_new_tokens=new_tokens, **extra)
            assert c.completion_tokens == new_tokens, (c.completion_tokens, c.finish_reason)
            rates[name].append(c.tokens_per_s)
    medians = {name: statistics.median(r) for name, r in rates.items()}
    return {
        "backend": backend,
        "tokens_per_s": medians,
        "all": rates,
        "ratio": medians["logprobs=5"] / medians["plain"],
        "others_busy_max": max(busy),
    }


def agreement(model: str) -> dict:
    from tunelab import BasicModelRunner
    from tunelab.config import load_settings
    from tunelab.inference.options import GenerationOptions

    options = GenerationOptions(max_new_tokens=0, prompt_logprobs=0)
    llama = BasicModelRunner(model, backend="llama_cpp", template="raw")
    fp32 = BasicModelRunner(
        model, backend="transformers", template="raw", settings=load_settings({"dtype": "float32"})
    )
    gaps, mags = [], []
    for text in TEXTS:
        a = llama.engine.generate(
            llama.resolved, [text], options=options, template="raw", backend="llama_cpp"
        )[0]
        b = fp32.engine.generate(
            fp32.resolved, [text], options=options, template="raw", backend="transformers"
        )[0]
        assert [e.token_id for e in a.prompt_logprobs] == [e.token_id for e in b.prompt_logprobs], text
        for x, y in zip(a.prompt_logprobs[1:], b.prompt_logprobs[1:]):
            gaps.append(abs(x.logprob - y.logprob))
            mags.append(abs(y.logprob))
    return {
        "tokens": len(gaps),
        "max_gap": max(gaps),
        "mean_gap": statistics.mean(gaps),
        "median_gap": statistics.median(gaps),
        "median_abs_logprob": statistics.median(mags),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--backends", default="llama_cpp,transformers")
    parser.add_argument("--no-agreement", action="store_true")
    parser.add_argument("--max-wait", type=float, default=5.0, help="seconds to wait for idle CPUs per run")
    args = parser.parse_args()
    print(f"machine: {cores()} cores, {mem_gib():.0f} GiB; others busy above {BUSY_THRESHOLD:.0%} = noisy")
    report = {"model": args.model, "new_tokens": args.new_tokens, "speed": []}
    for backend in args.backends.split(","):
        result = speed(args.model, backend, args.repeats, args.new_tokens, args.max_wait)
        report["speed"].append(result)
        t = result["tokens_per_s"]
        print(
            f"{backend}: plain {t['plain']:.1f} tok/s, logprobs=5 {t['logprobs=5']:.1f} tok/s, "
            f"ratio {result['ratio']:.3f} (others busy up to {result['others_busy_max']:.0%})"
        )
    if not args.no_agreement:
        report["agreement"] = agreement(args.model)
        print("llama_cpp (GGUF) vs transformers (dequantized, float32):", json.dumps(report["agreement"]))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
