"""Where the time of a batch goes: tunelab answering the batch workload under py-spy, native frames.

    python benchmarks/profile_batch.py [--backend llama_cpp|transformers] [--batch 32] [--new-tokens 64]
                                       [--rate 200] [--top 15] [--raw out.txt]

Runs `BasicModelRunner("smollm2-135m-instruct", backend=...).generate(questions)` on the comparison
workload of benchmarks/generate.py (its first `--batch` questions, greedy, each rendered with the
model's own chat template by tunelab) in a subprocess sampled by `py-spy record --native` (the C and
C++ frames of llama.cpp, ggml and torch included). Loading and a short warm-up run before sampling
starts (the worker waits for py-spy to attach), so the samples are the generate call alone.

It prints the functions that were on top of the stack (self time, the kernels doing the work) and a
few chosen frames with everything they called (inclusive time), each as a share of all samples.
py-spy is a bench dependency (`pip install -e ".[bench]"`); it needs ptrace, as in any container
that lets a process trace its own children.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from generate import MODEL, QUESTIONS
from machine import wait_idle

# Inclusive shares reported when a stack passes through them (substring of the frame's function name).
INCLUSIVE = {
    "llama_decode": "llama.cpp decode (all of it)",
    "ggml_compute_forward_mul_mat": "ggml matrix multiplications",
    "ggml_compute_forward_flash_attn": "ggml attention",
    "ggml_vec_dot_q4_1_q8_1": "Q4_1 x Q8_1 dot products",
    "quantize_row_q8_1": "quantizing activations to Q8_1",
    "ggml_graph_compute_thread": "ggml worker threads (compute + barriers)",
    "ggml_barrier": "waiting at ggml barriers",
    "libgomp": "OpenMP runtime (llama.cpp's threads waiting for each other)",
    "_sample": "transformers decode loop",
    "addmm": "torch linear layers",
    "scaled_dot_product": "torch attention",
}


def worker(backend: str, batch: int, new_tokens: int, ready: Path, go: Path) -> None:
    from tunelab import BasicModelRunner

    runner = BasicModelRunner(MODEL, backend=backend).load()
    questions = QUESTIONS[:batch]
    runner.generate(questions[:2], max_new_tokens=4)  # warm-up, outside the samples
    ready.write_text(str(os.getpid()))
    while not go.exists():
        time.sleep(0.05)
    start = time.perf_counter()
    records = runner.generate(questions, max_new_tokens=new_tokens)
    seconds = time.perf_counter() - start
    tokens = sum(r.completion_tokens for r in records)
    rate = tokens / seconds
    print(f"{backend}: {len(records)} prompts, {tokens} tokens in {seconds:.1f} s = {rate:.1f} tok/s")


def function_of(frame: str) -> str:
    """'name (file:line)' or 'name (lib.so)' -> name, without C++ parameter lists; a frame py-spy could
    not name ('0x7f... (libgomp.so.1)') -> 'libgomp.so.1 (no symbol)'."""
    name, _, where = frame.partition(" (")
    if re.fullmatch(r"0x[0-9a-f]+", name.strip()):
        return f"{where.rstrip(')')} (no symbol)"
    return re.sub(r"\(.*\)$", "", name).strip()


def summarize(raw: Path, top: int) -> None:
    self_counts: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [function_of(f) for f in stack.split(";") if f]
        if not frames:
            continue
        total += n
        self_counts[frames[-1]] += n
        for key in INCLUSIVE:
            if any(key in f for f in frames):
                inclusive[key] += n
    if not total:
        print("py-spy recorded no samples")
        return
    print(f"\n{total} samples. Self time (the function on top of the stack):")
    for name, n in self_counts.most_common(top):
        print(f"  {100 * n / total:5.1f}%  {name}")
    print("Inclusive time (stacks passing through):")
    for key, label in INCLUSIVE.items():
        if inclusive[key]:
            print(f"  {100 * inclusive[key] / total:5.1f}%  {label}  [{key}]")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="llama_cpp", choices=["llama_cpp", "transformers"])
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--rate", type=int, default=50, help="samples per second")
    parser.add_argument("--top", type=int, default=15)
    parser.add_argument("--raw", type=Path, help="keep py-spy's collapsed stacks here")
    parser.add_argument("--worker", nargs=2, metavar=("READY", "GO"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args.backend, args.batch, args.new_tokens, Path(args.worker[0]), Path(args.worker[1]))
        return 0

    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(py_spy).exists():
        print('py-spy is not installed: pip install -e ".[bench]"', file=sys.stderr)
        return 2
    wait_idle(120)
    with tempfile.TemporaryDirectory() as tmp:
        ready, go = Path(tmp) / "ready", Path(tmp) / "go"
        raw = args.raw or Path(tmp) / "raw.txt"
        cmd = [sys.executable, __file__, "--backend", args.backend, "--batch", str(args.batch),
               "--new-tokens", str(args.new_tokens), "--worker", str(ready), str(go)]
        proc = subprocess.Popen(cmd)
        while not ready.exists():
            if proc.poll() is not None:
                print("the worker ended before it was ready", file=sys.stderr)
                return 1
            time.sleep(0.1)
        spy = subprocess.Popen([py_spy, "record", "--native", "--threads", "--rate", str(args.rate),
                                "--format", "raw", "--output", str(raw), "--pid", ready.read_text()],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)  # py-spy attached
        go.write_text("go")
        code = proc.wait()
        _, err = spy.communicate(timeout=60)
        if code != 0 or not raw.exists():
            print(f"worker exit {code}; py-spy: {err.strip()[-500:]}", file=sys.stderr)
            return 1
        summarize(raw, args.top)
    return 0


if __name__ == "__main__":
    sys.exit(main())
