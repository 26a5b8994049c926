"""Tool calling quality: does the model pick the right tool, fill in the asked value, and keep small talk
in text? (what a change to tunelab's tools section must not make worse; benchmarks/tools.py has speed)

    python benchmarks/tool_choice.py [--model smollm2-135m-instruct] [--backend llama_cpp]

Greedy answers, three tools offered (weather, web search, addition):
- `required`: 18 questions, each meant for one tool; counted: the right tool, and for the weather
  questions the city named in the question appearing in the arguments;
- `auto`, small talk: 5 messages no tool serves; counted: answered in text;
- `auto` after two example calls in the history (the weather tool alone), 24 cities; counted: a call
  whose arguments name the city asked about.
A run prints each answer and the three counts; run it on two commits to compare prompt formats.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from tools import MODEL, TOOLS, few_shot  # noqa: E402

SEARCH = {
    "type": "function",
    "function": {
        "name": "search_web",
        "description": "Search the web for a query",
        "parameters": {"type": "object", "properties": {"query": {"type": "string"}}, "required": ["query"]},
    },
}
ADD = {
    "type": "function",
    "function": {
        "name": "add",
        "description": "Add two numbers",
        "parameters": {
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        },
    },
}
WEATHER_CITIES = "Paris Rome Oslo Lima Cairo Tokyo Quito Perth Dakar Hanoi Sofia Bern".split()
FEW_SHOT_CITIES = (
    WEATHER_CITIES + "Madras Lisbon Nairobi Denver Seoul Havana Dublin Prague Lagos Manila Kyiv Osaka".split()
)
# (question, the tool meant, a word the arguments should hold or None)
REQUIRED = [(f"What is the weather in {c}?", "get_weather", c) for c in WEATHER_CITIES] + [
    ("Is it raining in Oslo right now?", "get_weather", "Oslo"),
    ("Search the web for the tallest building", "search_web", None),
    ("Look up who wrote Hamlet online", "search_web", None),
    ("Find news about the Olympics", "search_web", None),
    ("What is 17 plus 25?", "add", None),
    ("Add 3 and 9", "add", None),
]
SMALL_TALK = [
    "Hi! How are you?",
    "Tell me a joke",
    "What is your name?",
    "Write a haiku about the sea",
    "Thanks, that's all",
]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", default=MODEL)
    parser.add_argument("--backend", default="llama_cpp", choices=["llama_cpp", "transformers"])
    args = parser.parse_args()
    from tunelab.config import load_settings
    from tunelab.inference.engine import engine_for
    from tunelab.inference.options import GenerationOptions
    from tunelab.inference.tools import ToolSpec
    from tunelab.models.resolve import resolve

    settings = load_settings()
    engine, model = engine_for(settings), resolve(args.model, settings)
    options = GenerationOptions(max_new_tokens=60)
    offered = [*TOOLS, SEARCH, ADD]

    def answer(messages, spec):
        (c,) = engine.generate(model, [messages], options=options, backend=args.backend, tools=spec)
        assert c.error is None, c.error
        return c

    required = ToolSpec.from_openai(offered, "required", parallel_tool_calls=False)
    right_tool = right_value = 0
    for question, tool, value in REQUIRED:
        c = answer([{"role": "user", "content": question}], required)
        call = c.tool_calls[0] if c.tool_calls else None
        right_tool += call is not None and call.name == tool
        right_value += (
            call is not None and call.name == tool and value is not None and value in call.arguments
        )
        got = f"{call.name} {call.arguments}" if call else f"no call ({c.finish_reason})"
        print(f"[required] {question} -> {got}")
    auto = ToolSpec.from_openai(offered, "auto")
    in_text = 0
    for message in SMALL_TALK:
        c = answer([{"role": "user", "content": message}], auto)
        in_text += not c.tool_calls
        print(f"[auto] {message} -> {c.tool_calls[0].name + ' call' if c.tool_calls else repr(c.text[:60])}")
    weather_auto = ToolSpec.from_openai(TOOLS, "auto")
    called_right = 0
    for city in FEW_SHOT_CITIES:
        c = answer(few_shot(city), weather_auto)
        called_right += bool(c.tool_calls) and city in c.tool_calls[0].arguments
        print(f"[auto, 2 example calls] {city} -> {json.dumps([t.arguments for t in c.tool_calls or []])}")
    n_values = sum(value is not None for _, _, value in REQUIRED)
    print(
        f"\n{args.model} on {args.backend}: required: right tool {right_tool}/{len(REQUIRED)}, "
        f"the asked city in the arguments {right_value}/{n_values}; "
        f"auto: small talk in text {in_text}/{len(SMALL_TALK)}; "
        f"auto after two example calls: a call naming the city {called_right}/{len(FEW_SHOT_CITIES)}"
    )


if __name__ == "__main__":
    main()
