"""The OpenAI-compatible routes: /v1/models, /v1/completions, /v1/chat/completions (and /health).

Each route translates a request to the Service and its answers back, streamed or whole; what one owner
may not see answers 404, as if it did not exist.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading

from fastapi import APIRouter, Request
from sse_starlette.sse import EventSourceResponse

from tunelab.errors import (
    ConfigError,
    ContextExceeded,
    GenerationOptionError,
    ModelNotServed,
    PromptError,
    ToolCallError,
    TunelabError,
    TypedOutputError,
)
from tunelab.inference.batching import Overloaded
from tunelab.inference.batching import Request as EngineRequest
from tunelab.inference.options import Completion
from tunelab.inference.tools import TRIGGER, ToolSpec, split_answer
from tunelab.server.auth import Owner
from tunelab.server.errors import APIError, model_not_found
from tunelab.server.protocol import (
    AssistantMessage,
    ChatChoice,
    ChatChunkChoice,
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionChoice,
    CompletionRequest,
    CompletionResponse,
    Delta,
    FunctionCall,
    FunctionCallDelta,
    MessageError,
    ModelCard,
    ModelList,
    PromptTokensDetails,
    ToolCallDelta,
    ToolCallOut,
    Usage,
    new_id,
    now,
    plain_conversation,
)
from tunelab.server.service import Service
from tunelab.server.tokens_routes import chat_logprobs, completion_logprobs

log = logging.getLogger("tunelab")

MAX_BODY_BYTES = 4 * 1024 * 1024
MAX_UPLOAD_BYTES = 256 * 1024 * 1024  # POST /v1/files: training data


router = APIRouter()


def _service(request: Request) -> Service:
    return request.app.state.service


@router.get("/health")
def health(request: Request):
    return {"status": "ok", "auth": not _service(request).no_auth}


@router.get("/v1/models")
def list_models(request: Request, who: Owner) -> ModelList:
    visible = _service(request).models_for(who)
    return ModelList(data=[ModelCard(id=n, owned_by=o) for n, o in visible.items()])


@router.get("/v1/models/{model_id:path}")
def get_model(request: Request, model_id: str, who: Owner) -> ModelCard:
    visible = _service(request).models_for(who)
    if model_id not in visible:
        raise model_not_found(model_id)
    return ModelCard(id=model_id, owned_by=visible[model_id])


@router.post("/v1/completions")
async def completions(request: Request, body: CompletionRequest, who: Owner):
    service = _service(request)
    if body.max_tokens == 0 and not body.echo:
        raise APIError(400, "max_tokens may be 0 only with echo (scoring the prompt)", param="max_tokens")
    if body.stream and (body.echo or body.logprobs is not None):
        raise APIError(
            400, "echo and logprobs are not streamed on /v1/completions; ask without stream", param="stream"
        )
    planned = _plan(service, who, body, body.prompts, template="raw")
    if body.stream:
        return EventSourceResponse(_stream_completions(service, body, planned), sep="\n")
    results = await _results(service, planned, request)
    choices = [_completion_choice(body, i, c) for i, c in enumerate(c for group in results for c in group)]
    return CompletionResponse(model=body.model, choices=choices, usage=_usage(results))


def _completion_choice(body: CompletionRequest, index: int, c: Completion) -> CompletionChoice:
    """A choice's text (after the prompt's with echo) and its tokens' logprobs in the legacy shape."""
    logprobs = None
    if body.logprobs is not None:
        entries = ((c.prompt_logprobs or []) if body.echo else []) + (c.logprobs or [])
        logprobs = completion_logprobs(entries, 0 if body.echo else len(c.prompt))
    text = c.prompt + c.text if body.echo else c.text
    return CompletionChoice(text=text, index=index, logprobs=logprobs, finish_reason=_finish(c))


@router.post("/v1/chat/completions")
async def chat(request: Request, body: ChatCompletionRequest, who: Owner):
    service = _service(request)
    planned, tools = plan_chat(service, who, body)
    if body.stream:
        stream = _stream_tool_chat if tools is not None and tools.calls else _stream_chat
        return EventSourceResponse(stream(service, body, planned), sep="\n")
    results = await _results(service, planned, request)
    choices = [
        ChatChoice(
            index=i,
            message=_message(c),
            logprobs=chat_logprobs(c.logprobs) if c.logprobs is not None else None,
            finish_reason=_finish(c),
        )
        for i, c in enumerate(results[0])
    ]
    return ChatCompletionResponse(model=body.model, choices=choices, usage=_usage(results))


def plan_chat(
    service: Service, who: str, body: ChatCompletionRequest
) -> tuple[list[list[EngineRequest]], ToolSpec | None]:
    """A chat request's engine requests (not yet queued) and its tools; raises APIError naming the
    field. /v1/responses plans through here too, with the request translated to a chat one."""
    try:
        conversation = plain_conversation(body.messages)
    except MessageError as exc:
        raise APIError(400, str(exc), param=exc.param) from None
    if body.top_logprobs is not None and not body.logprobs:
        raise APIError(400, "top_logprobs needs logprobs: true", param="top_logprobs")
    try:
        tools = body.tool_spec
    except ToolCallError as exc:
        raise APIError(400, str(exc), param=exc.param) from None
    if tools is not None and tools.calls and (body.response_format or {}).get("type", "text") != "text":
        raise APIError(400, "response_format cannot be combined with tool calls", param="response_format")
    return _plan(service, who, body, [conversation], template="auto", tools=tools), tools


def _plan(
    service: Service, who: str, body, prompts: list, *, template: str, tools: ToolSpec | None = None
) -> list[list[EngineRequest]]:
    refused = body.unsupported()
    if refused:
        raise APIError(
            400,
            f"not supported by tunelab: {', '.join(refused)}",
            param=refused[0],
            code="unsupported_parameter",
        )
    if not prompts or any(isinstance(p, str) and not p for p in prompts):
        raise APIError(400, "prompt must be a non-empty string or list of strings", param="prompt")
    try:
        service.batcher.admit(len(prompts) * body.n)
    except Overloaded as exc:  # before any work, and before a stream starts
        retry = {"Retry-After": str(exc.retry_after_s)}
        raise APIError(429, str(exc), type="server_overloaded", code="server_busy", headers=retry) from None
    options = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "stop": body.stops,
        "seed": body.seed,
        "presence_penalty": body.presence_penalty,
        "frequency_penalty": body.frequency_penalty,
        "repetition_penalty": body.repetition_penalty,
        **_logprob_options(body),
    }
    if isinstance(body, ChatCompletionRequest):
        try:
            options["json_schema"] = body.json_schema
        except TypedOutputError as exc:
            raise APIError(400, str(exc), param="response_format") from None
    try:
        return service.plan(
            who,
            body.model,
            prompts,
            n=body.n,
            max_tokens=body.max_completion_tokens or body.max_tokens,
            template=template,
            options=options,
            tools=tools,
        )
    except ModelNotServed:
        raise model_not_found(body.model) from None
    except ContextExceeded as exc:
        raise APIError(400, str(exc), param="max_tokens", code="context_length_exceeded") from None
    except (PromptError, GenerationOptionError, ConfigError) as exc:
        raise APIError(400, str(exc)) from None
    except TunelabError as exc:
        raise APIError(503, f"the model could not be loaded: {exc}", type="server_error") from None


def _logprob_options(body) -> dict:
    """The engine's logprobs options for a request: chat's logprobs + top_logprobs; completions'
    logprobs k, and with echo the prompt's tokens too (max_tokens 0 with echo: the prompt alone)."""
    if isinstance(body, ChatCompletionRequest):
        return {"logprobs": (body.top_logprobs or 0) if body.logprobs else None}
    options = {"logprobs": body.logprobs}
    if body.echo and (body.logprobs is not None or body.max_tokens == 0):
        options["prompt_logprobs"] = body.logprobs or 0
    return options


def _check(completion: Completion) -> Completion:
    if completion.error:
        raise APIError(400, completion.error)
    return completion


async def _results(
    service: Service, planned: list[list[EngineRequest]], client: Request | None = None
) -> list[list[Completion]]:
    """The finished answers of a non-streamed call. When the `client` leaves before they are done (its
    own timeout, a closed connection), its sequences stop at their next token instead of running on."""
    left = threading.Event()
    for group in planned:
        for r in group:
            r.abandoned = left.is_set
    service.submit(planned)
    watcher = asyncio.create_task(_watch_for_leaving(client, left)) if client is not None else None
    try:
        return [[_check(await asyncio.wrap_future(r.future)) for r in group] for group in planned]
    except TypedOutputError as exc:  # a response_format schema the backend cannot compile
        raise APIError(400, str(exc), param="response_format") from None
    except ConfigError as exc:  # asked of a backend that cannot do it (logprobs from a remote model)
        raise APIError(400, str(exc)) from None
    except TunelabError as exc:
        raise APIError(503, str(exc), type="server_error") from None
    finally:
        if watcher is not None:
            watcher.cancel()


async def _watch_for_leaving(client: Request, left: threading.Event) -> None:
    while not await client.is_disconnected():
        await asyncio.sleep(0.25)
    left.set()


def _finish(completion: Completion) -> str:
    if completion.finish_reason == "length":
        return "length"
    return "tool_calls" if completion.tool_calls else "stop"


def _message(completion: Completion) -> AssistantMessage:
    """The answer's message: its text, or its tool calls (with the text before them, if any)."""
    if completion.tool_calls is None:
        return AssistantMessage(content=completion.text)
    calls = [
        ToolCallOut(function=FunctionCall(name=c.name, arguments=c.arguments)) for c in completion.tool_calls
    ]
    return AssistantMessage(
        content=completion.text if completion.text.strip() else None, tool_calls=calls or None
    )


def _usage(results: list[list[Completion]]) -> Usage:
    prompt = sum(group[0].prompt_tokens for group in results if group)
    completion = sum(c.completion_tokens for group in results for c in group)
    cached = sum(group[0].cached_tokens for group in results if group)
    return Usage(
        prompt_tokens=prompt,
        completion_tokens=completion,
        total_tokens=prompt + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=cached),
    )


def _finished_usage(planned: list[list[EngineRequest]]) -> Usage:
    """The usage of a finished stream: as `_usage`, each prompt counted once however many choices (n)."""
    return _usage([[r.future.result() for r in group] for group in planned])


async def _deltas(service: Service, planned: list[list[EngineRequest]]):
    """Yield (choice index, new text, finished Completion or None) as answers grow."""
    loop = asyncio.get_running_loop()
    updates: asyncio.Queue = asyncio.Queue()
    flat = [r for group in planned for r in group]
    listening = True

    def push(item) -> bool:
        try:
            loop.call_soon_threadsafe(updates.put_nowait, item)
        except RuntimeError:  # the event loop is gone (server stopping)
            return False
        return listening

    for k, request in enumerate(flat):
        request.on_text = lambda text, k=k: push((k, text))
        request.future.add_done_callback(lambda _, k=k: push((k, None)))
    # hold back what could be the start of a stop string, and a half-decoded character
    holdback = max((len(s) for r in flat for s in r.options.stop), default=1)
    service.submit(planned)
    sent = [""] * len(flat)
    left = len(flat)
    try:
        while left:
            k, text = await updates.get()
            if text is None:
                left -= 1
                completion = flat[k].future.result()
                tail = completion.text[len(sent[k]) :] if completion.text.startswith(sent[k]) else ""
                yield k, tail, completion
                continue
            safe = text[: max(0, len(text) - holdback)].rstrip("\ufffd")
            if len(safe) > len(sent[k]) and safe.startswith(sent[k]):
                yield k, safe[len(sent[k]) :], None
                sent[k] = safe
    finally:
        listening = False  # a client that went away: the backend may stop its sequences


async def _stream_completions(service: Service, body: CompletionRequest, planned):
    ident, created = new_id("cmpl"), now()
    try:
        async for k, text, done in _deltas(service, planned):
            if done is not None:
                _check(done)
            choice = CompletionChoice(text=text, index=k, finish_reason=_finish(done) if done else None)
            chunk = CompletionResponse(id=ident, created=created, model=body.model, choices=[choice])
            yield chunk.model_dump_json(exclude_none=False)
        if body.include_usage:
            usage = _finished_usage(planned)
            yield CompletionResponse(
                id=ident, created=created, model=body.model, choices=[], usage=usage
            ).model_dump_json()
    except (APIError, TunelabError) as exc:
        yield json.dumps(
            {"error": {"message": str(exc), "type": "server_error", "param": None, "code": None}}
        )
    yield "[DONE]"


def _chat_chunks(body: ChatCompletionRequest):
    """The serialiser of one chat stream's chunks: its id, creation time and model on each."""
    ident, created = new_id("chatcmpl"), now()

    def chunk(choices, usage=None) -> str:
        return ChatCompletionChunk(
            id=ident, created=created, model=body.model, choices=choices, usage=usage
        ).model_dump_json(exclude_none=True)

    return chunk


async def _stream_chat(service: Service, body: ChatCompletionRequest, planned):
    chunk = _chat_chunks(body)

    try:
        for k in range(body.n):
            yield chunk([ChatChunkChoice(index=k, delta=Delta(role="assistant", content=""))])
        async for k, text, done in _deltas(service, planned):
            if done is not None:
                _check(done)
            if done is not None and done.logprobs is not None:  # the choice's entries, before it ends
                logprobs = chat_logprobs(done.logprobs)
                yield chunk([ChatChunkChoice(index=k, delta=Delta(content=text), logprobs=logprobs)])
            elif text:
                yield chunk([ChatChunkChoice(index=k, delta=Delta(content=text))])
            if done is not None:
                yield chunk([ChatChunkChoice(index=k, delta=Delta(), finish_reason=_finish(done))])
        if body.include_usage:
            yield chunk([], _finished_usage(planned))
    except (APIError, TunelabError) as exc:
        yield json.dumps(
            {"error": {"message": str(exc), "type": "server_error", "param": None, "code": None}}
        )
    yield "[DONE]"


class _CallStream:
    """What one choice of a tool stream has sent; `update` gives the deltas that bring it up to date: new
    content, then each call as OpenAI streams it (its id, type and name, then its arguments piece by
    piece as written)."""

    def __init__(self) -> None:
        self.content = ""
        self.calls: list[tuple[str, str]] = []  # (id, arguments sent)

    def update(self, content: str, calls) -> list[Delta]:
        deltas = []
        if content.startswith(self.content) and len(content) > len(self.content):
            deltas.append(Delta(content=content[len(self.content) :]))
            self.content = content
        for j, call in enumerate(calls or []):
            if j == len(self.calls):
                call_id = ToolCallOut(function=FunctionCall(name=call.name, arguments="{}")).id
                self.calls.append((call_id, ""))
                named = FunctionCallDelta(name=call.name, arguments="")
                deltas.append(
                    Delta(tool_calls=[ToolCallDelta(index=j, id=call_id, type="function", function=named)])
                )
            call_id, sent = self.calls[j]
            if call.arguments.startswith(sent) and len(call.arguments) > len(sent):
                more = FunctionCallDelta(arguments=call.arguments[len(sent) :])
                deltas.append(Delta(tool_calls=[ToolCallDelta(index=j, function=more)]))
                self.calls[j] = (call_id, call.arguments)
        return deltas


async def _stream_tool_chat(service: Service, body: ChatCompletionRequest, planned):
    """A chat stream whose answers may be tool calls: the text before the call marker as content
    (held back while it could be the marker's start, and blank text before it), then the calls."""
    chunk = _chat_chunks(body)

    try:
        for k in range(body.n):
            yield chunk([ChatChunkChoice(index=k, delta=Delta(role="assistant", content=""))])
        async for k, deltas, done in call_deltas(service, planned, body.n):
            for delta in deltas:
                yield chunk([ChatChunkChoice(index=k, delta=delta)])
            if done is not None:
                yield chunk([ChatChunkChoice(index=k, delta=Delta(), finish_reason=_finish(done))])
        if body.include_usage:
            yield chunk([], _finished_usage(planned))
    except (APIError, TunelabError) as exc:
        yield json.dumps(
            {"error": {"message": str(exc), "type": "server_error", "param": None, "code": None}}
        )
    yield "[DONE]"


async def call_deltas(service: Service, planned, n: int):
    """Yield (choice index, deltas, finished Completion or None) of answers that may be tool calls: the
    text before the call marker as content (held back while it could be the marker's start, and blank
    text before it), then each call as `_CallStream` streams it; a call's id is on its first delta."""
    raw = [""] * n
    streams = [_CallStream() for _ in range(n)]
    async for k, text, done in _deltas(service, planned):
        if done is None:
            raw[k] += text
            content, calls = split_answer(raw[k])
            content = _before_marker(content) if calls is None else content
            yield k, streams[k].update(content.rstrip(), calls), None
        else:
            _check(done)
            final = done.text if done.tool_calls is None or done.text.strip() else ""
            yield k, streams[k].update(final, done.tool_calls), done


def _before_marker(text: str) -> str:
    """`text` without an ending that is the start of the call marker."""
    for cut in range(min(len(TRIGGER), len(text)), 0, -1):
        if TRIGGER.startswith(text[-cut:]):
            return text[:-cut]
    return text
