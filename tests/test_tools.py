"""Tool (function) calling on the OpenAI routes: the official `openai` SDK against a real `tunelab serve`
on both local backends. Random-weight models write random content, so the tests assert the structure:
every call names an offered tool and its arguments validate against that tool's `parameters`."""

from __future__ import annotations

import json
from typing import Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.remote_server import RunningServer
from tests.tiny_gguf import convert_hf_llama_to_gguf
from tests.tiny_models import make_tiny_llama
from tunelab.config import Settings
from tunelab.errors import ToolCallError
from tunelab.inference.templates import resolve_template
from tunelab.inference.tools import PREFILL, ToolSpec, conversation_for, scan_calls, split_answer
from tunelab.server.service import Service

# Bounded arguments (enums, small integers, short strings), so a random model's call ends soon.
WEATHER = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 8},
        "unit": {"enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
}
ADD = {
    "type": "object",
    "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 9}, "exact": {"type": "boolean"}},
    "required": ["a", "exact"],
}
TOOLS = [
    {
        "type": "function",
        "function": {"name": "get_weather", "description": "Weather now", "parameters": WEATHER},
    },
    {"type": "function", "function": {"name": "add", "parameters": ADD}},
]
SCHEMAS = {"get_weather": WEATHER, "add": ADD}
QUESTIONS = ["What is the weather in Paris?", "Add two and three", "Hello there"]


@pytest.fixture(scope="module")
def tools_chat_dir(tmp_path_factory):
    # a longer context than the shared tiny model's 256 tokens: the tools' section alone takes ~500
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-tools"), max_positions=2048)


@pytest.fixture(scope="module", params=["transformers", "llama_cpp"])
def served(request, tunelab_home, tools_chat_dir, tmp_path_factory):
    path = str(tools_chat_dir)
    if request.param == "llama_cpp":
        path = str(convert_hf_llama_to_gguf(tools_chat_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf"))
    service = Service(
        Settings(home=tunelab_home), None, extra_models=[path], backend=request.param, no_auth=True
    )
    with RunningServer(service) as running:
        sdk = openai.OpenAI(base_url=running.url + "/v1", api_key="none", max_retries=0)
        yield {"sdk": sdk, "model": path, "url": running.url, "backend": request.param}


def ask(served, question: str, **options):
    return served["sdk"].chat.completions.create(
        model=served["model"],
        messages=[{"role": "user", "content": question}],
        tools=TOOLS,
        **{"max_tokens": 160, "temperature": 0, **options},
    )


def assert_valid_calls(choice, names=tuple(SCHEMAS)) -> list:
    assert choice.finish_reason == "tool_calls", choice
    calls = choice.message.tool_calls
    assert calls, choice.message
    for call in calls:
        assert call.type == "function" and call.id.startswith("call_")
        assert call.function.name in names
        jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])
    return calls


def test_a_named_tool_choice_forces_one_call_of_that_tool(served):
    for question in QUESTIONS:
        out = ask(served, question, tool_choice={"type": "function", "function": {"name": "add"}})
        calls = assert_valid_calls(out.choices[0], names=("add",))
        assert len(calls) == 1 and out.choices[0].message.content is None
        assert out.usage.completion_tokens > 0


def test_required_gives_a_valid_call_of_some_tool(served):
    seen = set()
    for question in QUESTIONS:
        out = ask(served, question, tool_choice="required", parallel_tool_calls=False)
        calls = assert_valid_calls(out.choices[0])
        assert len(calls) == 1  # parallel_tool_calls false: at most one
        seen.add(calls[0].function.name)
    assert seen <= set(SCHEMAS)


def test_none_and_auto_answer_in_text_when_the_model_writes_no_call(served):
    for choice in ("none", "auto"):
        out = ask(served, "Hello there", tool_choice=choice, max_tokens=12)
        message = out.choices[0].message
        assert isinstance(message.content, str) and message.content and message.tool_calls is None
        assert out.choices[0].finish_reason in ("stop", "length")
    # "none" leaves the tools out of the prompt: the same answer as without them
    plain = served["sdk"].chat.completions.create(
        model=served["model"],
        messages=[{"role": "user", "content": "Hello there"}],
        max_tokens=12,
        temperature=0,
    )
    assert ask(served, "Hello there", tool_choice="none", max_tokens=12).choices[0].message.content == (
        plain.choices[0].message.content
    )


def test_logprobs_with_tools_cover_the_content_not_the_call(served):
    # as OpenAI's logprobs.content: a call's JSON has no entries (a forced call: an empty list); a text
    # answer with tools offered has one entry per answer token
    forced = {"tool_choice": "required", "parallel_tool_calls": False}
    out = ask(served, "Add two and three", **forced, logprobs=True, top_logprobs=2)
    assert_valid_calls(out.choices[0])
    assert out.choices[0].logprobs is not None and out.choices[0].logprobs.content == []
    out = ask(served, "Hello there", tool_choice="auto", max_tokens=12, logprobs=True)
    if out.choices[0].message.tool_calls is None:  # a random model may call by itself
        entries = out.choices[0].logprobs.content
        assert len(entries) == out.usage.completion_tokens
        assert all(e.top_logprobs == [] and e.logprob <= 0 for e in entries)
        # each entry's bytes are its token's own (a partial UTF-8 character's too): they make the text
        written = b"".join(bytes(e.bytes) for e in entries)
        assert written.decode("utf-8", errors="replace") == out.choices[0].message.content


def test_content_logprobs_keeps_the_tokens_that_wrote_the_content():
    from tunelab.inference.logprobs import TokenLogprob
    from tunelab.inference.tools import content_logprobs

    entries = [TokenLogprob(k, text, -1.0) for k, text in enumerate(["Sure", ",", " <tool", "_call", ">"])]
    assert content_logprobs(entries, "Sure,") == entries[:2]
    assert content_logprobs(entries, "Sure, ") == entries[:3]  # the token that ends it and starts the marker
    assert content_logprobs(entries, "") == []
    assert content_logprobs(None, "Sure,") is None
    # "é" written by two tokens of one byte each (each shows U+FFFD as text): both belong to the content
    split = [TokenLogprob(1, "\ufffd", -1.0, piece=b"\xc3"), TokenLogprob(2, "\ufffd", -1.0, piece=b"\xa9")]
    marker = TokenLogprob(3, "<tool_call>", -1.0)
    assert content_logprobs([*split, marker], "é") == split


def test_streaming_a_call_gives_tool_call_deltas_that_join_to_the_whole_answers_call(served):
    named = {"type": "function", "function": {"name": "get_weather"}}
    whole = ask(served, QUESTIONS[0], tool_choice=named)
    expected = assert_valid_calls(whole.choices[0], names=("get_weather",))[0]
    chunks = list(ask(served, QUESTIONS[0], tool_choice=named, stream=True))
    deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
    assert len(deltas) >= 2 and deltas[0].id and deltas[0].function.name == "get_weather"
    assert {d.index for d in deltas} == {0} and all(d.id is None for d in deltas[1:])
    assert "".join(d.function.arguments or "" for d in deltas) == expected.function.arguments
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "tool_calls"
    ]
    assert not any(c.choices[0].delta.content for c in chunks if c.choices)


def test_a_history_with_calls_and_tool_results_renders_and_is_answered(served):
    arguments = json.dumps({"city": "Paris", "unit": "celsius"})
    messages = [
        {"role": "user", "content": "What is the weather in Paris?"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21 C"},
    ]
    sdk = served["sdk"]
    out = sdk.chat.completions.create(
        model=served["model"], messages=messages, tools=TOOLS, tool_choice="none", max_tokens=8, temperature=0
    )
    assert out.choices[0].message.content and out.usage.prompt_tokens > 0
    called = sdk.chat.completions.create(
        model=served["model"],
        messages=messages,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,  # one call: a random model may otherwise go on listing calls
        max_tokens=160,
        temperature=0,
    )
    assert_valid_calls(called.choices[0])


def test_bad_tools_are_a_400_naming_the_field(served):
    sdk = served["sdk"]
    cases = [
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
            "tools[0].function.parameters",
        ),
        ({"tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
        ({"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": TOOLS, "response_format": {"type": "json_object"}}, "response_format"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            sdk.chat.completions.create(
                model=served["model"], messages=[{"role": "user", "content": "hi"}], max_tokens=4, **extra
            )
        assert refused.value.param == param, (extra, refused.value.message)
    broken = httpx.post(
        served["url"] + "/v1/chat/completions",
        json={
            "model": served["model"],
            "messages": [
                {"role": "user", "content": "hi"},
                {
                    "role": "assistant",
                    "tool_calls": [
                        {"id": "c", "type": "function", "function": {"name": "f", "arguments": "{oops"}}
                    ],
                },
                {"role": "tool", "tool_call_id": "c", "content": "x"},
            ],
        },
    )
    assert broken.status_code == 400, broken.text
    assert broken.json()["error"]["param"] == "messages.1.tool_calls.0.function.arguments"


# -- the pieces, without a server -------------------------------------------------------------------


def test_the_calls_schema_follows_tool_choice_and_parallel_tool_calls():
    two = [
        {"name": "add", "arguments": {"a": 1, "exact": True}},
        {"name": "get_weather", "arguments": {"city": "Oslo", "unit": "celsius"}},
    ]
    parallel = json.loads(ToolSpec.from_openai(TOOLS, "required", True).schema_json)
    jsonschema.validate(two, parallel)
    single = json.loads(ToolSpec.from_openai(TOOLS, "required", False).schema_json)
    jsonschema.validate(two[:1], single)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(two, single)
    named = json.loads(
        ToolSpec.from_openai(TOOLS, {"type": "function", "function": {"name": "add"}}).schema_json
    )
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(two[1:], named)
    with pytest.raises(jsonschema.ValidationError):  # arguments must match the tool's own parameters
        jsonschema.validate([{"name": "add", "arguments": {"a": 12, "exact": True}}], parallel)
    assert ToolSpec.from_openai(None, None) is None and ToolSpec.from_openai(TOOLS, "none").calls is False


def test_tool_parameters_with_definitions_are_moved_to_the_root():
    nested = {
        "type": "object",
        "properties": {"where": {"$ref": "#/$defs/Place"}},
        "required": ["where"],
        "$defs": {
            "Place": {
                "type": "object",
                "properties": {"city": {"enum": ["Oslo", "Rome"]}},
                "required": ["city"],
            }
        },
    }
    spec = ToolSpec.from_openai(
        [{"type": "function", "function": {"name": "go", "parameters": nested}}], "required"
    )
    schema = json.loads(spec.schema_json)
    jsonschema.validate([{"name": "go", "arguments": {"where": {"city": "Rome"}}}], schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "go", "arguments": {"where": {"city": "Paris"}}}], schema)
    with pytest.raises(ToolCallError) as twice:
        ToolSpec.from_openai([TOOLS[0], TOOLS[0]])
    assert twice.value.param == "tools[1].function.name"


def test_calls_are_read_as_they_are_written():
    written = (
        '[{"name": "add", "arguments": {"a": 3, "exact": false}}, '
        '{"name": "get_weather", "arguments": {"city": "Ro'
    )
    calls = scan_calls(written)
    assert [(c.name, c.complete) for c in calls] == [("add", True), ("get_weather", False)]
    assert calls[0].arguments == '{"a": 3, "exact": false}'
    final = scan_calls(written + 'me", "unit": "celsius"}}]')[1]
    assert final.complete and final.arguments.startswith(calls[1].arguments)
    assert json.loads(final.arguments) == {"city": "Rome", "unit": "celsius"}
    content, calls = split_answer("Let me look.\n" + PREFILL + written)
    assert content == "Let me look.\n" and len(calls) == 2
    assert split_answer("no call here") == ("no call here", None)


HISTORY = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"id": "c1", "name": "get_weather", "arguments": '{"city": "Paris"}'}],
    },
    {"role": "tool", "content": "sunny", "tool_call_id": "c1"},
    {"role": "tool", "content": "21 C", "tool_call_id": "c1"},
]


def test_a_template_without_a_tools_section_gets_tunelabs():
    template = resolve_template("auto", model_chat_template=CHATML)
    messages, context = conversation_for(template.source, HISTORY, ToolSpec.from_openai(TOOLS))
    text = template.render_chat(messages, **context)
    assert context == {} and text.startswith("<|im_start|>system\nYou can call these tools")
    # each tool listed as {"name", "description", "parameters"}, without OpenAI's wrapper
    assert '\n{"name": "get_weather", ' in text and '\n{"name": "add", ' in text
    assert '"type": "function"' not in text and '"parameters": {"type": "object"' in text
    assert (
        '<|im_start|>assistant\n<tool_call>\n[{"name": "get_weather", "arguments": {"city": "Paris"}}]'
        "<|im_end|>" in text
    )
    # consecutive results share one user turn, as the model then reads them together
    assert (
        "<|im_start|>user\n<tool_response>\nsunny\n</tool_response>\n"
        "<tool_response>\n21 C\n</tool_response><|im_end|>" in text
    )
    assert text.endswith("<|im_start|>assistant\n")


CHATML = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# The shape of Qwen2.5's template: tools in the system turn, calls and results in its own tags.
NATIVE = (
    "{% if tools %}<|im_start|>system\n{% for tool in tools %}{{ tool['function']['name'] }};{% endfor %}"
    "<|im_end|>\n{% endif %}"
    "{% for message in messages %}{% if message['role'] == 'tool' %}"
    "<|im_start|>user\n<tool_response>{{ message['content'] }}</tool_response><|im_end|>\n"
    "{% elif message['tool_calls'] %}<|im_start|>assistant\n{% for call in message['tool_calls'] %}"
    "<tool_call>{{ call['function']['name'] }} {{ call['function']['arguments']['city'] }}</tool_call>"
    "{% endfor %}<|im_end|>\n"
    "{% else %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def test_a_template_with_a_tools_section_renders_them_itself():
    template = resolve_template("auto", model_chat_template=NATIVE)
    messages, context = conversation_for(template.source, HISTORY[:3], ToolSpec.from_openai(TOOLS))
    text = template.render_chat(messages, **context)
    assert text.startswith("<|im_start|>system\nget_weather;add;<|im_end|>")
    assert "<tool_call>get_weather Paris</tool_call>" in text  # arguments reach it as an object
    assert "<tool_response>sunny</tool_response>" in text and "You can call" not in text


# -- clients that build on tool calls ---------------------------------------------------------------


class Weather(BaseModel):
    """The weather in a city now."""

    city: Literal["Paris", "Oslo", "Rome"]
    unit: Literal["celsius", "fahrenheit"]


class Sum(BaseModel):
    """Two small numbers to add."""

    a: int = Field(ge=0, le=9)
    b: int = Field(ge=0, le=9)
    exact: bool


def test_langchain_bind_tools_and_a_tool_round_trip(served):
    langchain_openai = pytest.importorskip("langchain_openai")
    from langchain_core.messages import HumanMessage, ToolMessage

    chat = langchain_openai.ChatOpenAI(
        base_url=served["url"] + "/v1", api_key="none", model=served["model"], temperature=0, max_tokens=120
    )
    question = HumanMessage("What is the weather in Paris?")
    called = chat.bind_tools([Weather], tool_choice="Weather").invoke([question])
    assert len(called.tool_calls) == 1 and called.tool_calls[0]["name"] == "Weather"
    Weather.model_validate(called.tool_calls[0]["args"])  # LangChain parsed our arguments
    result = ToolMessage("sunny, 21 C", tool_call_id=called.tool_calls[0]["id"])
    answer = chat.bind_tools([Weather], tool_choice="none").invoke([question, called, result])
    assert isinstance(answer.content, str) and answer.content and not answer.tool_calls


def test_langchain_structured_output_by_function_calling(served):
    langchain_openai = pytest.importorskip("langchain_openai")
    chat = langchain_openai.ChatOpenAI(
        base_url=served["url"] + "/v1", api_key="none", model=served["model"], temperature=0, max_tokens=120
    )
    structured = chat.with_structured_output(Sum, method="function_calling")
    for question in ("Add 2 and 3", "What is 4 plus 4?"):
        assert isinstance(structured.invoke(question), Sum)


def test_instructor_in_its_default_tools_mode(served):
    instructor = pytest.importorskip("instructor")
    client = instructor.from_openai(served["sdk"], mode=instructor.Mode.TOOLS)
    for question in ("Add 2 and 3", "What is the weather in Paris?"):
        # instructor forces a call of its one tool (named tool_choice) and validates the arguments
        answer, completion = client.chat.completions.create_with_completion(
            model=served["model"],
            response_model=Sum,
            messages=[{"role": "user", "content": question}],
            max_tokens=120,
            temperature=0,
            max_retries=0,
        )
        assert isinstance(answer, Sum) and 0 <= answer.a <= 9
        assert completion.choices[0].message.tool_calls[0].function.name == "Sum"


# -- a real model ---------------------------------------------------------------------------------------


def few_shot_weather(city: str) -> list[dict]:
    """Two earlier questions answered by calls: SmolLM2-135M then writes the marker itself."""

    def call(k: int, name: str) -> dict:
        arguments = json.dumps({"city": name, "unit": "celsius"})
        called = {
            "id": f"call_{k}",
            "type": "function",
            "function": {"name": "get_weather", "arguments": arguments},
        }
        return {"role": "assistant", "content": None, "tool_calls": [called]}

    return [
        {"role": "user", "content": "Weather in Madrid?"},
        call(1, "Madrid"),
        {"role": "user", "content": "Weather in Berlin?"},
        call(2, "Berlin"),
        {"role": "user", "content": f"Weather in {city}?"},
    ]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["llama_cpp", "transformers"])
def test_smollm2_calls_by_itself_with_auto_and_answers_small_talk_in_text(tunelab_home, backend):
    weather = {**WEATHER, "properties": {**WEATHER["properties"], "city": {"type": "string"}}}
    tools = [{"type": "function", "function": {"name": "get_weather", "parameters": weather}}]
    service = Service(Settings(home=tunelab_home), None, backend=backend, no_auth=True)
    with RunningServer(service) as running:
        sdk = openai.OpenAI(base_url=running.url + "/v1", api_key="none", max_retries=0)
        asked = dict(model="smollm2-135m-instruct", tools=tools, temperature=0, max_tokens=60)
        out = sdk.chat.completions.create(messages=few_shot_weather("Rome"), **asked)
        (call,) = out.choices[0].message.tool_calls
        assert out.choices[0].finish_reason == "tool_calls" and call.function.name == "get_weather"
        jsonschema.validate(json.loads(call.function.arguments), weather)
        assert json.loads(call.function.arguments)["city"] == "Rome"
        chunks = list(sdk.chat.completions.create(messages=few_shot_weather("Rome"), stream=True, **asked))
        deltas = [d for c in chunks if c.choices for d in (c.choices[0].delta.tool_calls or [])]
        assert deltas[0].function.name == "get_weather"
        assert "".join(d.function.arguments or "" for d in deltas) == call.function.arguments
        assert chunks[-1].choices[0].finish_reason == "tool_calls"
        chat = sdk.chat.completions.create(
            messages=[{"role": "user", "content": "Hi! How are you?"}], **asked
        )
        assert chat.choices[0].message.content and chat.choices[0].message.tool_calls is None
