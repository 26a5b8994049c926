"""GGUF types on llama.cpp: speed (one prompt, 32 prompts) and quality, against the shipped Q4_1 file.

    python benchmarks/formats.py [--types Q4_1 Q4_0 IQ4_NL Q8_0 Q4_K_M] [--out DIR]

Issue 21: is a GGUF type other than the shipped Q4_1 both faster and no worse? Each type is made from
the F16 export of the embedded SmolLM2 file's own weights with llama.cpp's quantizer (into --out, once),
then run by tunelab's llama_cpp backend with repacked weights off and on (`use_extra_bufts`: llama.cpp
repacks Q4_0, Q4_K and IQ4_NL for its GEMM kernels), greedy, 128 new tokens:

- speed: tokens/s for one prompt and for 32 different prompts in one call (the baseline: the Q4_1 file,
  repacking off, measured in the same run); whether 4 batched answers equal their answers alone;
- quality: the 40 `general_probes` answered (the reply contains the answer) and the mean token
  log-probability of 2,000 tokens of this project's docs.

Run on idle CPUs: another busy process slows llama.cpp's threads several-fold.
"""

from __future__ import annotations

import argparse
import ctypes
import json
import sys
import time
from pathlib import Path

import llama_cpp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from generate import DEFAULT_BANDWIDTH_GBS, QUESTIONS  # noqa: E402
from machine import wait_idle  # noqa: E402

from tunelab.config import load_settings  # noqa: E402
from tunelab.export.gguf import export_gguf  # noqa: E402
from tunelab.inference.backends.llama_cpp_backend import LlamaCppBackend  # noqa: E402
from tunelab.inference.options import GenerationOptions  # noqa: E402
from tunelab.inference.templates import resolve_template  # noqa: E402
from tunelab.models.gguf_cache import dequantized_dir  # noqa: E402
from tunelab.models.resolve import resolve  # noqa: E402
from tunelab.training.datasets import load_dataset  # noqa: E402
from tunelab.training.heldout import answer_passes  # noqa: E402

MODEL = "smollm2-135m-instruct"
REPO = Path(__file__).resolve().parents[1]


def make_files(types: list[str], out: Path) -> dict[str, Path]:
    settings = load_settings()
    shipped = resolve(MODEL, settings).gguf_path
    files = {"Q4_1": shipped}
    f16 = out / "smollm2-F16.gguf"
    if not f16.exists():
        export_gguf(dequantized_dir(shipped, settings.home), f16, base_gguf=shipped)
    for name in types:
        if name == "Q4_1":
            continue
        path = out / f"smollm2-{name}.gguf"
        if not path.exists():
            params = llama_cpp.llama_model_quantize_default_params()
            params.ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{name}")
            rc = llama_cpp.llama_model_quantize(str(f16).encode(), str(path).encode(), ctypes.byref(params))
            if rc != 0:
                raise SystemExit(f"llama.cpp could not quantize to {name} (code {rc})")
        files[name] = path
    return files


def measure(path: Path, repack: bool, probes: list[dict], text: str) -> dict:
    wait_idle(60)
    backend = LlamaCppBackend(path, use_extra_bufts=repack)
    template = resolve_template(
        "auto", model_chat_template=backend.chat_template, model_name=MODEL,
        bos_token=backend.bos_token, eos_token=backend.eos_token, add_bos=backend.add_bos,
    )  # fmt: skip
    prompts = [template.render(q, None) for q in (QUESTIONS * 4)[:32]]
    options = GenerationOptions(max_new_tokens=128, temperature=0)
    backend.generate(prompts[:1], GenerationOptions(max_new_tokens=8, temperature=0))  # warm-up
    started = time.perf_counter()
    one = backend.generate(prompts[:1], options)
    one_s = time.perf_counter() - started
    started = time.perf_counter()
    many = backend.generate(prompts, options)
    many_s = time.perf_counter() - started
    alone = [one[0].text] + [backend.generate([p], options)[0].text for p in prompts[1:4]]
    answers = backend.generate([template.render(p["input"], None) for p in probes],
                               GenerationOptions(max_new_tokens=48, temperature=0))  # fmt: skip
    answered = sum(
        answer_passes(a.text, p["answer"] if isinstance(p["answer"], list) else [p["answer"]], "")
        for a, p in zip(answers, probes)
    )
    ids = backend.tokenize(text)[:2000]
    scored = backend.generate([ids[i : i + 500] for i in range(0, len(ids), 500)],
                              GenerationOptions(max_new_tokens=0, prompt_logprobs=0))  # fmt: skip
    logprobs = [t.logprob for s in scored for t in s.prompt_logprobs[1:]]
    backend.close()
    return {
        "mb": path.stat().st_size / 1e6,
        "one_tps": one[0].completion_tokens / one_s,
        "batch_tps": sum(o.completion_tokens for o in many) / many_s,
        "batch_equals_alone": sum(a == o.text for a, o in zip(alone, many[:4])),
        "probes": answered,
        "n_probes": len(probes),
        "mean_logprob": sum(logprobs) / len(logprobs),
    }


def plain_one_by_one(path: Path, n: int) -> float:
    """Plain llama-cpp-python answering the first `n` prompts of the batch one after another: tokens/s
    (issue 21's baseline for the 32-prompt batch)."""
    wait_idle(60)
    llm = llama_cpp.Llama(str(path), n_ctx=512, n_threads=2, verbose=False)
    template = resolve_template(
        "auto", model_chat_template=llm.metadata.get("tokenizer.chat_template"), model_name=MODEL,
        bos_token="", eos_token="<|im_end|>", add_bos=False,
    )  # fmt: skip
    prompts = [template.render(q, None) for q in QUESTIONS[:n]]
    llm.create_completion(prompts[0], max_tokens=4, temperature=0)  # warm-up
    started, tokens = time.perf_counter(), 0
    for prompt in prompts:
        tokens += llm.create_completion(prompt, max_tokens=128, temperature=0)["usage"]["completion_tokens"]
    elapsed = time.perf_counter() - started
    del llm
    return tokens / elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--types", nargs="*", default=["Q4_1", "Q4_0", "IQ4_NL", "Q8_0", "Q4_K_M"])
    parser.add_argument("--out", type=Path, default=Path("/tmp/tunelab-formats"))
    parser.add_argument("--json", type=Path)
    parser.add_argument("--repack", nargs="*", default=["off", "on"], choices=["off", "on"],
                        help="measure with llama.cpp's repacked weights off and/or on")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    files = make_files(args.types, args.out)
    probes = load_dataset("general_probes", "all")
    text = (REPO / "docs" / "finetuning.md").read_text()[:6000] + (REPO / "README.md").read_text()[:6000]
    rows = {}
    baseline = plain_one_by_one(files["Q4_1"], 4)
    print(f"B plain llama-cpp-python, the shipped Q4_1 file, 4 prompts one by one: {baseline:.1f} tok/s")
    print("type | repack | MB | 1 prompt tok/s | of bandwidth limit | 32 prompts tok/s | vs Q4_1 (1 / 32) | "
          "32 prompts vs B | batch = alone | probes | mean logprob")  # fmt: skip
    for name in args.types:
        for repack in (r == "on" for r in args.repack):
            row = rows[f"{name} repack={repack}"] = measure(files[name], repack, probes, text)
            base = rows.get("Q4_1 repack=False", row)
            print(
                f"{name} | {'on' if repack else 'off'} | {row['mb']:.0f} | {row['one_tps']:.1f} | "
                f"{row['one_tps'] * row['mb'] * 1e6 / (DEFAULT_BANDWIDTH_GBS * 1e9):.0%} | "
                f"{row['batch_tps']:.1f} | {row['one_tps'] / base['one_tps']:.2f}x / "
                f"{row['batch_tps'] / base['batch_tps']:.2f}x | {row['batch_tps'] / baseline:.2f}x | "
                f"{row['batch_equals_alone']}/4 | "
                f"{row['probes']}/{row['n_probes']} | {row['mean_logprob']:.3f}",
                flush=True,
            )
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
