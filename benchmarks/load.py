"""Load test (issue 19): many concurrent clients on a real `tunelab serve`, with a fine-tuning job running.

    python benchmarks/load.py [--clients 16 64] [--seconds 60] [--backend auto] [--json out.json]
    python benchmarks/load.py --quick            # smoke run: 4 and 8 clients, 10 s each

Starts the server in a subprocess (API keys on, the embedded smollm2-135m-instruct), uploads a small
training file and starts a fine-tuning job on it, then for each client count runs that many clients for
`--seconds`, each sending, in turn: a chat request, a completion, a streamed chat, a chat with n=2, a
typed answer (response_format json_schema), and a stream it leaves after its first chunk (a client that
disconnects). Each answer is at most `--max-tokens` tokens.

Reported per client count: requests, errors (any answer other than 200, or a transport error: the target
is 0; a 429 is counted apart, as the server's backpressure), p50 and p99 latency, completion tokens/s,
the server's resident memory before and after, and whether the fine-tuning job made progress (its
events). Run by hand; the figures go to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from serve import MODEL, QUESTIONS, free_port, start_server

TYPED = {
    "type": "json_schema",
    "json_schema": {
        "name": "answer",
        "schema": {
            "type": "object",
            "properties": {"answer": {"type": "string", "maxLength": 40}, "sure": {"type": "boolean"}},
            "required": ["answer", "sure"],
        },
    },
}
KINDS = ("chat", "completion", "stream", "n2", "typed", "disconnect")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


async def one_request(http: httpx.AsyncClient, kind: str, question: str, max_tokens: int) -> tuple[int, int]:
    """(HTTP status, completion tokens) of one request of `kind`."""
    chat = {"model": MODEL, "messages": [{"role": "user", "content": question}], "max_tokens": max_tokens}
    if kind == "completion":
        answer = await http.post(
            "/v1/completions", json={"model": MODEL, "prompt": question, "max_tokens": max_tokens}
        )
    elif kind in ("stream", "disconnect"):
        body = {**chat, "stream": True, "stream_options": {"include_usage": True}}
        tokens = 0
        async with http.stream("POST", "/v1/chat/completions", json=body) as answer:
            async for line in answer.aiter_lines():
                if kind == "disconnect" and line.startswith("data:"):
                    return answer.status_code, 0  # leaves mid-stream
                if line.startswith("data: {") and '"usage":{' in line.replace(" ", ""):
                    usage = json.loads(line[6:]).get("usage") or {}
                    tokens = usage.get("completion_tokens", 0)
        return answer.status_code, tokens
    elif kind == "n2":
        answer = await http.post("/v1/chat/completions", json={**chat, "n": 2, "temperature": 0.7, "seed": 1})
    elif kind == "typed":
        answer = await http.post("/v1/chat/completions", json={**chat, "response_format": TYPED})
    else:
        answer = await http.post("/v1/chat/completions", json=chat)
    tokens = (
        (answer.json().get("usage") or {}).get("completion_tokens", 0) if answer.status_code == 200 else 0
    )
    return answer.status_code, tokens


async def load(base_url: str, key: str, clients: int, seconds: float, max_tokens: int) -> dict:
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    failures: list[str] = []
    tokens = 0
    stop_at = time.perf_counter() + seconds
    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=600, limits=limits) as http:

        async def client(k: int) -> None:
            nonlocal tokens
            turn = k
            while time.perf_counter() < stop_at:
                kind, question = KINDS[turn % len(KINDS)], QUESTIONS[turn % len(QUESTIONS)]
                turn += 1
                start = time.perf_counter()
                try:
                    status, got = await one_request(http, kind, question, max_tokens)
                except httpx.HTTPError as exc:
                    failures.append(f"{kind}: {type(exc).__name__} {exc}")
                    continue
                statuses[str(status)] = statuses.get(str(status), 0) + 1
                if status == 200 and kind != "disconnect":
                    latencies.append(time.perf_counter() - start)
                    tokens += got
                elif status not in (200, 429):
                    failures.append(f"{kind}: HTTP {status}")

        start = time.perf_counter()
        await asyncio.gather(*(client(k) for k in range(clients)))
        wall = time.perf_counter() - start
    latencies.sort()
    return {
        "clients": clients,
        "seconds": round(wall, 1),
        "requests": sum(statuses.values()) + len(failures) - sum(1 for f in failures if "HTTP" in f),
        "statuses": statuses,
        "errors": len(failures),
        "first_errors": failures[:5],
        "p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "p99_s": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 3)
        if latencies
        else None,
        "completion_tokens": tokens,
        "tokens_per_s": round(tokens / wall, 1),
    }


def start_job(base_url: str, key: str) -> str:
    """Upload a small training file and start a fine-tuning job on it: it trains while the load runs."""
    headers = {"Authorization": f"Bearer {key}"}
    lines = "".join(
        json.dumps({"input": f"What is the code word number {i}?", "output": f"The code word is tulip-{i}."})
        + "\n"
        for i in range(40)
    )
    upload = httpx.post(
        base_url + "/v1/files",
        headers=headers,
        files={"file": ("load.jsonl", lines.encode())},
        data={"purpose": "fine-tune"},
        timeout=60,
    )
    upload.raise_for_status()
    job = httpx.post(
        base_url + "/v1/fine_tuning/jobs",
        headers=headers,
        json={"model": MODEL, "training_file": upload.json()["id"], "hyperparameters": {"n_epochs": 3}},
        timeout=60,
    )
    job.raise_for_status()
    return job.json()["id"]


def job_state(base_url: str, key: str, job_id: str) -> tuple[str, int]:
    headers = {"Authorization": f"Bearer {key}"}
    job = httpx.get(f"{base_url}/v1/fine_tuning/jobs/{job_id}", headers=headers, timeout=60).json()
    events = httpx.get(
        f"{base_url}/v1/fine_tuning/jobs/{job_id}/events?limit=1000", headers=headers, timeout=60
    )
    return job["status"], len(events.json()["data"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[16, 64])
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--backend", default="auto")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.quick:
        args.clients, args.seconds = [4, 8], 10

    from tunelab.config import default_home

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        port = free_port()
        proc, key = start_server(default_home(), Path(tmp), port, args.backend)
        base_url = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(load(base_url, key, 1, 0.1, 4))  # warm-up: loads the model
            job_id = start_job(base_url + "", key)
            for clients in args.clients:
                before, job_before = rss_mib(proc.pid), job_state(base_url, key, job_id)
                row = asyncio.run(load(base_url, key, clients, args.seconds, args.max_tokens))
                row |= {"rss_mib_before": before, "rss_mib_after": rss_mib(proc.pid)}
                job_after = job_state(base_url, key, job_id)
                row["job"] = (
                    f"{job_before[0]} ({job_before[1]} events) -> {job_after[0]} ({job_after[1]} events)"
                )
                rows.append(row)
                print(json.dumps(row), flush=True)
        finally:
            proc.terminate()
            proc.wait(60)
        log = (Path(tmp) / "server.log").read_text(errors="replace")
        leaked = key in log or key.split("-", 1)[-1] in log
        found = "YES (a defect)" if leaked else "no"
        print(f"the API key in the server's log: {found} ({len(log)} characters read)")
    print(
        f"\nmodel {MODEL}, backend {args.backend}, {args.seconds:.0f} s per run, max_tokens {args.max_tokens}"
    )
    print("| clients | requests | errors | 429 | p50 s | p99 s | tokens/s | RSS MiB before -> after | job |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        cells = [r["clients"], r["requests"], r["errors"], r["statuses"].get("429", 0), r["p50_s"]]
        cells += [r["p99_s"]]
        cells += [r["tokens_per_s"], f"{r['rss_mib_before']} -> {r['rss_mib_after']}", r["job"]]
        print("| " + " | ".join(str(c) for c in cells) + " |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
