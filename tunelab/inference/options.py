"""Generation options and the Completion record: the types every backend speaks."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Literal

from tunelab.errors import GenerationOptionError
from tunelab.inference.logprobs import MAX_TOP_LOGPROBS, TokenLogprob

FinishReason = Literal["stop", "length", "error"]

# Large enough that ordinary answers (a step-by-step list, a paragraph) are not cut;
# the lesson's truncated answers are reproduced by asking for fewer tokens.
DEFAULT_MAX_NEW_TOKENS = 512


@dataclass(frozen=True)
class GenerationOptions:
    """How to sample. Greedy (temperature 0, or top_p 0 as OpenAI takes it) by default, so the same call
    gives the same text.

    Penalties, applied to the logits before temperature, top_k and top_p, in this order:
    - `repetition_penalty` (transformers' / CTRL's): every token already in the prompt or the answer has
      its logit divided by it (multiplied when negative); 1.0 is off.
    - `presence_penalty` and `frequency_penalty` (OpenAI's, -2..2): a token the answer already holds
      c times loses `c * frequency_penalty + presence_penalty` from its logit; the prompt does not count.

    >>> GenerationOptions(presence_penalty=0.5, frequency_penalty=0.2).penalized
    True
    """

    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    repetition_penalty: float = 1.0
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    # Typed output: a JSON schema (as JSON text, so options stay hashable) the answer must match;
    # the backend constrains decoding to it (tunelab.inference.typed turns an output_type into one).
    json_schema: str | None = None
    # With json_schema: the constraint starts once the answer has written this marker, and holds for
    # what follows it; the text before it is free (tool_choice "auto": text, or the marker and a call,
    # in one pass). Only a backend whose `lazy_json` is true honours it (tools asks the others twice).
    json_after: str | None = None
    # Log-probabilities (tunelab.inference.logprobs): `logprobs` k fills each answer token's logprob and
    # its k most likely alternatives; `prompt_logprobs` k the same for the prompt's tokens (OpenAI's
    # `echo`). None: not computed. With prompt_logprobs, max_new_tokens may be 0 (scoring only).
    logprobs: int | None = None
    prompt_logprobs: int | None = None

    def __post_init__(self) -> None:
        least = 0 if self.prompt_logprobs is not None else 1
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < least:
            raise GenerationOptionError(
                f"max_new_tokens must be a positive integer (0 only when scoring the prompt), "
                f"got {self.max_new_tokens!r}"
            )
        for name in ("logprobs", "prompt_logprobs"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or not 0 <= value <= MAX_TOP_LOGPROBS):
                raise GenerationOptionError(
                    f"{name} must be an integer in [0, {MAX_TOP_LOGPROBS}], got {value!r}"
                )
        if self.temperature < 0:
            raise GenerationOptionError(f"temperature must be >= 0, got {self.temperature!r}")
        if not 0 <= self.top_p <= 1:
            raise GenerationOptionError(f"top_p must be in [0, 1] (0 means greedy), got {self.top_p!r}")
        if self.top_k < 0:
            raise GenerationOptionError(f"top_k must be >= 0 (0 means off), got {self.top_k!r}")
        if self.repetition_penalty <= 0:
            raise GenerationOptionError(f"repetition_penalty must be > 0, got {self.repetition_penalty!r}")
        for name in ("presence_penalty", "frequency_penalty"):
            if not -2 <= getattr(self, name) <= 2:
                raise GenerationOptionError(f"{name} must be in [-2, 2], got {getattr(self, name)!r}")
        if self.json_after is not None and (self.json_schema is None or not self.json_after):
            raise GenerationOptionError("json_after needs a json_schema and a non-empty marker")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise GenerationOptionError(f"stop must be a list of non-empty strings, got {list(self.stop)!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0.0 or self.top_p == 0.0

    @property
    def penalized(self) -> bool:
        """Whether any penalty changes the logits (then greedy is not a plain argmax of the model's)."""
        return self.repetition_penalty != 1.0 or self.presence_penalty != 0.0 or self.frequency_penalty != 0.0

    @classmethod
    def from_kwargs(cls, base: GenerationOptions | None = None, **kwargs: Any) -> GenerationOptions:
        """Merge user options over `base`. Accepts Lamini's `max_tokens` for `max_new_tokens`."""
        if "max_tokens" in kwargs:
            value = kwargs.pop("max_tokens")
            if "max_new_tokens" in kwargs and kwargs["max_new_tokens"] != value:
                raise GenerationOptionError("give max_new_tokens or max_tokens, not both")
            kwargs["max_new_tokens"] = value
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(kwargs) - known)
        if unknown:
            raise GenerationOptionError(
                f"unknown generation option(s) {unknown}; known: {sorted(known | {'max_tokens'})}"
            )
        if "stop" in kwargs:
            stop = kwargs["stop"]
            kwargs["stop"] = (stop,) if isinstance(stop, str) else tuple(stop or ())
        values = {k: v for k, v in kwargs.items() if v is not None or k == "seed"}
        return dataclasses.replace(base or cls(), **values)


@dataclass
class BackendOutput:
    """What a backend returns for one already-templated prompt."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    error: str | None = None
    logprobs: list[TokenLogprob] | None = None  # the answer's tokens, when options.logprobs is set
    prompt_logprobs: list[TokenLogprob] | None = None  # the prompt's, when options.prompt_logprobs is set
    # prompt tokens taken from the backend's prompt cache instead of decoded: how, not what, so two
    # outputs with the same answer compare equal whatever their cache held
    cached_tokens: int = field(default=0, compare=False)


@dataclass
class Completion:
    """One answer, with how it was made. `finish_reason == "length"` means the token limit cut it."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    model: str
    template: str
    backend: str
    prompt: str
    latency_s: float = 0.0
    tokens_per_s: float = 0.0
    error: str | None = None
    max_new_tokens: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    # typed output: the validated object (a pydantic instance or a dict), when output_type was given
    parsed: Any = None
    # generate(..., logprobs=k): each answer token with its log-probability and k alternatives
    logprobs: list[TokenLogprob] | None = None
    # prompt_logprobs=k: the prompt's tokens the same way (the first one's logprob is None)
    prompt_logprobs: list[TokenLogprob] | None = None
    # tools=: the calls the model made (tunelab.inference.tools.ToolCall), None when it answered in text
    tool_calls: list[Any] | None = None
    # of prompt_tokens, how many the backend took from its prompt cache instead of decoding them
    cached_tokens: int = 0

    @property
    def truncated(self) -> bool:
        return self.finish_reason == "length"

    def __str__(self) -> str:
        return self.text


def cut_at_stop(text: str, stops: tuple[str, ...] | list[str]) -> tuple[str, bool]:
    """Cut `text` before the earliest stop string. Returns (text, whether a stop string was hit)."""
    cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
    if cut < 0:
        return text, False
    return text[:cut], True
