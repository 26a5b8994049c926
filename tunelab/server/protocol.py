"""The OpenAI wire format, as pydantic types: what the routes accept and return. Nothing else lives here.

Field names, defaults and shapes follow OpenAI's API reference, so the official `openai` SDK works
unchanged. Parameters tunelab cannot honour (`best_of`, `suffix`) are refused with a 400 that names
them, never silently ignored.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator


class _Request(BaseModel):
    # Unknown fields are ignored, as OpenAI does (SDKs add new ones over time); the known ones are checked.
    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0, le=2)
    top_p: float = Field(1.0, ge=0, le=1, description="0 is greedy, as OpenAI takes it")
    n: int = Field(1, ge=1, le=16)
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=-(2**63), le=2**64 - 1)
    logit_bias: dict[str, float] | None = None  # refused unless empty (unsupported())
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    presence_penalty: float = Field(
        0.0, ge=-2, le=2, description="OpenAI's: minus this from the logit of every token the answer holds"
    )
    frequency_penalty: float = Field(
        0.0, ge=-2, le=2, description="OpenAI's: minus this times how often the answer holds the token"
    )
    repetition_penalty: float = Field(
        1.0,
        gt=0,
        le=10,
        description="vLLM's extra, not OpenAI's: transformers' penalty on prompt and answer tokens",
    )
    user: str | None = None

    def unsupported(self) -> list[str]:
        return ["logit_bias"] if self.logit_bias else []

    @property
    def stops(self) -> tuple[str, ...]:
        return (self.stop,) if isinstance(self.stop, str) else tuple(self.stop or ())

    @property
    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))


class CompletionRequest(_Request):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="a text, texts, token ids (list[int]) or lists of token ids (run as given, no BOS added)"
    )
    # OpenAI's default for /completions; 0 only with echo (scoring the prompt, as lm-eval does)
    max_tokens: int | None = Field(16, ge=0)
    echo: bool = Field(
        False, description="the prompt's text (and with logprobs its tokens') before the answer"
    )
    logprobs: int | None = Field(
        None, ge=0, le=5, description="the answer tokens' logprobs and this many alternatives"
    )
    best_of: int | None = None
    suffix: str | None = None

    def unsupported(self) -> list[str]:
        refused = super().unsupported()
        if self.best_of not in (None, 1):
            refused.append("best_of")
        if self.suffix:
            refused.append("suffix")
        return refused

    @property
    def prompts(self) -> list[str | list[int]]:
        """One entry per prompt: a text or a list of token ids."""
        if isinstance(self.prompt, str) or (self.prompt and isinstance(self.prompt[0], int)):
            return [self.prompt]
        return list(self.prompt)


class ContentPart(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: str
    text: str | None = None


class FunctionCall(BaseModel):
    name: str
    arguments: str = Field(description="the arguments as JSON text")

    @field_validator("arguments")
    @classmethod
    def _json(cls, value: str) -> str:
        try:
            json.loads(value or "{}")
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON: {exc}") from None
        return value


class ToolCallOut(BaseModel):
    """A call in an assistant message (the answer's, or an earlier one in `messages`)."""

    model_config = ConfigDict(extra="ignore")
    id: str = Field(default_factory=lambda: f"call_{uuid.uuid4().hex[:24]}")
    type: Literal["function"] = "function"
    function: FunctionCall


class MessageError(ValueError):
    """A message tunelab cannot read; `param` names the field (`messages[2].content[0].type`)."""

    def __init__(self, message: str, param: str):
        super().__init__(message)
        self.param = param


def plain_conversation(messages: list[ChatMessage]) -> list[dict]:
    """Every message as tunelab.inference reads it; raises MessageError naming the first bad field."""
    return [m.plain(f"messages[{i}]") for i, m in enumerate(messages)]


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[ContentPart] | None = None
    tool_calls: list[ToolCallOut] | None = None  # an assistant's earlier calls
    tool_call_id: str | None = None  # a tool result: the call it answers

    def plain(self, where: str = "messages[0]") -> dict:
        """The message as tunelab.inference reads it; a part that is not text raises MessageError."""
        if isinstance(self.content, list):
            for j, part in enumerate(self.content):
                if part.type != "text":
                    raise MessageError(
                        f"{where}.content[{j}] is a {part.type!r} part; only text parts are supported",
                        param=f"{where}.content[{j}].type",
                    )
            text = "".join(part.text or "" for part in self.content)
        else:
            text = self.content or ""
        plain = {"role": "system" if self.role == "developer" else self.role, "content": text}
        if self.tool_calls:  # tunelab.inference.tools reads this shape
            plain["tool_calls"] = [
                {"id": c.id, "name": c.function.name, "arguments": c.function.arguments}
                for c in self.tool_calls
            ]
        if self.role == "tool":
            plain["tool_call_id"] = self.tool_call_id
        return plain


class FunctionDef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="a JSON schema of an object")
    strict: bool | None = None  # tunelab's calls always match the schema


class ToolDef(BaseModel):
    model_config = ConfigDict(extra="ignore")
    type: Literal["function"]
    function: FunctionDef


class ChatCompletionRequest(_Request):
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = Field(
        False, description="each answer token's logprob (choices[].logprobs.content)"
    )
    top_logprobs: int | None = Field(
        None, ge=0, le=20, description="this many alternatives per token; needs logprobs"
    )
    tools: list[ToolDef] | None = None
    tool_choice: Literal["auto", "none", "required"] | dict[str, Any] | None = None
    parallel_tool_calls: bool | None = None
    response_format: dict[str, Any] | None = None

    @property
    def tool_spec(self):
        """The request's tools as a tunelab.inference.tools.ToolSpec (None without tools); raises
        ToolCallError naming the field."""
        from tunelab.inference.tools import ToolSpec

        tools = [t.model_dump(exclude_none=True) for t in self.tools or []]
        return ToolSpec.from_openai(tools, self.tool_choice, self.parallel_tool_calls)

    @property
    def json_schema(self) -> str | None:
        """The JSON schema (as JSON text) that `response_format` asks the answer to match, as OpenAI:
        `{"type": "json_object"}` (any object) or `{"type": "json_schema", "json_schema": {"name": ...,
        "schema": {...}}}`. Raises TypedOutputError (a ValueError) naming what is wrong."""
        from tunelab.errors import TypedOutputError
        from tunelab.inference.typed import output_spec

        kind = (self.response_format or {}).get("type", "text")
        if kind == "text":
            return None
        if kind == "json_object":
            return '{"type": "object"}'
        if kind != "json_schema":
            raise TypedOutputError(
                f"response_format.type must be 'text', 'json_object' or 'json_schema', got {kind!r}"
            )
        wrapper = self.response_format.get("json_schema")
        if not isinstance(wrapper, dict) or not isinstance(wrapper.get("schema"), dict):
            raise TypedOutputError("response_format.json_schema.schema must be a JSON schema object")
        return output_spec(wrapper["schema"]).schema_json


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0  # of prompt_tokens, those the backend took from its prompt cache


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def now() -> int:
    return int(time.time())


class CompletionLogprobs(BaseModel):
    """OpenAI's legacy shape: one entry per token in each list; `text_offset` counts characters from the
    start of the prompt (so the first answer token's offset is the prompt's length, echo or not)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(BaseModel):
    text: str
    index: int
    logprobs: CompletionLogprobs | None = None
    finish_reason: Literal["stop", "length"] | None


class CompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("cmpl"))
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


class AssistantMessage(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None
    tool_calls: list[ToolCallOut] | None = None


class TopLogprobEntry(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None


class ChatTokenLogprob(TopLogprobEntry):
    top_logprobs: list[TopLogprobEntry]


class ChatLogprobs(BaseModel):
    content: list[ChatTokenLogprob] | None
    refusal: list[ChatTokenLogprob] | None = None


class ChatChoice(BaseModel):
    index: int
    message: AssistantMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"]


class ChatCompletionResponse(BaseModel):
    id: str = Field(default_factory=lambda: new_id("chatcmpl"))
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=now)
    model: str
    choices: list[ChatChoice]
    usage: Usage


class FunctionCallDelta(BaseModel):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(BaseModel):
    """A streamed piece of a call: the first has its id, type and name; the next ones more arguments."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionCallDelta


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: ChatLogprobs | None = None
    finish_reason: Literal["stop", "length", "tool_calls"] | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None


class TokenizeRequest(BaseModel):
    """vLLM's /tokenize: a `prompt` text (no template) or chat `messages` (the model's chat template)."""

    model_config = ConfigDict(extra="ignore")
    model: str | None = Field(None, description="optional when the server has one default model")
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    add_special_tokens: bool = Field(True, description="BOS first, when the model adds one")
    add_generation_prompt: bool = True


class TokenizeResponse(BaseModel):
    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str


class EmbeddingRequest(BaseModel):
    """OpenAI's /v1/embeddings: `input` is a text, a list of texts, token ids, or a list of token-id lists."""

    model_config = ConfigDict(extra="ignore")
    model: str
    input: str | list[str] | list[int] | list[list[int]]
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: int | None = Field(None, ge=1, description="only the model's own size is accepted")
    user: str | None = None

    def items(self) -> list:
        """The inputs one by one: each a text or a list of token ids."""
        if isinstance(self.input, str):
            return [self.input]
        if self.input and all(isinstance(x, int) for x in self.input):
            return [list(self.input)]
        return list(self.input)


class EmbeddingData(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str  # a base64 string with encoding_format="base64"


class EmbeddingUsage(BaseModel):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingData]
    model: str
    usage: EmbeddingUsage


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    error: ErrorDetail


# -- files and fine-tuning jobs (OpenAI's shapes) ---------------------------------------------------


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: str
    status: str = "processed"
    status_details: str | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    has_more: bool = False


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class Hyperparameters(BaseModel):
    """OpenAI's three (each a value or "auto"); tunelab's TrainConfig fields may ride along
    (`method`: "lora" | "full", `lora_rank`, `max_seq_len`, ...)."""

    model_config = ConfigDict(extra="allow")
    n_epochs: int | Literal["auto"] = Field("auto")
    batch_size: int | Literal["auto"] = Field("auto")
    learning_rate_multiplier: float | Literal["auto"] = Field("auto")


class JobMethod(BaseModel):
    model_config = ConfigDict(extra="allow")
    type: Literal["supervised"] = "supervised"
    supervised: dict[str, Any] | None = None


class CreateJobRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: str
    training_file: str
    hyperparameters: Hyperparameters | None = None
    method: JobMethod | None = None
    seed: int | None = None
    suffix: str | None = Field(None, max_length=64, pattern=r"^[A-Za-z0-9_.-]*$")
    validation_file: str | None = None

    def all_hyperparameters(self) -> dict[str, Any]:
        values = self.hyperparameters.model_dump() if self.hyperparameters else {}
        if self.method and self.method.supervised:
            values |= self.method.supervised.get("hyperparameters") or {}
        return values


class JobError(BaseModel):
    code: str
    message: str
    param: str | None = None


class FineTuningJob(BaseModel):
    id: str
    object: Literal["fine_tuning.job"] = "fine_tuning.job"
    created_at: int
    error: JobError | None = None
    fine_tuned_model: str | None = None
    finished_at: int | None = None
    hyperparameters: dict[str, Any]
    model: str
    organization_id: str
    result_files: list[str]
    seed: int
    status: str
    trained_tokens: int | None = None
    training_file: str
    validation_file: str | None = None
    method: dict[str, Any] | None = None


class JobList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FineTuningJob]
    has_more: bool = False


class JobEventObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.event"] = "fine_tuning.job.event"
    created_at: int
    level: str
    message: str
    type: str
    data: dict[str, Any] | None = None


class JobEventList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobEventObject]
    has_more: bool = False


class JobCheckpointObject(BaseModel):
    id: str
    object: Literal["fine_tuning.job.checkpoint"] = "fine_tuning.job.checkpoint"
    created_at: int
    fine_tuned_model_checkpoint: str
    fine_tuning_job_id: str
    metrics: dict[str, Any]
    step_number: int


class JobCheckpointList(BaseModel):
    object: Literal["list"] = "list"
    data: list[JobCheckpointObject]
    has_more: bool = False
    first_id: str | None = None
    last_id: str | None = None
