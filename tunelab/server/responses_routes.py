"""OpenAI's Responses API: `POST /v1/responses` (whole or streamed), `GET` and `DELETE
/v1/responses/{id}`.

A request is translated into the chat request that /v1/chat/completions would get
(`ResponsesRequest.chat_request`) and planned, run and streamed by the chat route's own machinery; this
module only turns the answer into output items and events. Stored responses (`store`, the default) keep
the conversation, so `previous_response_id` continues it; they belong to the key's owner, and another
owner's id is a 404 like an unknown one.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

from fastapi import APIRouter, Request
from pydantic import TypeAdapter
from sse_starlette.sse import EventSourceResponse
from starlette.concurrency import run_in_threadpool

from tunelab.errors import TunelabError
from tunelab.inference.options import Completion
from tunelab.server.auth import Owner
from tunelab.server.errors import APIError
from tunelab.server.openai_routes import _check, _deltas, _message, _results, call_deltas, plan_chat
from tunelab.server.protocol import Delta, now
from tunelab.server.responses_protocol import (
    ArgumentsDeltaEvent,
    ArgumentsDoneEvent,
    ContentPartEvent,
    ErrorEvent,
    FieldError,
    IncompleteDetails,
    InputItem,
    InputTokensDetails,
    OutputFunctionCall,
    OutputItem,
    OutputItemEvent,
    OutputMessage,
    OutputText,
    Response,
    ResponseDeleted,
    ResponseError,
    ResponseEvent,
    ResponsesRequest,
    ResponseUsage,
    TextDeltaEvent,
    TextDoneEvent,
    new_item_id,
)
from tunelab.server.service import Service
from tunelab.store.records import ResponseRecord

router = APIRouter()

_ITEMS = TypeAdapter(list[InputItem])


def _service(request: Request) -> Service:
    return request.app.state.service


def _not_found(response_id: str, param: str | None = None) -> APIError:
    """One answer for an unknown id and another owner's: ids do not leak."""
    return APIError(
        404, f"Response with id '{response_id}' not found.", param=param, code="response_not_found"
    )


@router.post("/v1/responses")
async def create_response(request: Request, body: ResponsesRequest, who: Owner):
    service = _service(request)
    refused = body.refused()
    if refused is not None:
        raise APIError(400, refused[1], param=refused[0], code="unsupported_parameter")
    history = _history(service, who, body)
    with _as_responses_fields():
        try:
            chat = body.chat_request(history)
        except FieldError as exc:
            raise APIError(400, str(exc), param=exc.param) from None
        planned, tools = plan_chat(service, who, chat)
    draft = _draft(service, body)
    kept = [*history, *body.items()]
    if body.stream:
        calls = tools is not None and tools.calls
        events = _events(service, who, draft, kept, planned, calls)
        return EventSourceResponse(events, sep="\n")
    with _as_responses_fields():
        completion = (await _results(service, planned, request))[0][0]
    response = _finished(draft, completion)
    await run_in_threadpool(_keep, service, who, response, kept)
    return response


@router.get("/v1/responses/{response_id}")
def get_response(request: Request, response_id: str, who: Owner) -> Response:
    store = _service(request).store
    record = store.get_response(who, response_id) if store is not None else None
    if record is None:
        raise _not_found(response_id)
    return Response.model_validate(record.response)


@router.delete("/v1/responses/{response_id}")
def delete_response(request: Request, response_id: str, who: Owner) -> ResponseDeleted:
    store = _service(request).store
    if store is None or not store.delete_response(who, response_id):
        raise _not_found(response_id)
    return ResponseDeleted(id=response_id)


def _history(service: Service, who: str, body: ResponsesRequest) -> list:
    """The items of the conversation `previous_response_id` continues: its input and its output."""
    if body.previous_response_id is None:
        return []
    if service.store is None:
        raise APIError(
            400, "this server keeps no responses (it runs without a store)", param="previous_response_id"
        )
    record = service.store.get_response(who, body.previous_response_id)
    if record is None:
        raise _not_found(body.previous_response_id, "previous_response_id")
    return _ITEMS.validate_python([*record.history, *record.response["output"]])


# The chat route's field names, as a Responses request spells them
_RENAMED = [
    (re.compile(r"^response_format\b"), "text.format"),
    (re.compile(r"^max_tokens$"), "max_output_tokens"),
    (re.compile(r"^messages\b"), "input"),
    (re.compile(r"^(tools\[\d+\])\.function\."), r"\1."),
]


@contextmanager
def _as_responses_fields() -> Iterator[None]:
    """The chat machinery's 400s, naming the Responses request's fields (text.format, not
    response_format; tools[0].name, not tools[0].function.name)."""
    try:
        yield
    except APIError as exc:
        detail = exc.detail
        for pattern, name in _RENAMED:
            detail.param = pattern.sub(name, detail.param) if detail.param else None
        detail.message = detail.message.replace("response_format", "text.format")
        raise


def _draft(service: Service, body: ResponsesRequest) -> Response:
    """The Response as asked, before its answer (status in_progress): what the stream starts with."""
    return Response(
        created_at=now(),
        status="in_progress",
        instructions=body.instructions,
        max_output_tokens=body.max_output_tokens,
        model=body.model,
        parallel_tool_calls=body.parallel_tool_calls is not False,
        previous_response_id=body.previous_response_id,
        store=body.store is not False and service.store is not None,
        temperature=1.0 if body.temperature is None else body.temperature,  # the defaults, as OpenAI echoes
        text=(
            body.text.model_dump(by_alias=True, exclude_none=True)
            if body.text
            else {"format": {"type": "text"}}
        ),
        tool_choice=body.tool_choice or "auto",
        tools=[t.model_dump(exclude_none=True) for t in body.tools or ()],
        top_p=1.0 if body.top_p is None else body.top_p,
        metadata=body.metadata or {},
        user=body.user,
    )


def _finished(
    draft: Response, completion: Completion, message_id: str | None = None, call_ids: list[str] | None = None
) -> Response:
    """The draft with its answer: a message (unless the answer is calls alone) and a function_call item
    per call; `message_id` and `call_ids`: the ids a stream already gave them."""
    message = _message(completion)
    incomplete = completion.finish_reason == "length"
    output: list[OutputItem] = []
    if message.content is not None or not message.tool_calls:
        output.append(
            OutputMessage(
                id=message_id or new_item_id("msg"),
                status="incomplete" if incomplete else "completed",
                content=[OutputText(text=message.content or "")],
            )
        )
    for j, call in enumerate(message.tool_calls or ()):
        call_id = call_ids[j] if call_ids is not None else call.id
        output.append(
            OutputFunctionCall(
                id=_call_item_id(call_id),
                call_id=call_id,
                name=call.function.name,
                arguments=call.function.arguments,
            )
        )
    usage = ResponseUsage(
        input_tokens=completion.prompt_tokens,
        input_tokens_details=InputTokensDetails(cached_tokens=completion.cached_tokens),
        output_tokens=completion.completion_tokens,
        total_tokens=completion.prompt_tokens + completion.completion_tokens,
    )
    return draft.model_copy(
        update={
            "status": "incomplete" if incomplete else "completed",
            "incomplete_details": IncompleteDetails() if incomplete else None,
            "output": output,
            "usage": usage,
        }
    )


def _call_item_id(call_id: str) -> str:
    return "fc_" + call_id.removeprefix("call_")


def _keep(service: Service, who: str, response: Response, items: list) -> None:
    """Store the response with the items it answered (for GET and previous_response_id)."""
    if not response.store:
        return
    history = [item.model_dump(by_alias=True, exclude_none=True) for item in items]
    service.store.add_response(
        ResponseRecord(
            id=response.id,
            owner=who,
            model=response.model,
            history=history,
            response=response.model_dump(mode="json"),
            created_at=datetime.fromtimestamp(response.created_at, timezone.utc),
        )
    )


async def _events(service: Service, who: str, draft: Response, kept: list, planned, calls: bool):
    """The Responses stream: created and in_progress, then each output item as it is written (a message's
    text deltas; a call's arguments deltas), each item's done events, and completed (or incomplete:
    the answer hit max_output_tokens), with the whole Response."""
    stream = _EventStream()
    yield stream.send(ResponseEvent(type="response.created", response=draft))
    yield stream.send(ResponseEvent(type="response.in_progress", response=draft))
    try:
        async for _, deltas, done in _answer_deltas(service, planned, calls):
            for delta in deltas:
                for event in stream.opened(delta):
                    yield stream.send(event)
            if done is not None:
                final = _finished(draft, done, stream.message_id, [c for c, _ in stream.calls])
                for event in stream.closed(final.output):
                    yield stream.send(event)
                await run_in_threadpool(_keep, service, who, final, kept)
                kind = "response.completed" if final.status == "completed" else "response.incomplete"
                yield stream.send(ResponseEvent(type=kind, response=final))
    except (APIError, TunelabError) as exc:
        message = exc.detail.message if isinstance(exc, APIError) else str(exc)
        yield stream.send(ErrorEvent(code="server_error", message=message))
        failed = draft.model_copy(
            update={"status": "failed", "error": ResponseError(code="server_error", message=message)}
        )
        yield stream.send(ResponseEvent(type="response.failed", response=failed))


async def _answer_deltas(service: Service, planned, calls: bool):
    """The chat stream's deltas: with tools, as the tool-call chat stream makes them; else text."""
    if calls:
        async for update in call_deltas(service, planned, 1):
            yield update
        return
    async for k, text, done in _deltas(service, planned):
        if done is not None:
            _check(done)
        yield k, [Delta(content=text)] if text else [], done


class _EventStream:
    """What one Responses stream has opened: its output items in order, the message's id and text so
    far, and each call's (call id, item index); numbers the events as they are sent."""

    def __init__(self) -> None:
        self.sequence = 0
        self.opened_items = 0
        self.message_id: str | None = None
        self.message_index = -1
        self.text = ""
        self.calls: list[tuple[str, int]] = []

    def send(self, event) -> dict:
        """The event as OpenAI sends it: an `event:` line with its type, and the JSON."""
        event.sequence_number = self.sequence
        self.sequence += 1
        return {"event": event.type, "data": event.model_dump_json()}

    def opened(self, delta: Delta) -> list:
        """The events of one chat delta: the item it opens, if any, and its text or arguments."""
        events = []
        if delta.content:
            if self.message_id is None:
                self.message_id, self.message_index = new_item_id("msg"), self.opened_items
                self.opened_items += 1
                item = OutputMessage(id=self.message_id, status="in_progress")
                events += self._added(self.message_index, item)
            self.text += delta.content
            events.append(
                TextDeltaEvent(item_id=self.message_id, output_index=self.message_index, delta=delta.content)
            )
        for piece in delta.tool_calls or ():
            if piece.id is not None:
                self.calls.append((piece.id, self.opened_items))
                self.opened_items += 1
                item = OutputFunctionCall(
                    id=_call_item_id(piece.id),
                    call_id=piece.id,
                    name=piece.function.name or "",
                    arguments="",
                    status="in_progress",
                )
                events += self._added(self.calls[-1][1], item)
            if piece.function.arguments:
                call_id, index = self.calls[piece.index]
                events.append(
                    ArgumentsDeltaEvent(
                        item_id=_call_item_id(call_id), output_index=index, delta=piece.function.arguments
                    )
                )
        return events

    def _added(self, index: int, item: OutputItem) -> list:
        events = [OutputItemEvent(type="response.output_item.added", output_index=index, item=item)]
        if isinstance(item, OutputMessage):
            part = OutputText(text="")
            events.append(
                ContentPartEvent(
                    type="response.content_part.added", item_id=item.id, output_index=index, part=part
                )
            )
        return events

    def closed(self, output: list[OutputItem]) -> list:
        """The done events of every final item (an item never opened, an empty message, opens first)."""
        events = []
        for index, item in enumerate(output):
            if index >= self.opened_items:
                events += self._added(index, item.model_copy(update={"status": "in_progress"}))
            if isinstance(item, OutputMessage):
                text = item.content[0].text
                events.append(TextDoneEvent(item_id=item.id, output_index=index, text=text))
                events.append(
                    ContentPartEvent(
                        type="response.content_part.done",
                        item_id=item.id,
                        output_index=index,
                        part=item.content[0],
                    )
                )
            else:
                events.append(
                    ArgumentsDoneEvent(item_id=item.id, output_index=index, arguments=item.arguments)
                )
            events.append(OutputItemEvent(type="response.output_item.done", output_index=index, item=item))
        return events
