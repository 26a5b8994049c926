"""Tokens and vectors over HTTP: vLLM's /tokenize, /detokenize and /tokenizer_info (what lm-eval's
`tokenizer_backend=remote` calls, so it needs no tokenizer files of its own), OpenAI's /v1/embeddings,
and the logprobs records of the engine in OpenAI's two shapes (legacy completions, chat).

lm-eval sends no `model` to these routes: the server's default model answers then (the first
`tunelab serve --model`), and a server without one says to name the model.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from tunelab.errors import ConfigError, ModelNotFoundError, ModelNotServed, PromptError, TunelabError
from tunelab.inference.embeddings import as_base64
from tunelab.inference.logprobs import TokenLogprob
from tunelab.models.resolve import ResolvedModel
from tunelab.server.auth import Owner
from tunelab.server.errors import APIError, model_not_found
from tunelab.server.protocol import (
    ChatLogprobs,
    ChatTokenLogprob,
    CompletionLogprobs,
    DetokenizeRequest,
    DetokenizeResponse,
    EmbeddingData,
    EmbeddingRequest,
    EmbeddingResponse,
    EmbeddingUsage,
    MessageError,
    TokenizeRequest,
    TokenizeResponse,
    TopLogprobEntry,
    plain_conversation,
)
from tunelab.server.service import Service

router = APIRouter()


def _model(request: Request, who: str, name: str | None) -> ResolvedModel:
    service: Service = request.app.state.service
    if name is None:
        if not service.extra_models:
            raise APIError(
                400,
                "model is required: this server has no default model (start it with `tunelab serve "
                "--model NAME` to give one)",
                param="model",
            )
        name = service.extra_models[0]
    try:
        return service.resolve_for(who, name)
    except (ModelNotServed, ModelNotFoundError):
        raise model_not_found(name) from None


def _call(request: Request, method: str, *args, **kwargs):
    """An engine call with the server's backend and device; engine errors as OpenAI-shaped ones."""
    service: Service = request.app.state.service
    try:
        return getattr(service.engine, method)(
            *args, backend=service.backend, device=service.device, **kwargs
        )
    except (PromptError, ConfigError) as exc:
        raise APIError(400, str(exc)) from None
    except TunelabError as exc:
        raise APIError(503, f"the model could not be loaded: {exc}", type="server_error") from None


@router.post("/tokenize")
def tokenize(request: Request, body: TokenizeRequest, who: Owner) -> TokenizeResponse:
    if (body.prompt is None) == (body.messages is None):
        raise APIError(
            400, "give either prompt (a text) or messages (a chat), not both or neither", param="prompt"
        )
    model = _model(request, who, body.model)
    if body.messages is not None:
        try:
            conversation = plain_conversation(body.messages)
        except MessageError as exc:
            raise APIError(400, str(exc), param=exc.param) from None
        prompt, template = conversation, "auto"
    else:
        prompt, template = body.prompt, "raw"
    if prompt == "":
        return TokenizeResponse(count=0, max_model_len=_context(request, model), tokens=[])
    ids = _call(
        request, "tokenize", model, prompt, template=template, add_special_tokens=body.add_special_tokens
    )
    return TokenizeResponse(count=len(ids), max_model_len=_context(request, model), tokens=ids)


@router.post("/detokenize")
def detokenize(request: Request, body: DetokenizeRequest, who: Owner) -> DetokenizeResponse:
    model = _model(request, who, body.model)
    return DetokenizeResponse(prompt=_call(request, "detokenize", model, body.tokens))


@router.get("/tokenizer_info")
def tokenizer_info(request: Request, who: Owner, model: str | None = None) -> dict:
    """The special tokens and chat template of the model (vLLM's route; lm-eval reads eos_token,
    bos_token and chat_template)."""
    resolved = _model(request, who, model)
    backend = _call(request, "load", resolved)
    return {
        "model": resolved.name,
        "tokenizer_class": type(backend).__name__,
        "bos_token": backend.bos_token or None,
        "eos_token": backend.eos_token or None,
        "pad_token": None,
        "add_bos_token": backend.add_bos,
        "chat_template": backend.chat_template,
        "model_max_length": backend.context_length,
    }


@router.post("/v1/embeddings")
def embeddings(request: Request, body: EmbeddingRequest, who: Owner) -> EmbeddingResponse:
    """Each input as a unit-length vector: the mean of the model's last hidden states
    (tunelab.inference.embeddings; docs/serving.md)."""
    model = _model(request, who, body.model)
    items = body.items()
    if not items:
        raise APIError(400, "input is empty: give a text, a list of texts or token ids", param="input")
    for i, item in enumerate(items):
        if isinstance(item, list) and not all(isinstance(t, int) for t in item):
            raise APIError(400, f"input[{i}] mixes token ids with other values", param="input")
    vectors = _call(request, "embed", model, items)
    size = len(vectors[0].vector)
    if body.dimensions is not None and body.dimensions != size:
        raise APIError(
            400,
            f"dimensions={body.dimensions} is not supported: {model.name} gives vectors of {size} "
            "dimensions only (leave dimensions out)",
            param="dimensions",
        )
    encode = as_base64 if body.encoding_format == "base64" else (lambda v: v.tolist())
    tokens = sum(v.tokens for v in vectors)
    return EmbeddingResponse(
        data=[EmbeddingData(index=i, embedding=encode(v.vector)) for i, v in enumerate(vectors)],
        model=body.model,
        usage=EmbeddingUsage(prompt_tokens=tokens, total_tokens=tokens),
    )


def _context(request: Request, model: ResolvedModel) -> int:
    return _call(request, "load", model).context_length


# -- logprobs in OpenAI's shapes -------------------------------------------------------------------------


def completion_logprobs(entries: list[TokenLogprob], start_offset: int) -> CompletionLogprobs:
    """The legacy /v1/completions shape; offsets count characters from `start_offset`."""
    offsets, at = [], start_offset
    for e in entries:
        offsets.append(at)
        at += len(e.text)
    return CompletionLogprobs(
        tokens=[e.text for e in entries],
        token_logprobs=[e.logprob for e in entries],
        top_logprobs=[None if e.logprob is None else {t.text: t.logprob for t in e.top} for e in entries],
        text_offset=offsets,
    )


def chat_logprobs(entries: list[TokenLogprob]) -> ChatLogprobs:
    """The chat shape: `content`, one entry per answer token, each with its `top_logprobs`."""
    return ChatLogprobs(
        content=[
            ChatTokenLogprob(
                token=e.text,
                logprob=e.logprob,
                bytes=list(e.bytes),
                top_logprobs=[
                    TopLogprobEntry(token=t.text, logprob=t.logprob, bytes=list(t.bytes)) for t in e.top
                ],
            )
            for e in entries
        ]
    )
