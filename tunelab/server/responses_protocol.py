"""OpenAI's Responses API (`POST /v1/responses`) as pydantic types: the request, its input items, the
Response object and the streamed events. Shapes follow the `openai` SDK's own types
(`openai.types.responses`), so `client.responses.create` and the OpenAI Agents SDK parse what we send.

A request is answered by the chat engine: `ResponsesRequest.chat_request` turns it into the
`ChatCompletionRequest` that /v1/chat/completions would get (instructions as the system message, then the
earlier turns and the input; flat function tools as chat tools; `text.format` as `response_format`).
What tunelab cannot do is refused by name (`ResponsesRequest.refused`), never silently ignored.
"""

from __future__ import annotations

import uuid
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Discriminator, Field, Tag, ValidationError

from tunelab.server.protocol import ChatCompletionRequest, ChatMessage, FunctionCall, ToolCallOut


def new_item_id(prefix: str) -> str:
    """OpenAI's ids: `resp_...`, `msg_...`, `fc_...` (an underscore, unlike chat's `chatcmpl-`)."""
    return f"{prefix}_{uuid.uuid4().hex}"


class _Loose(BaseModel):
    # Unknown fields are ignored, as OpenAI does (SDKs add new ones over time); the known ones are checked.
    model_config = ConfigDict(extra="ignore", populate_by_name=True)


# -- input items ------------------------------------------------------------------------------------------


class ContentPart(_Loose):
    """A part of a message's content: input_text (user, system), output_text or refusal (assistant)."""

    type: str
    text: str | None = None
    refusal: str | None = None


class InputMessage(_Loose):
    """A message: the SDK's EasyInputMessage (`type` may be left out), an input message, or an earlier
    answer's output message."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[ContentPart]


class FunctionCallItem(_Loose):
    """A call the model made (an earlier answer's output item, sent back with its result)."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: str | None = None


class FunctionCallOutputItem(_Loose):
    """The result of a call, for the model to read."""

    type: Literal["function_call_output"]
    call_id: str
    output: str | list[ContentPart]


class OtherItem(_Loose):
    """Any other item type (reasoning, item_reference, a built-in tool's call): refused by name."""

    type: str


def _item_type(item: Any) -> str:
    kind = item.get("type", "message") if isinstance(item, dict) else getattr(item, "type", "message")
    return kind if kind in ("message", "function_call", "function_call_output") else "other"


InputItem = Annotated[
    Annotated[InputMessage, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[OtherItem, Tag("other")],
    Discriminator(_item_type),
]


# -- tools and text format --------------------------------------------------------------------------------


class FunctionTool(_Loose):
    """The Responses API's function tool: flat (`name`, `parameters` beside `type`), unlike chat's."""

    type: Literal["function"]
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None  # tunelab's calls always match the schema


class OtherTool(_Loose):
    """A built-in tool (web_search, file_search, code_interpreter, mcp, ...): refused by name."""

    type: str


Tool = Annotated[
    Annotated[FunctionTool, Tag("function")] | Annotated[OtherTool, Tag("other")],
    Discriminator(lambda t: "function" if _field(t, "type") == "function" else "other"),
]


def _field(value: Any, name: str) -> Any:
    return value.get(name) if isinstance(value, dict) else getattr(value, name, None)


class TextFormat(_Loose):
    """`text.format`: plain text, any JSON object, or JSON matching a schema (flat: `name` and `schema`
    beside `type`, unlike chat's `response_format.json_schema`)."""

    type: Literal["text", "json_object", "json_schema"] = "text"
    name: str | None = None
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class TextConfig(_Loose):
    format: TextFormat = Field(default_factory=TextFormat)
    verbosity: str | None = None  # a hint for OpenAI's models; tunelab's answer as long as it is


# -- the request ------------------------------------------------------------------------------------------

# `include` values that ask for nothing tunelab's answers could hold (they have no reasoning items)
_NOTHING_TO_INCLUDE = {"reasoning.encrypted_content"}


class ResponsesRequest(_Loose):
    model: str
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, ge=0, le=1)
    text: TextConfig | None = None
    tools: list[Tool] | None = None
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    previous_response_id: str | None = None
    store: bool | None = True
    stream: bool = False
    metadata: dict[str, str] | None = None
    user: str | None = None
    max_tool_calls: int | None = None  # counts built-in tools' calls only, and there are none here
    # refused when asked for (see `refused`)
    background: bool | None = None
    reasoning: dict[str, Any] | None = None
    conversation: str | dict[str, Any] | None = None
    prompt: dict[str, Any] | None = None
    include: list[str] | None = None
    truncation: Literal["auto", "disabled"] | None = None
    top_logprobs: int | None = None

    def refused(self) -> tuple[str, str] | None:
        """(field, why) of the first thing asked that tunelab cannot do, or None."""
        if self.background:
            return "background", "background responses are not supported: ask without background (or stream)"
        if self.reasoning and any(v is not None for v in self.reasoning.values()):
            return (
                "reasoning",
                "reasoning options are not supported: tunelab's models have no reasoning effort",
            )
        if self.conversation is not None:
            return "conversation", "conversations are not supported: continue with previous_response_id"
        if self.prompt is not None:
            return "prompt", "stored prompt templates are not supported: send instructions and input"
        for name in self.include or ():
            if name not in _NOTHING_TO_INCLUDE:
                return "include", f"include {name!r} is not supported (logprobs: use /v1/chat/completions)"
        if self.truncation == "auto":
            return "truncation", "truncation 'auto' is not supported: a conversation too long is a 400"
        if self.top_logprobs:
            return "top_logprobs", "logprobs are not supported here: use /v1/chat/completions"
        for k, tool in enumerate(self.tools or ()):
            if isinstance(tool, OtherTool):
                return f"tools[{k}].type", f"only function tools are supported, not built-in {tool.type!r}"
        if isinstance(self.tool_choice, dict) and self.tool_choice.get("type") != "function":
            return "tool_choice", f"tool_choice type {self.tool_choice.get('type')!r} is not supported"
        return None

    def items(self) -> list[InputItem]:
        """The input as items: a string is one user message."""
        if isinstance(self.input, str):
            return [InputMessage(role="user", content=self.input)]
        return list(self.input)

    def chat_request(self, history: list[InputItem]) -> ChatCompletionRequest:
        """The chat request that answers this one after `history` (the earlier turns' items).

        Raises FieldError naming the Responses field for input the chat route would refuse."""
        messages = [ChatMessage(role="system", content=self.instructions)] if self.instructions else []
        messages += chat_messages(history, self.items())
        if not messages:
            raise FieldError("input", "input must hold at least one message")
        tools = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description,
                    "parameters": t.parameters,
                    "strict": t.strict,
                },
            }
            for t in self.tools or ()
        ]
        choice = self.tool_choice
        if isinstance(choice, dict):
            choice = {"type": "function", "function": {"name": choice.get("name")}}
        return ChatCompletionRequest(
            model=self.model,
            messages=messages,
            max_completion_tokens=self.max_output_tokens,
            temperature=1.0 if self.temperature is None else self.temperature,
            top_p=1.0 if self.top_p is None else self.top_p,
            tools=tools or None,
            tool_choice=choice,
            parallel_tool_calls=self.parallel_tool_calls,
            response_format=self.response_format(),
            stream=self.stream,
        )

    def response_format(self) -> dict[str, Any] | None:
        """`text.format` in chat's `response_format` shape."""
        form = (self.text or TextConfig()).format
        if form.type == "json_schema":
            if form.schema_ is None:
                raise FieldError("text.format.schema", "text.format.schema must be a JSON schema object")
            return {
                "type": "json_schema",
                "json_schema": {"name": form.name or "output", "schema": form.schema_},
            }
        return {"type": form.type}


class FieldError(ValueError):
    """Input the Responses route refuses: a 400 naming `param`."""

    def __init__(self, param: str, message: str):
        super().__init__(message)
        self.param = param


def chat_messages(history: list[InputItem], items: list[InputItem]) -> list[ChatMessage]:
    """Items as chat messages: each message as it is, a function_call joined to the assistant turn before
    it (or a turn of its own), a function_call_output as a tool message. `input[k]` in errors counts the
    request's own items (those after `history`)."""
    messages: list[ChatMessage] = []
    for k, item in enumerate([*history, *items]):
        where = f"input[{k - len(history)}]" if k >= len(history) else "previous_response_id"
        if isinstance(item, InputMessage):
            messages.append(ChatMessage(role=item.role, content=_text(item.content, f"{where}.content")))
        elif isinstance(item, FunctionCallItem):
            try:
                call = ToolCallOut(
                    id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments)
                )
            except ValidationError:
                raise FieldError(f"{where}.arguments", f"{where}.arguments must be JSON text") from None
            last = messages[-1] if messages else None
            if last is not None and last.role == "assistant":
                last.tool_calls = [*(last.tool_calls or []), call]
            else:
                messages.append(ChatMessage(role="assistant", content=None, tool_calls=[call]))
        elif isinstance(item, FunctionCallOutputItem):
            output = _text(item.output, f"{where}.output")
            messages.append(ChatMessage(role="tool", content=output, tool_call_id=item.call_id))
        else:
            raise FieldError(
                f"{where}.type",
                f"input items of type {item.type!r} are not supported: send messages, function_call and "
                "function_call_output items",
            )
    return messages


def _text(content: str | list[ContentPart], where: str) -> str:
    if isinstance(content, str):
        return content
    for j, part in enumerate(content):
        if part.type not in ("input_text", "output_text", "refusal", "text"):
            raise FieldError(f"{where}[{j}].type", f"only text content is supported, not {part.type!r}")
    return "".join(part.text or part.refusal or "" for part in content)


# -- the answer -------------------------------------------------------------------------------------------


class OutputText(BaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(BaseModel):
    id: str = Field(default_factory=lambda: new_item_id("msg"))
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    content: list[OutputText] = Field(default_factory=list)


class OutputFunctionCall(BaseModel):
    id: str
    type: Literal["function_call"] = "function_call"
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"] = "completed"


OutputItem = OutputMessage | OutputFunctionCall


class InputTokensDetails(BaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class ResponseError(BaseModel):
    code: str
    message: str


class IncompleteDetails(BaseModel):
    reason: Literal["max_output_tokens"] = "max_output_tokens"


class Response(BaseModel):
    """The Response object: what POST answers, GET gives back, and the stream's first and last events hold."""

    id: str = Field(default_factory=lambda: new_item_id("resp"))
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    store: bool = True
    temperature: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_p: float | None = None
    truncation: Literal["disabled"] = "disabled"
    usage: ResponseUsage | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    user: str | None = None


class ResponseDeleted(BaseModel):
    id: str
    object: Literal["response.deleted"] = "response.deleted"
    deleted: bool = True


# -- the stream's events (each has its `type` and `sequence_number`) ---------------------------------------


class _Event(BaseModel):
    sequence_number: int = 0  # set as it is sent


class ResponseEvent(_Event):
    type: Literal[
        "response.created",
        "response.in_progress",
        "response.completed",
        "response.incomplete",
        "response.failed",
    ]
    response: Response


class OutputItemEvent(_Event):
    type: Literal["response.output_item.added", "response.output_item.done"]
    output_index: int
    item: OutputItem


class ContentPartEvent(_Event):
    type: Literal["response.content_part.added", "response.content_part.done"]
    item_id: str
    output_index: int
    content_index: int = 0
    part: OutputText


class _TextEvent(_Event):
    item_id: str
    output_index: int
    content_index: int = 0
    logprobs: list[Any] = Field(default_factory=list)


class TextDeltaEvent(_TextEvent):
    type: Literal["response.output_text.delta"] = "response.output_text.delta"
    delta: str


class TextDoneEvent(_TextEvent):
    type: Literal["response.output_text.done"] = "response.output_text.done"
    text: str


class ArgumentsDeltaEvent(_Event):
    type: Literal["response.function_call_arguments.delta"] = "response.function_call_arguments.delta"
    item_id: str
    output_index: int
    delta: str


class ArgumentsDoneEvent(_Event):
    type: Literal["response.function_call_arguments.done"] = "response.function_call_arguments.done"
    item_id: str
    output_index: int
    arguments: str


class ErrorEvent(_Event):
    type: Literal["error"] = "error"
    code: str | None = None
    message: str
    param: str | None = None
