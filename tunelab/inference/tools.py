"""Tool (function) calling: OpenAI's `tools`, `tool_choice` and `parallel_tool_calls` over any local model.

A call is what the model writes after the marker ``<tool_call>``: a JSON list of calls,
``[{"name": "get_weather", "arguments": {"city": "Paris"}}]``. Decoding after the marker is constrained
(the same JSON-schema machinery as typed output: llguidance on transformers, a llama.cpp grammar on
llama_cpp) to a list whose items are one of the tools, by name, with `arguments` matching that tool's
`parameters` schema, so every call is valid by construction.

- `tool_choice` "required" or a named function: the prompt ends with the marker, so the answer is a
  call (a named function: exactly one call of it).
- "auto": the model writes freely; if it writes the marker, what it wrote before is the message's
  content and what follows is decoded under the calls' constraint. On llama_cpp that happens in the
  same pass (`GenerationOptions.json_after`: the grammar starts at the marker, so text answers pay no
  mask); on transformers and vLLM the calls are decoded in a second pass that continues from the marker
  (the prompt is read again: the price of calling, paid only by answers that call).
- "none": the tools are left out of the prompt and the answer is text.
- `parallel_tool_calls` false: at most one call.

The prompt: a chat template that has its own tools section (it reads ``tools``) gets the tools and the
tool turns as the model was trained on them (the Hugging Face convention: `tools`, assistant
`tool_calls` with `arguments` as an object, `role: "tool"` messages). Any other template (SmolLM2's
ChatML has none) gets tunelab's: the tools in a system message (`instructions`), each earlier call as
the assistant wrote it (``<tool_call>`` + the JSON list), and each tool result as a user turn in
``<tool_response>`` tags (consecutive results in one turn).
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass
from typing import Any

from tunelab.errors import ToolCallError, TypedOutputError
from tunelab.inference.logprobs import TokenLogprob
from tunelab.inference.options import BackendOutput, GenerationOptions, cut_at_stop

TRIGGER = "<tool_call>"
PREFILL = TRIGGER + "\n"  # what comes before the JSON list of calls, in prompts and in answers
# Backends whose streaming callback sees a stop string before the answer is cut at it (transformers
# decodes each step's ids; vLLM calls it once with the stop string it stopped at); on the others
# (llama.cpp) the callback returning False stops the answer.
_STREAMS_BEFORE_CUTTING = {"transformers", "vllm"}


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: str  # the JSON schema of the arguments, as JSON text (hashable)

    def listed(self) -> dict[str, Any]:
        """The tool as tunelab's tools section lists it."""
        described = {"description": self.description} if self.description else {}
        return {"name": self.name, **described, "parameters": json.loads(self.parameters)}

    def openai(self) -> dict[str, Any]:
        function = {"name": self.name, "parameters": json.loads(self.parameters)}
        if self.description:
            function["description"] = self.description
        return {"type": "function", "function": function}


@dataclass(frozen=True)
class ToolCall:
    """One call the model made: the tool's name and its arguments as the JSON text the model wrote."""

    name: str
    arguments: str


@dataclass(frozen=True)
class ToolSpec:
    """The tools a request offers and how the model may use them (hashable: requests with equal specs
    share a batch)."""

    tools: tuple[Tool, ...]
    choice: str = "auto"  # "auto" | "required" | "none" | one tool's name
    parallel: bool = True

    @classmethod
    def from_openai(
        cls, tools: list[dict] | None, tool_choice: Any = None, parallel_tool_calls: bool | None = None
    ) -> ToolSpec | None:
        """The spec for OpenAI's fields (dicts in OpenAI's shape); None without tools. Raises
        ToolCallError naming the field: a schema that is not valid or cannot constrain decoding, two
        tools of one name, a tool_choice naming no tool."""
        if not tools:
            if tool_choice not in (None, "none", "auto"):
                raise ToolCallError(
                    "tool_choice asks for a tool call, but no tools were given", "tool_choice"
                )
            return None
        parsed = tuple(_tool(k, t) for k, t in enumerate(tools))
        names = [t.name for t in parsed]
        for k, name in enumerate(names):
            if name in names[:k]:
                raise ToolCallError(f"two tools are named {name!r}", f"tools[{k}].function.name")
        choice = _choice(tool_choice, names)
        spec = cls(parsed, choice, parallel_tool_calls is not False)
        if spec.calls:
            from tunelab.inference.backends.json_constraint import llg_grammar

            try:  # both backends' compiler, now: a schema that cannot work is a 400, not a failed answer
                llg_grammar(spec.schema_json)
            except TypedOutputError as exc:
                raise ToolCallError(
                    f"the tools' parameters cannot constrain decoding: {exc}", "tools"
                ) from None
        return spec

    @property
    def calls(self) -> bool:
        """Whether the model may call at all."""
        return self.choice != "none"

    @property
    def forced(self) -> bool:
        """Whether the answer must be a call ("required" or a named tool)."""
        return self.choice not in ("auto", "none")

    @property
    def offered(self) -> tuple[Tool, ...]:
        if self.choice in ("auto", "required", "none"):
            return self.tools
        return tuple(t for t in self.tools if t.name == self.choice)

    @property
    def schema_json(self) -> str:
        """The JSON schema of what follows the marker: a list of calls of the offered tools."""
        calls = [
            {
                "type": "object",
                "properties": {"name": {"const": t.name}, "arguments": _hoisted(t, k)[0]},
                "required": ["name", "arguments"],
                "additionalProperties": False,
            }
            for k, t in enumerate(self.offered)
        ]
        defs = {name: d for k, t in enumerate(self.offered) for name, d in _hoisted(t, k)[1].items()}
        schema: dict[str, Any] = {
            "type": "array",
            "items": calls[0] if len(calls) == 1 else {"anyOf": calls},
            "minItems": 1,
        }
        if not self.parallel or self.choice not in ("auto", "required"):
            schema["maxItems"] = 1
        if defs:
            schema["$defs"] = defs
        return json.dumps(schema)

    def instructions(self) -> str:
        """tunelab's tools section, for a template without one of its own (a system message): each tool
        as `{"name", "description", "parameters"}` (the shape of the function-calling sets small chat
        models are tuned on; OpenAI's `{"type": "function", "function": ...}` wrapper made SmolLM2-135M
        pick the wrong tool more often and costs tokens), then the call format in two lines."""
        listed = "\n".join(json.dumps(t.listed()) for t in self.tools)
        return (
            f"You can call these tools:\n<tools>\n{listed}\n</tools>\n"
            f"To call, write {TRIGGER} and a JSON list of calls: "
            f'{TRIGGER}\n[{{"name": <tool name>, "arguments": <object>}}]\n'
            "Results come back in <tool_response> tags. Otherwise answer in plain text."
        )


def _tool(k: int, tool: dict) -> Tool:
    import jsonschema

    function = tool.get("function") or {}
    name = function.get("name")
    if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
        raise ToolCallError(
            f"a tool's name must be 1-64 letters, digits, '_', '.' or '-', got {name!r}",
            f"tools[{k}].function.name",
        )
    parameters = function.get("parameters")
    if parameters is None:
        parameters = {"type": "object", "properties": {}}
    where = f"tools[{k}].function.parameters"
    if not isinstance(parameters, dict):
        raise ToolCallError(f"{where} must be a JSON schema object", where)
    try:
        jsonschema.validators.validator_for(parameters).check_schema(parameters)
    except jsonschema.SchemaError as exc:
        raise ToolCallError(f"{where} is not a valid JSON schema: {exc.message}", where) from None
    if parameters.get("type", "object") != "object":
        raise ToolCallError(f"{where} must describe an object (type 'object')", where)
    parameters = {"type": "object", **parameters}
    return Tool(name, str(function.get("description") or ""), json.dumps(parameters))


def _choice(tool_choice: Any, names: list[str]) -> str:
    if tool_choice is None:
        return "auto"
    if tool_choice in ("auto", "none", "required"):
        return tool_choice
    if isinstance(tool_choice, dict) and tool_choice.get("type") == "function":
        name = (tool_choice.get("function") or {}).get("name")
        if name in names:
            return name
        raise ToolCallError(
            f"tool_choice names {name!r}, which is not one of the tools {names}", "tool_choice"
        )
    raise ToolCallError(
        "tool_choice must be 'auto', 'none', 'required' or "
        f'{{"type": "function", "function": {{"name": ...}}}}, got {tool_choice!r}',
        "tool_choice",
    )


_REF = re.compile(r"^#/(\$defs|definitions)/")


def _hoisted(tool: Tool, k: int) -> tuple[dict, dict]:
    """A tool's parameters with its `$defs` moved to the root of the calls' schema (where `$ref`s are
    resolved), renamed `t{k}_<name>` so tools' definitions cannot clash; an object that lists its
    properties and says nothing of others gets those only (OpenAI's strict mode)."""
    parameters = json.loads(tool.parameters)
    defs = {**parameters.pop("definitions", {}), **parameters.pop("$defs", {})}

    def rename(node):
        if isinstance(node, dict):
            if isinstance(node.get("properties"), dict) and "additionalProperties" not in node:
                node = {**node, "additionalProperties": False}  # the listed properties only, as strict mode
            return {
                key: (
                    _REF.sub(f"#/$defs/t{k}_", value)
                    if key == "$ref" and isinstance(value, str)
                    else rename(value)
                )
                for key, value in node.items()
            }
        return [rename(v) for v in node] if isinstance(node, list) else node

    return rename(parameters), {f"t{k}_{name}": rename(d) for name, d in defs.items()}


# -- the conversation -----------------------------------------------------------------------------------


def has_tools_section(template_source: str) -> bool:
    """Whether a chat template renders tools itself (it reads the `tools` variable)."""
    return re.search(r"\btools\b", template_source) is not None


def has_tool_turns(messages: list[dict]) -> bool:
    return any(m.get("role") == "tool" or m.get("tool_calls") for m in messages)


def conversation_for(
    template_source: str, messages: list[dict], spec: ToolSpec | None
) -> tuple[list[dict], dict[str, Any]]:
    """The messages and extra template variables a conversation with tools renders with.

    Messages come in tunelab's plain shape: assistant `tool_calls` as [{"id", "name", "arguments" (JSON
    text)}], tool results as {"role": "tool", "content", "tool_call_id"}."""
    offered = spec is not None and spec.calls
    if has_tools_section(template_source):
        context = {"tools": [t.openai() for t in spec.tools]} if offered else {}
        return [_native(k, m) for k, m in enumerate(messages)], context
    out: list[dict] = []
    for k, message in enumerate(messages):
        if message.get("role") == "tool":
            result = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
            if out and out[-1].get("tool_results"):
                out[-1] = {**out[-1], "content": out[-1]["content"] + "\n" + result}
            else:
                out.append({"role": "user", "content": result, "tool_results": True})
        elif message.get("tool_calls"):
            calls = [
                {"name": c["name"], "arguments": _arguments(k, j, c)}
                for j, c in enumerate(message["tool_calls"])
            ]
            written = PREFILL + json.dumps(calls)
            content = message.get("content") or ""
            out.append(
                {"role": "assistant", "content": f"{content}\n{written}" if content.strip() else written}
            )
        else:
            out.append(message)
    out = [
        {key: v for key, v in m.items() if key not in ("tool_results", "tool_calls", "tool_call_id")}
        for m in out
    ]
    if offered:
        if out and out[0]["role"] == "system":
            out[0] = {**out[0], "content": out[0]["content"].rstrip() + "\n\n" + spec.instructions()}
        else:
            out.insert(0, {"role": "system", "content": spec.instructions()})
    return out, {}


def _native(k: int, message: dict) -> dict:
    """A message in the Hugging Face chat-template convention (arguments as an object)."""
    if not message.get("tool_calls"):
        return message
    calls = [
        {
            "id": c.get("id"),
            "type": "function",
            "function": {"name": c["name"], "arguments": _arguments(k, j, c)},
        }
        for j, c in enumerate(message["tool_calls"])
    ]
    return {**message, "content": message.get("content") or "", "tool_calls": calls}


def _arguments(k: int, j: int, call: dict) -> Any:
    try:
        return json.loads(call.get("arguments") or "{}")
    except json.JSONDecodeError as exc:
        raise ToolCallError(
            f"the arguments of an earlier tool call are not valid JSON: {exc}",
            f"messages[{k}].tool_calls[{j}].function.arguments",
        ) from None


# -- the answer -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PartialCall:
    name: str
    arguments: str  # as written so far: a prefix of the final arguments text
    complete: bool


_HEAD = re.compile(r'\s*[\[,]?\s*\{\s*"name"\s*:\s*("(?:[^"\\]|\\.)*")\s*,\s*"arguments"\s*:\s*')


def scan_calls(written: str) -> list[PartialCall]:
    """The calls in the JSON list written after the marker, so far: a call appears once its name is
    complete, and its arguments grow as written (each a prefix of the final text, for streaming)."""
    decoder = json.JSONDecoder()
    calls, at = [], 0
    while True:
        head = _HEAD.match(written, at)
        if head is None:
            return calls
        name = json.loads(head.group(1))
        try:
            _, end = decoder.raw_decode(written, head.end())
        except json.JSONDecodeError:
            calls.append(PartialCall(name, written[head.end() :].rstrip(), False))
            return calls
        calls.append(PartialCall(name, written[head.end() : end], True))
        closing = re.compile(r"\s*\}").match(written, end)
        if closing is None:
            return calls
        at = closing.end()


def split_answer(raw: str) -> tuple[str, list[PartialCall] | None]:
    """(content, calls) of an answer as streamed: the text before the marker, and the calls after it
    (None when the marker has not been written)."""
    at = raw.find(TRIGGER)
    if at < 0:
        return raw, None
    return raw[:at], scan_calls(raw[at + len(TRIGGER) :])


@dataclass
class ToolAnswer:
    output: BackendOutput  # text: the content before any call; tokens summed over both passes
    calls: list[ToolCall] | None  # None: the model answered in text


def generate_with_tools(
    backend,
    texts: list[str],
    options: GenerationOptions,
    spec: ToolSpec,
    end_stops: tuple[str, ...],
    on_text=None,
) -> list[ToolAnswer]:
    """Answer each templated prompt (which ends with the marker when the call is forced) with text or
    calls. `on_text(k, raw)` streams the raw answer: the content, then the marker and the JSON list."""
    if not spec.forced and getattr(backend, "lazy_json", False):
        return _one_pass(backend, texts, options, spec, on_text)
    if spec.forced:
        contents, budgets, answers = [""] * len(texts), [options.max_new_tokens] * len(texts), {}
        firsts: list[BackendOutput | None] = [None] * len(texts)
        calling = list(range(len(texts)))
        prefix = list(texts)
    else:
        firsts, calling, answers = _first_pass(backend, texts, options, on_text)
        contents = [f.text for f in firsts]
        budgets = [options.max_new_tokens - f.completion_tokens for f in firsts]
        prefix = [t + c + PREFILL for t, c in zip(texts, contents)]
    for k in [k for k in calling if budgets[k] < 1]:  # the limit came with the marker
        cut = firsts[k]
        answers[k] = ToolAnswer(
            dataclasses.replace(
                cut, finish_reason="length", logprobs=content_logprobs(cut.logprobs, contents[k])
            ),
            [],
        )
    for budget in sorted({budgets[k] for k in calling if budgets[k] >= 1}):
        group = [k for k in calling if budgets[k] == budget]
        constrained = GenerationOptions.from_kwargs(
            options, json_schema=spec.schema_json, stop=end_stops, max_new_tokens=budget
        )
        relay = None
        if on_text is not None:

            def relay(j: int, text: str, group=group):
                return on_text(group[j], contents[group[j]] + PREFILL + text)

        for k, out in zip(group, backend.generate([prefix[k] for k in group], constrained, on_text=relay)):
            answers[k] = _calls_answer(out, contents[k], firsts[k])
    return [answers[k] for k in range(len(texts))]


def _one_pass(backend, texts, options, spec, on_text) -> list[ToolAnswer]:
    """tool_choice "auto" where the backend starts the calls' grammar at the marker itself: one
    decoding per answer, text or calls."""
    lazy = GenerationOptions.from_kwargs(options, json_schema=spec.schema_json, json_after=TRIGGER)
    answers = []
    for out in backend.generate(texts, lazy, on_text=on_text):
        at = out.text.find(TRIGGER)
        if at < 0 or out.error:
            answers.append(ToolAnswer(out, None))
        else:
            calls = dataclasses.replace(out, text=out.text[at + len(TRIGGER) :])
            answers.append(_calls_answer(calls, out.text[:at], None, written=out))
    return answers


def _first_pass(backend, texts, options, on_text):
    """Free text until the marker: (outputs with the content, the rows that wrote the marker, answers
    of the rows that did not)."""
    hit: set[int] = set()

    def watch(k: int, text: str):
        at = text.find(TRIGGER)
        if at >= 0:
            hit.add(k)
            text = text[:at]
        kept = on_text(k, text) if on_text is not None else None
        return False if at >= 0 else kept

    stops = options.stop + ((TRIGGER,) if backend.name in _STREAMS_BEFORE_CUTTING else ())
    outputs = backend.generate(texts, GenerationOptions.from_kwargs(options, stop=stops), on_text=watch)
    firsts = [dataclasses.replace(o, text=cut_at_stop(o.text, (TRIGGER,))[0]) for o in outputs]
    answers = {k: ToolAnswer(o, None) for k, o in enumerate(firsts) if k not in hit or o.error}
    return firsts, [k for k in range(len(texts)) if k not in answers], answers


def _calls_answer(
    out: BackendOutput, content: str, first: BackendOutput | None, written: BackendOutput | None = None
) -> ToolAnswer:
    """The answer of a row that called: `content` (what it wrote before the marker), the calls parsed
    from `out.text`, tokens summed over both passes. Logprobs, when asked, cover the content's tokens
    only (as OpenAI's `logprobs.content`; none for the call's JSON), taken from `written`: the pass
    that wrote the content (`first`; else `out` itself: one pass, or a forced call, whose content is
    empty)."""
    calls = [ToolCall(c.name, c.arguments) for c in scan_calls(out.text) if c.complete]
    written = written or first or out
    merged = BackendOutput(
        text=content,
        finish_reason=out.finish_reason,
        prompt_tokens=first.prompt_tokens if first is not None else out.prompt_tokens,
        completion_tokens=out.completion_tokens + (first.completion_tokens if first is not None else 0),
        error=out.error,
        logprobs=content_logprobs(written.logprobs, content),
        cached_tokens=first.cached_tokens if first is not None else out.cached_tokens,
    )
    if out.finish_reason == "stop" and not out.error and not calls:
        merged.error = f"the tool call did not parse: {out.text[:200]!r}"
        merged.finish_reason = "error"
    return ToolAnswer(merged, calls)


def content_logprobs(entries: list[TokenLogprob] | None, content: str) -> list[TokenLogprob] | None:
    """The entries of the tokens that wrote `content`, the start of an answer (None when none were
    asked): each token that begins inside it, so a token that wrote the content's end and the marker's
    start is kept."""
    if entries is None:
        return None
    kept, at, end = [], 0, len(content.encode("utf-8"))
    for entry in entries:
        if at >= end:
            break
        kept.append(entry)
        at += len(entry.bytes)  # bytes, not characters: a character split over two tokens counts once
    return kept


def check_tool_backend(backend_name: str, spec: ToolSpec | None) -> None:
    """Tool calls need a backend that constrains decoding to a JSON schema (not a remote service)."""
    if spec is not None and spec.calls and backend_name not in ("llama_cpp", "transformers", "vllm"):
        from tunelab.errors import ConfigError

        raise ConfigError(
            "tool calling needs the llama_cpp, transformers or vllm backend; "
            f"this model runs on {backend_name}"
        )
