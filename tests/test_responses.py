"""OpenAI's Responses API (/v1/responses): the official `openai` SDK's `client.responses` and the OpenAI
Agents SDK against a real `tunelab serve` (uvicorn on loopback) on both local backends, with API keys of
two owners. Random-weight models write random text, so the tests assert shapes, and that a Responses
request gets the same answer as the chat request it stands for."""

from __future__ import annotations

import asyncio
import json
from typing import Literal

import httpx
import jsonschema
import openai
import pytest
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseFunctionCallArgumentsDeltaEvent,
    ResponseFunctionCallArgumentsDoneEvent,
    ResponseFunctionToolCall,
    ResponseOutputMessage,
    ResponseTextDeltaEvent,
)

from tests.remote_server import RunningServer
from tests.tiny_gguf import convert_hf_llama_to_gguf
from tests.tiny_models import make_tiny_llama
from tunelab.config import Settings
from tunelab.server.service import Service
from tunelab.store.db import Store

WEATHER = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 8}, "unit": {"enum": ["celsius", "fahrenheit"]}},
    "required": ["city", "unit"],
}
TOOL = {"type": "function", "name": "get_weather", "description": "Weather now", "parameters": WEATHER}
VERDICT = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "colour": {"enum": ["red", "green", "blue"]}},
    "required": ["ok", "colour"],
    "additionalProperties": False,
}


@pytest.fixture(scope="module")
def chat_dir(tmp_path_factory):
    # the tools' section alone takes ~500 tokens: more than the shared tiny model's 256
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-responses"), max_positions=2048)


@pytest.fixture(scope="module", params=["transformers", "llama_cpp"])
def served(request, tunelab_home, chat_dir, tmp_path_factory):
    path = str(chat_dir)
    if request.param == "llama_cpp":
        path = str(convert_hf_llama_to_gguf(chat_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf"))
    store = Store(f"sqlite:///{tmp_path_factory.mktemp('store') / 'tunelab.db'}")
    alice, bob = store.create_key("alice")[1], store.create_key("bob")[1]
    service = Service(Settings(home=tunelab_home), store, extra_models=[path], backend=request.param)
    with RunningServer(service) as running:
        url = running.url + "/v1"
        yield {
            "sdk": openai.OpenAI(base_url=url, api_key=alice, max_retries=0),
            "other": openai.OpenAI(base_url=url, api_key=bob, max_retries=0),
            "url": url,
            "key": alice,
            "model": path,
        }


def create(served, **asked):
    return served["sdk"].responses.create(model=served["model"], **{"temperature": 0, **asked})


def test_a_response_is_the_chat_answer_to_instructions_and_input(served):
    out = create(
        served, input="What do you think of Mars?", instructions="Answer briefly.", max_output_tokens=8
    )
    assert out.object == "response" and out.id.startswith("resp_") and out.model == served["model"]
    assert out.status in ("completed", "incomplete") and out.instructions == "Answer briefly."
    [message] = out.output
    assert isinstance(message, ResponseOutputMessage) and message.id.startswith("msg_")
    assert message.content[0].type == "output_text" and out.output_text == message.content[0].text
    usage = out.usage
    assert 0 < usage.output_tokens <= 8 and usage.input_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.input_tokens_details.cached_tokens == 0 and usage.output_tokens_details.reasoning_tokens == 0
    if out.status == "incomplete":
        assert out.incomplete_details.reason == "max_output_tokens"
    chat = served["sdk"].chat.completions.create(
        model=served["model"],
        messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "What do you think of Mars?"},
        ],
        max_tokens=8,
        temperature=0,
    )
    assert out.output_text == chat.choices[0].message.content
    assert usage.input_tokens == chat.usage.prompt_tokens
    # the input as a message list (content parts, a developer message) is the same conversation
    listed = create(
        served,
        input=[
            {"role": "developer", "content": "Answer briefly."},
            {
                "type": "message",
                "role": "user",
                "content": [{"type": "input_text", "text": "What do you think of Mars?"}],
            },
        ],
        max_output_tokens=8,
    )
    assert listed.output_text == out.output_text


def test_streaming_sends_each_event_type_in_order_and_the_same_answer(served):
    asked = dict(input="Hello there", max_output_tokens=6)
    whole = create(served, **asked)
    events = list(create(served, stream=True, **asked))
    assert [e.sequence_number for e in events] == list(range(len(events)))
    types = [e.type for e in events]
    deltas = [e for e in events if isinstance(e, ResponseTextDeltaEvent)]
    assert types[:4] == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
    ]
    assert types[4 : 4 + len(deltas)] == ["response.output_text.delta"] * len(deltas) and deltas
    assert types[4 + len(deltas) :] == [
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        f"response.{whole.status}",
    ]
    final = events[-1].response
    assert events[0].response.status == "in_progress" and final.id == events[0].response.id
    item = events[2].item
    assert {d.item_id for d in deltas} == {item.id} == {final.output[0].id}
    assert "".join(d.delta for d in deltas) == events[-4].text == final.output_text == whole.output_text
    assert final.usage.output_tokens == whole.usage.output_tokens
    # a streamed response is stored like a whole one
    assert served["sdk"].responses.retrieve(final.id).output_text == whole.output_text


def test_previous_response_id_continues_the_conversation_of_the_same_owner_only(served):
    sdk, other = served["sdk"], served["other"]
    first = create(served, input="My name is Tess.", instructions="Be nice.", max_output_tokens=5)
    second = create(served, input="What is my name?", previous_response_id=first.id, max_output_tokens=5)
    assert second.previous_response_id == first.id
    # the same as chat with the earlier turn (its instructions are not carried over, as OpenAI does)
    chat = sdk.chat.completions.create(
        model=served["model"],
        messages=[
            {"role": "user", "content": "My name is Tess."},
            {"role": "assistant", "content": first.output_text},
            {"role": "user", "content": "What is my name?"},
        ],
        max_tokens=5,
        temperature=0,
    )
    assert second.output_text == chat.choices[0].message.content
    third = create(served, input="And again?", previous_response_id=second.id, max_output_tokens=3)
    assert third.usage.input_tokens > second.usage.input_tokens
    assert sdk.responses.retrieve(first.id).output_text == first.output_text
    # another owner: the id does not exist for them, whatever they do with it
    with pytest.raises(openai.NotFoundError) as hidden:
        other.responses.create(model=served["model"], input="hi", previous_response_id=first.id)
    assert hidden.value.body["param"] == "previous_response_id"
    with pytest.raises(openai.NotFoundError):
        other.responses.retrieve(first.id)
    with pytest.raises(openai.NotFoundError):
        other.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError) as unknown:
        create(served, input="hi", previous_response_id="resp_nope")
    assert unknown.value.body["message"] == hidden.value.body["message"].replace(first.id, "resp_nope")
    sdk.responses.delete(first.id)
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(first.id)
    unstored = create(served, input="hi", max_output_tokens=2, store=False)
    assert unstored.store is False
    with pytest.raises(openai.NotFoundError):
        sdk.responses.retrieve(unstored.id)


def test_text_format_json_schema_gives_json_that_matches_it(served):
    form = {"type": "json_schema", "name": "verdict", "schema": VERDICT, "strict": True}
    asked = dict(input="Is the sky blue? Answer in JSON.", max_output_tokens=40, text={"format": form})
    out = create(served, **asked)
    assert out.status == "completed" and out.text.format.type == "json_schema"
    jsonschema.validate(json.loads(out.output_text), VERDICT)
    streamed = list(create(served, stream=True, **asked))
    assert streamed[-1].response.output_text == out.output_text
    with pytest.raises(openai.BadRequestError) as bad:
        create(
            served,
            input="hi",
            text={"format": {"type": "json_schema", "name": "x", "schema": {"type": "objekt"}}},
        )
    assert bad.value.body["param"] == "text.format" and "response_format" not in bad.value.body["message"]


def test_function_tools_give_calls_that_match_the_schema_and_read_their_output(served):
    asked = dict(
        input="What is the weather in Paris?",
        tools=[TOOL],
        tool_choice="required",
        parallel_tool_calls=False,
        max_output_tokens=160,
    )
    out = create(served, **asked)
    assert out.status == "completed"
    [call] = out.output
    assert isinstance(call, ResponseFunctionToolCall) and call.name == "get_weather"
    assert call.call_id.startswith("call_") and call.id.startswith("fc_") and call.status == "completed"
    jsonschema.validate(json.loads(call.arguments), WEATHER)
    assert out.tools[0].name == "get_weather" and out.tool_choice == "required"
    # a named tool_choice, in the Responses shape
    named = create(served, **{**asked, "tool_choice": {"type": "function", "name": "get_weather"}})
    assert [i.type for i in named.output] == ["function_call"]
    # streamed: the arguments piece by piece, joining to the whole answer's
    events = list(create(served, stream=True, **asked))
    pieces = [e.delta for e in events if isinstance(e, ResponseFunctionCallArgumentsDeltaEvent)]
    [done] = [e for e in events if isinstance(e, ResponseFunctionCallArgumentsDoneEvent)]
    assert len(pieces) >= 2 and "".join(pieces) == done.arguments == call.arguments
    assert isinstance(events[-1], ResponseCompletedEvent)
    assert events[-1].response.output[0].call_id == events[2].item.call_id
    # the result, sent back as a function_call_output item after the call
    answer = create(
        served,
        previous_response_id=out.id,
        input=[{"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"}],
        tools=[TOOL],
        tool_choice="none",
        max_output_tokens=6,
    )
    assert answer.output[0].type == "message" and answer.output_text
    chat = served["sdk"].chat.completions.create(
        model=served["model"],
        messages=[
            {"role": "user", "content": "What is the weather in Paris?"},
            {
                "role": "assistant",
                "tool_calls": [
                    {
                        "id": call.call_id,
                        "type": "function",
                        "function": {"name": call.name, "arguments": call.arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call.call_id, "content": "sunny, 21 C"},
        ],
        tools=[{"type": "function", "function": {"name": "get_weather", "parameters": WEATHER}}],
        tool_choice="none",
        max_tokens=6,
        temperature=0,
    )
    assert answer.output_text == chat.choices[0].message.content
    # the same turn without the stored response: the call item and its output in the input
    replayed = create(
        served,
        input=[
            {"role": "user", "content": "What is the weather in Paris?"},
            call.model_dump(exclude_none=True),
            {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21 C"},
        ],
        tools=[TOOL],
        tool_choice="none",
        max_output_tokens=6,
    )
    assert replayed.output_text == answer.output_text


def test_what_tunelab_cannot_do_is_a_400_naming_the_field(served):
    cases = [
        ({"background": True}, "background"),
        ({"reasoning": {"effort": "high"}}, "reasoning"),
        ({"tools": [{"type": "web_search"}]}, "tools[0].type"),
        ({"tools": [TOOL, {"type": "file_search", "vector_store_ids": ["vs_1"]}]}, "tools[1].type"),
        ({"tools": [{**TOOL, "name": "bad name!"}]}, "tools[0].name"),
        ({"tools": [TOOL], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        ({"include": ["message.output_text.logprobs"]}, "include"),
        (
            {"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "http://x"}]}]},
            "input[0].content[0].type",
        ),
        ({"input": [{"type": "item_reference", "id": "msg_1"}]}, "input[0].type"),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "{oops"}]},
            "input[0].arguments",
        ),
        ({"max_output_tokens": 5000}, "max_output_tokens"),
    ]
    for extra, param in cases:
        with pytest.raises(openai.BadRequestError) as refused:
            create(served, **{"input": "hi", "max_output_tokens": 4, **extra})
        assert refused.value.body["param"] == param, (extra, refused.value.message)
    missing = httpx.post(
        served["url"] + "/responses",
        json={"model": "no-such-model", "input": "hi"},
        headers={"Authorization": f"Bearer {served['key']}"},
    )
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"


def test_an_openai_agents_sdk_agent_runs_on_the_server(served):
    agents = pytest.importorskip("agents")
    agents.set_tracing_disabled(True)  # no trace export to OpenAI: the tests run offline

    @agents.function_tool
    def get_weather(city: Literal["Paris", "Oslo"]) -> str:
        """The weather now in a city."""
        return f"sunny in {city}"

    client = openai.AsyncOpenAI(base_url=served["url"], api_key=served["key"], max_retries=0)
    agent = agents.Agent(
        name="weather",
        instructions="Answer with the weather tool.",
        tools=[get_weather],
        model=agents.OpenAIResponsesModel(model=served["model"], openai_client=client),
        model_settings=agents.ModelSettings(
            tool_choice="required", parallel_tool_calls=False, temperature=0, max_tokens=120
        ),
        # a random-weight model's own text runs to max_tokens (an incomplete response, which the SDK
        # raises on): the agent's answer is its tool's
        tool_use_behavior="stop_on_first_tool",
    )

    async def run_twice():
        whole = await agents.Runner.run(agent, "What is the weather in Paris?")
        streamed = agents.Runner.run_streamed(agent, "And in Oslo?")
        kinds = [event.type async for event in streamed.stream_events()]
        return whole, streamed, kinds

    whole, streamed, kinds = asyncio.run(run_twice())
    assert isinstance(whole.final_output, str) and whole.final_output.startswith("sunny in ")
    assert whole.raw_responses and whole.raw_responses[0].response_id.startswith("resp_")
    assert isinstance(streamed.final_output, str) and streamed.final_output.startswith("sunny in ")
    assert "raw_response_event" in kinds and "run_item_stream_event" in kinds
