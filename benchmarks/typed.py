"""Typed output: what constraining costs, and why llguidance constrains the transformers backend.

    python benchmarks/typed.py [--prompts 16] [--new-tokens 64]

1. The library choice, on SmolLM2's tokenizer and a 3-field schema: time to prepare (tokenizer view,
   schema compile) and time per generated token (mask + advance) for llguidance and outlines-core,
   walked along the same valid answer. (xgrammar and lm-format-enforcer are not installed by tunelab:
   xgrammar needs triton and apache-tvm-ffi; lm-format-enforcer builds its masks in Python.)
2. The cost of constraining in tunelab: the same prompts answered with and without the schema, as one
   batch, on both backends; tokens/s and the ratio constrained / free, measured in this run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import BUSY_THRESHOLD, cores, mem_gib, wait_idle  # noqa: E402

MODEL = "smollm2-135m-instruct"
SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "maxLength": 120, "description": "a short answer"},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 10},
        "about_science": {"type": "boolean"},
    },
    "required": ["answer", "confidence", "about_science"],
    "additionalProperties": False,
}
ANSWER = (
    '{"answer": "Mars is the fourth planet from the Sun, red with iron dust.", '
    '"confidence": 7, "about_science": true}'
)
TOPICS = ["Mars", "volcanoes", "jazz", "bread", "whales", "chess", "sleep", "coffee", "the moon", "taxes",
          "the Roman empire", "vaccines", "knitting", "black holes", "Python", "electric cars"]  # fmt: skip


def hf_tokenizer():
    from transformers import AutoTokenizer

    from tunelab.config import load_settings
    from tunelab.models.gguf_cache import dequantized_dir
    from tunelab.models.resolve import resolve

    settings = load_settings()
    model = resolve(MODEL, settings)
    return AutoTokenizer.from_pretrained(dequantized_dir(model.gguf_path, settings.home))


def bench_llguidance(tok, ids: list[int]) -> dict:
    import llguidance
    import llguidance.hf
    import llguidance.torch

    from tunelab.inference.backends.json_constraint import llg_grammar

    t0 = time.perf_counter()
    lltok = llguidance.hf.from_tokenizer(tok, n_vocab=len(tok))
    t1 = time.perf_counter()
    matcher = llguidance.LLMatcher(lltok, llg_grammar(json.dumps(SCHEMA)), log_level=0)
    t2 = time.perf_counter()
    mask = llguidance.torch.allocate_token_bitmask(1, len(tok))
    per_token = []
    for token in ids:
        start = time.perf_counter()
        llguidance.torch.fill_next_token_bitmask(matcher, mask, 0)
        allowed = bool((int(mask[0, token // 32]) >> (token % 32)) & 1)
        matcher.consume_token(token)
        per_token.append(time.perf_counter() - start)
        assert allowed, f"llguidance refused token {token} of a valid answer"
    return {"prepare_s": t1 - t0, "compile_s": t2 - t1, "per_token_us": statistics.median(per_token) * 1e6}


def bench_outlines_core(tok, ids: list[int]) -> dict:
    from outlines_core import Guide, Index, Vocabulary
    from outlines_core.json_schema import build_regex_from_schema
    from transformers.convert_slow_tokenizer import bytes_to_unicode

    t0 = time.perf_counter()
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    table: dict[bytes, list[int]] = {}
    for text, token in tok.get_vocab().items():
        if token == tok.eos_token_id or text in tok.all_special_tokens:
            continue
        table.setdefault(bytes(byte_of[c] for c in text if c in byte_of), []).append(token)
    vocabulary = Vocabulary(tok.eos_token_id, table)
    t1 = time.perf_counter()
    index = Index(build_regex_from_schema(json.dumps(SCHEMA), r"[ ]?"), vocabulary)
    guide = Guide(index)
    t2 = time.perf_counter()
    per_token = []
    for token in ids:
        start = time.perf_counter()
        allowed = token in guide.get_tokens()
        guide.advance(token)
        per_token.append(time.perf_counter() - start)
        assert allowed, f"outlines-core refused token {token} of a valid answer"
    return {"prepare_s": t1 - t0, "compile_s": t2 - t1, "per_token_us": statistics.median(per_token) * 1e6}


def bench_tunelab(backend: str, prompts: list[str], new_tokens: int) -> dict:
    from tunelab import BasicModelRunner
    from tunelab.inference.typed import output_spec, prompt_with_instruction

    runner = BasicModelRunner(MODEL, backend=backend).load()
    runner.generate(prompts[:2], max_new_tokens=8, output_type=SCHEMA)  # warm: load, compile, caches
    # the free run gets the same prompt text (with the field instruction typed output adds), so the
    # two runs differ only in the constraint
    instructed = [prompt_with_instruction(p, output_spec(SCHEMA)) for p in prompts]
    out = {}
    for label, texts, kwargs in (
        ("free", instructed, {}),
        ("constrained", prompts, {"output_type": SCHEMA}),
    ):
        waited, share = wait_idle(60)
        start = time.perf_counter()
        records = runner.generate(texts, max_new_tokens=new_tokens, **kwargs)
        seconds = time.perf_counter() - start
        tokens = sum(r.completion_tokens for r in records)
        valid = sum(r.error is None for r in records)
        out[label] = {"tokens": tokens, "seconds": seconds, "tps": tokens / seconds, "valid": valid,
                      "others_cpu": share}  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=64)
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    console = Console()
    console.print(f"machine: {cores()} cores, {mem_gib():.0f} GiB; model {MODEL}")
    tok = hf_tokenizer()
    ids = tok(ANSWER, add_special_tokens=False)["input_ids"]
    table = Table(
        title=f"JSON-schema masks on {MODEL}'s tokenizer ({len(tok)} tokens), {len(ids)}-token answer"
    )
    for col in ("library", "prepare s", "compile s", "per token µs (median)"):
        table.add_column(col, justify="right" if col != "library" else "left")
    for name, fn in (("llguidance", bench_llguidance), ("outlines-core", bench_outlines_core)):
        try:
            r = fn(tok, ids)
            table.add_row(name, f"{r['prepare_s']:.2f}", f"{r['compile_s']:.3f}", f"{r['per_token_us']:.0f}")
        except ImportError as exc:
            table.add_row(name, "not installed", str(exc), "")
    console.print(table)

    prompts = [f"Tell me one fact about {t}." for t in (TOPICS * 4)[: args.prompts]]
    table = Table(title=f"tunelab, {len(prompts)} prompts as one batch, up to {args.new_tokens} new tokens")
    for col in (
        "backend",
        "free tok/s",
        "constrained tok/s",
        "constrained / free",
        "valid objects",
        "others' CPU",
    ):
        table.add_column(col, justify="right" if col != "backend" else "left")
    notes = []
    for backend in ("llama_cpp", "transformers"):
        r = bench_tunelab(backend, prompts, args.new_tokens)
        free, constrained = r["free"], r["constrained"]
        busy = max(free["others_cpu"], constrained["others_cpu"])
        if busy > BUSY_THRESHOLD:
            notes.append(f"{backend} ran while other processes used {busy:.0%} of the CPUs")
        table.add_row(
            backend,
            f"{free['tps']:.1f}",
            f"{constrained['tps']:.1f}",
            f"{constrained['tps'] / free['tps']:.2f}x",
            f"{constrained['valid']}/{len(prompts)}",
            f"{busy:.0%}",
        )
    console.print(table)
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")


if __name__ == "__main__":
    main()
