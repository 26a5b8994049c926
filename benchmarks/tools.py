"""Tool calling: what a call costs in tokens/s against the same request without tools.

    python benchmarks/tools.py [--backend llama_cpp] [--prompts 8] [--new-tokens 48] [--same-length]

Each request is answered alone (one prompt per engine call, greedy), as a client asking one question;
tokens/s = answer tokens / wall time of the requests (prompt reading included), and decode tokens/s =
the tokens after the first over the time after it (what a call costs per token, the tools' longer
prompt left out). The ways take turns, each answering its run of questions in a row (as a server
answers one client's requests: the prompt cache holds what the way's previous request shared with
this one, e.g. the tools' section, for every way alike; an untimed request starts each run, so its
first request finds the cache as the others do; taking turns request by request let one way's cached
prefix be pushed out by the others' and not another's), over `--repeats` rounds, so the ratios come
from one run on the same machine state:

- `no tools`: the question alone (with `--same-length`, as many tokens as the forced call writes);
- `free, tools' prompt`: the exact text a forced call reads (tools section + `<tool_call>` marker),
  answered without the constraint, as many tokens as the call wrote: the constraint's own cost is
  `call / free`;
- `call (required)`: tool_choice "required", parallel_tool_calls false: constrained decoding of the call;
- `auto's conversation, no tools`: the conversation `auto` gets (two example calls in its history),
  answered without tools: the baseline of the next way;
- `call (auto)`: tool_choice "auto" after two example calls in the history, so the model writes the
  marker itself and the call is decoded under the constraint from there (in the same pass on
  llama_cpp; in a second pass, the prompt read again, on transformers);
- `free, auto's prompt`: the exact text `call (auto)` reads (its conversation with the tools' section),
  answered without tools, as many tokens as `call (auto)` wrote: `call (auto) / free, auto's prompt` is
  what `auto` itself costs, apart from the longer prompt the tools' section makes.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from machine import busy_cpu_seconds, cores, mem_gib, wait_idle  # noqa: E402

MODEL = "smollm2-135m-instruct"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"enum": ["celsius", "fahrenheit"]}},
                "required": ["city", "unit"],
            },
        },
    }
]
CITIES = "Paris Rome Oslo Lima Cairo Tokyo Quito Perth Dakar Hanoi Sofia Bern".split()


def few_shot(city: str) -> list[dict]:
    def call(k: int, name: str) -> dict:
        arguments = f'{{"city": "{name}", "unit": "celsius"}}'
        called = {"id": f"c{k}", "name": "get_weather", "arguments": arguments}
        return {"role": "assistant", "content": "", "tool_calls": [called]}

    return [
        {"role": "user", "content": "Weather in Madrid?"},
        call(1, "Madrid"),
        {"role": "user", "content": "Weather in Berlin?"},
        call(2, "Berlin"),
        {"role": "user", "content": f"Weather in {city}?"},
    ]


def timed(engine, model, backend: str, prompt, new_tokens: int, **kwargs) -> dict:
    from tunelab.inference.options import GenerationOptions

    options = GenerationOptions(max_new_tokens=new_tokens)
    first: list[float] = []

    def on_text(_: int, text: str) -> None:
        if not first:
            first.append(time.perf_counter())  # the first answer token: the prompt has been read

    start = time.perf_counter()
    (c,) = engine.generate(model, [prompt], options=options, backend=backend, on_text=on_text, **kwargs)
    end = time.perf_counter()
    assert c.error is None, c.error
    return {
        "tokens": c.completion_tokens,
        "prompt": c.prompt_tokens,
        "seconds": end - start,
        "calls": bool(c.tool_calls),
        # decoding alone: the tokens after the first, over the time after it
        "decoded": max(0, c.completion_tokens - 1),
        "decode_s": end - first[0] if first else 0.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--backend", default="llama_cpp", choices=["llama_cpp", "transformers"])
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument(
        "--same-length",
        action="store_true",
        help="`no tools` writes as many tokens as `call (required)` does for the same question",
    )
    args = parser.parse_args()
    from rich.console import Console
    from rich.table import Table

    from tunelab.config import load_settings
    from tunelab.inference.engine import engine_for, prepare_prompts
    from tunelab.inference.tools import ToolSpec
    from tunelab.models.resolve import resolve

    console = Console()
    console.print(f"machine: {cores()} cores, {mem_gib():.0f} GiB; model {MODEL}, backend {args.backend}")
    settings = load_settings()
    engine, model = engine_for(settings), resolve(MODEL, settings)
    asked = [*CITIES[: args.prompts], CITIES[-1]]  # the last: the untimed request that starts each run
    questions = [[{"role": "user", "content": f"What is the weather in {c}?"}] for c in asked]
    required = ToolSpec.from_openai(TOOLS, "required", parallel_tool_calls=False)
    auto = ToolSpec.from_openai(TOOLS, "auto", parallel_tool_calls=False)
    backend = engine.load(model, args.backend)
    template = engine.template_for(model, backend, "auto")
    forced_texts = prepare_prompts(questions, template, None, required).texts
    auto_texts = prepare_prompts([few_shot(c) for c in asked], template, None, auto).texts
    ways = {
        "no tools": lambda k: (questions[k], {}),
        "free, tools' prompt": lambda k: (forced_texts[k], {"template": "raw"}),
        "call (required)": lambda k: (questions[k], {"tools": required}),
        "auto's conversation, no tools": lambda k: (few_shot(CITIES[k]), {}),
        "call (auto)": lambda k: (few_shot(CITIES[k]), {"tools": auto}),
        "free, auto's prompt": lambda k: (auto_texts[k], {"template": "raw"}),
    }
    for way in ways.values():  # warm: load, compile, caches
        prompt, kwargs = way(0)
        timed(engine, model, args.backend, prompt, 8, **kwargs)
    # a way without the constraint writes as many tokens as the call it stands beside (greedy: the
    # same count each time), so its tokens/s weigh the fixed cost of a request (the prompt's uncached
    # tail, the first token) alike; `no tools` so too, with --same-length
    limit = {label: {} for label in ways}
    beside = {"free, tools' prompt": "call (required)", "free, auto's prompt": "call (auto)"}
    if args.same_length:
        beside["no tools"] = "call (required)"
    for free, call in beside.items():
        for k in [*range(args.prompts), -1]:
            prompt, kwargs = ways[call](k)
            limit[free][k] = timed(engine, model, args.backend, prompt, args.new_tokens, **kwargs)["tokens"]
    # the ways take turns, a run of questions each, round after round, so a busy spell on the machine
    # slows them alike
    waited, share = wait_idle(120)
    busy0, wall0 = busy_cpu_seconds(), time.perf_counter()
    rows = {
        label: {"tokens": 0, "prompt": 0, "seconds": 0.0, "calls": 0, "decoded": 0, "decode_s": 0.0}
        for label in ways
    }
    for _ in range(args.repeats):
        for label, way in ways.items():
            # untimed: a question no run asks (the last city), so the way's run starts with the cache
            # holding what its requests share, as a server has it after the way's previous request
            prompt, kwargs = way(-1)
            timed(engine, model, args.backend, prompt, limit[label].get(-1, args.new_tokens), **kwargs)
            for k in range(args.prompts):
                prompt, kwargs = way(k)
                new_tokens = limit[label].get(k, args.new_tokens)
                for key, value in timed(engine, model, args.backend, prompt, new_tokens, **kwargs).items():
                    rows[label][key] += value
    own = time.perf_counter() - wall0
    others = (busy_cpu_seconds() - busy0) / (own * cores()) if busy0 is not None else 0.0
    n = args.prompts * args.repeats
    table = Table(title=f"{n} requests per way, one at a time, greedy, up to {args.new_tokens} new tokens")
    columns = ("request", "prompt tokens", "answer tokens", "seconds", "tok/s", "vs no tools", "calls")
    for col in (*columns, "decode tok/s", "decode vs no tools"):
        table.add_column(col, justify="left" if col == "request" else "right")
    base = rows["no tools"]["tokens"] / rows["no tools"]["seconds"]
    decode_base = rows["no tools"]["decoded"] / rows["no tools"]["decode_s"]
    for label, r in rows.items():
        tps, decode = r["tokens"] / r["seconds"], r["decoded"] / max(r["decode_s"], 1e-9)
        table.add_row(
            label, f"{r['prompt'] / n:.0f}", str(r["tokens"]), f"{r['seconds']:.1f}", f"{tps:.1f}",
            f"{tps / base:.2f}x", f"{r['calls']}/{n}", f"{decode:.1f}", f"{decode / decode_base:.2f}x",
        )  # fmt: skip
    console.print(table)
    console.print(
        f"machine busy before: {share:.0%} (waited {waited:.0f} s); during, the whole machine: {others:.0%}"
    )
    plain, by_itself = rows["auto's conversation, no tools"], rows["call (auto)"]
    end_to_end = (by_itself["tokens"] / by_itself["seconds"]) / (plain["tokens"] / plain["seconds"])
    decoding = (by_itself["decoded"] / by_itself["decode_s"]) / (plain["decoded"] / plain["decode_s"])
    console.print(
        f"auto against the same conversation without tools: {end_to_end:.2f}x end to end, "
        f"{decoding:.2f}x decoding"
    )
    free = rows["free, auto's prompt"]
    end_to_end = (by_itself["tokens"] / by_itself["seconds"]) / (free["tokens"] / free["seconds"])
    decoding = (by_itself["decoded"] / by_itself["decode_s"]) / (free["decoded"] / free["decode_s"])
    console.print(
        "auto against its own prompt answered without tools (the tools' section's length left out): "
        f"{end_to_end:.2f}x end to end, {decoding:.2f}x decoding"
    )
    free, call = rows["free, tools' prompt"], rows["call (required)"]
    console.print(
        f"constraint alone (call / free tok/s on the same text): "
        f"{(call['tokens'] / call['seconds']) / (free['tokens'] / free['seconds']):.2f}x; decoding alone "
        f"(after the first token, prompt reading left out): "
        f"{(call['decoded'] / call['decode_s']) / (free['decoded'] / free['decode_s']):.2f}x"
    )


if __name__ == "__main__":
    main()
