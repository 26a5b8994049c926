"""Time to the first answer in a new process, import included (caches warm: the embedded files are
assembled and checked once, before the timed runs).

    python benchmarks/first_answer.py [--repeats 3]

For each embedded model, a fresh `python -c` process imports tunelab, makes a BasicModelRunner and
answers one prompt (8 new tokens); the wall time of the whole process is measured from outside. The
baseline is the same in plain llama-cpp-python (`Llama(model_path).create_completion`), measured in the
same run. The target is <= 3 s.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import cores, wait_idle  # noqa: E402

TUNELAB = """
from tunelab import BasicModelRunner
print(BasicModelRunner({name!r})("Tell me how to train my dog to sit", max_new_tokens=8))
"""
PLAIN = """
from llama_cpp import Llama
llm = Llama(model_path={path!r}, n_ctx=2048, verbose=False)
out = llm.create_completion("Tell me how to train my dog to sit", max_tokens=8, temperature=0)
print(out["choices"][0]["text"])
"""
TARGET_S = 3.0


def timed(code: str) -> float:
    env = dict(os.environ, HF_HUB_OFFLINE="1")
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env=env)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    from tunelab.config import load_settings
    from tunelab.models.embedded import EMBEDDED, embedded_gguf_path

    console = Console()
    settings = load_settings()
    table = Table(title=f"first answer in a new process, median of {args.repeats}, {cores()} cores")
    for col in ("model", "tunelab s", "plain llama-cpp-python s", "tunelab / plain", f"<= {TARGET_S:.0f} s"):
        table.add_column(col, justify="left" if col == "model" else "right")
    for name, model in EMBEDDED.items():
        path = str(embedded_gguf_path(model, settings.home))  # assembled and checked before timing
        timed(TUNELAB.format(name=name))  # warm the page cache and tunelab's own caches
        runs = {"tunelab": [], "plain": []}
        for _ in range(args.repeats):
            wait_idle(30)
            runs["tunelab"].append(timed(TUNELAB.format(name=name)))
            runs["plain"].append(timed(PLAIN.format(path=path)))
        ours, plain = statistics.median(runs["tunelab"]), statistics.median(runs["plain"])
        table.add_row(
            name, f"{ours:.2f}", f"{plain:.2f}", f"{ours / plain:.2f}x", "yes" if ours <= TARGET_S else "no"
        )
    console.print(table)


if __name__ == "__main__":
    main()
