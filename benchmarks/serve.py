"""Serving benchmark: `tunelab serve` on loopback, 1 client vs 16 concurrent clients.

    python benchmarks/serve.py [--requests 32] [--max-tokens 64] [--backend auto] [--json out.json]
    python benchmarks/serve.py --quick          # smoke run: 8 requests, 16 tokens

For each backend (default: llama_cpp, then transformers), starts the real server in a subprocess (API
key auth on, the embedded smollm2-135m-instruct, greedy),
then sends the same `--requests` chat requests with the official `openai` SDK (async client):

  baseline  one client, one request at a time (what a server that serialises requests gives everyone);
  16        16 clients at once, each sending its share of the requests back to back.

Reported per run: requests/s, p50 and p99 latency, aggregate completion tokens/s; and the ratio of the
16-client aggregate tokens/s to the one-at-a-time baseline measured in the same run (target >= 3x:
the engine's dynamic batching answers concurrent requests in one batch). The server's own log of batch
sizes is printed too. Like the other benchmarks it waits for idle CPUs first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from machine import cores, wait_idle

MODEL = "smollm2-135m-instruct"
QUESTIONS = [
    "Explain how to train a dog to sit.",
    "Write a short story about a robot who paints.",
    "Describe the water cycle.",
    "Give me three tips for studying.",
    "What do you think of Mars?",
    "How does a bicycle stay upright?",
    "Describe how bread rises.",
    "Explain what a CPU does.",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(home: Path, scratch: Path, port: int, backend: str) -> tuple[subprocess.Popen, str]:
    """Create an API key in a fresh store (in `scratch`), start `tunelab serve`, wait for /health."""
    env = {
        **os.environ,
        "TUNELAB_HOME": str(home),  # model caches: reuse the user's
        "TUNELAB_CONFIG": str(scratch / "config.yaml"),
        "TUNELAB_DB_URL": f"sqlite:///{scratch / 'bench.db'}",
    }
    key = subprocess.run(
        [sys.executable, "-m", "tunelab.cli", "keys", "create", "--name", "bench"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    secret = next(word for word in key.split() if word.startswith("tl-"))
    log = open(scratch / "server.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "tunelab.cli", "serve", "--port", str(port), "--backend", backend],
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    import httpx

    deadline = time.time() + 300
    while time.time() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"server exited:\n{(scratch / 'server.log').read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc, secret
        except httpx.TransportError:
            time.sleep(0.5)
    proc.kill()
    raise SystemExit("server did not start in 300 s")


async def run(base_url: str, key: str, clients: int, requests: int, max_tokens: int) -> dict:
    from openai import AsyncOpenAI

    sdk = AsyncOpenAI(base_url=base_url, api_key=key, max_retries=0, timeout=600)
    latencies: list[float] = []
    tokens = 0

    async def client(indices: list[int]) -> None:
        nonlocal tokens
        for i in indices:
            start = time.perf_counter()
            out = await sdk.chat.completions.create(
                model=MODEL,
                messages=[{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}],
                max_tokens=max_tokens,
                temperature=0,
            )
            latencies.append(time.perf_counter() - start)
            tokens += out.usage.completion_tokens

    shares = [list(range(requests))[k::clients] for k in range(clients)]
    start = time.perf_counter()
    await asyncio.gather(*(client(share) for share in shares))
    wall = time.perf_counter() - start
    await sdk.close()
    latencies.sort()
    return {
        "clients": clients,
        "requests": requests,
        "seconds": round(wall, 2),
        "requests_per_s": round(requests / wall, 3),
        "p50_s": round(statistics.median(latencies), 3),
        "p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3),
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=32)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument(
        "--backend", nargs="+", default=["llama_cpp", "transformers"], help="one server run per backend"
    )
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.requests, args.max_tokens = 8, 16

    from tunelab.config import default_home

    summary = []
    for backend in args.backend:
        with tempfile.TemporaryDirectory() as tmp:
            port = free_port()
            proc, key = start_server(default_home(), Path(tmp), port, backend)
            base_url = f"http://127.0.0.1:{port}/v1"
            try:
                asyncio.run(run(base_url, key, 1, 2, 8))  # warm-up: loads the model
                results = []
                for clients in (1, 16):
                    waited, _ = wait_idle(120)
                    result = asyncio.run(run(base_url, key, clients, args.requests, args.max_tokens))
                    result["idle_wait_s"] = round(waited, 1)
                    results.append(result)
                    print(json.dumps({"backend": backend, **result}), flush=True)
            finally:
                proc.terminate()
                proc.wait(30)
        summary.append((backend, results))

    print(
        f"\nmachine: {cores()} cores; model {MODEL}; {args.requests} requests, "
        f"max_tokens {args.max_tokens}, greedy"
    )
    print("| backend | clients | requests/s | p50 s | p99 s | tokens/s | 16 clients / one at a time |")
    print("|---|---|---|---|---|---|---|")
    for backend, (one, many) in summary:
        ratio = many["tokens_per_s"] / one["tokens_per_s"]
        for r in (one, many):
            cell = f"**{ratio:.2f}x** (target >= 3x)" if r is many else "baseline"
            print(
                f"| {backend} | {r['clients']} | {r['requests_per_s']} | {r['p50_s']} | {r['p99_s']} | "
                f"{r['tokens_per_s']} | {cell} |"
            )
    if args.json:
        args.json.write_text(json.dumps({backend: results for backend, results in summary}, indent=2))


if __name__ == "__main__":
    main()
