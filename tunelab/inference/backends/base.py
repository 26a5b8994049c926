"""The one interface every inference backend implements."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

from tunelab.inference.options import BackendOutput, GenerationOptions

# on_text(i, text_so_far): prompt i's answer so far; returning False asks the backend to stop it.
OnText = Callable[[int, str], "bool | None"]


@runtime_checkable
class Backend(Protocol):
    """A loaded model that turns already-templated prompt texts into answers, as one batch.

    Contract:
    - `generate(prompts, options)` answers every prompt in order, as a real batch (never a
      Python loop of single-prompt generations), and returns one `BackendOutput` each.
    - The backend adds the model's BOS token itself when the model wants one; prompt texts
      never carry it.
    - Generation stops at an end-of-generation token of the model (finish_reason "stop"),
      at any of `options.stop` (the stop string is not part of the text; "stop"), or after
      `options.max_new_tokens` tokens ("length").
    - A prompt that does not fit the context (prompt tokens + 1 > context_length) gets a
      BackendOutput with finish_reason "error" and an `error` message; the others are answered.
    - Greedy when options.temperature == 0; sampling is seeded by options.seed.
    - `on_text`, when given, is called with (prompt index, answer text so far) as the answer grows,
      for streaming; the final BackendOutput text is what counts (stop strings cut there).
    """

    name: str  # "transformers" | "llama_cpp" | "remote"
    context_length: int
    chat_template: str | None  # the model's own Jinja chat template, if it has one
    bos_token: str
    eos_token: str
    add_bos: bool  # the backend puts BOS before every prompt itself

    def generate(
        self, prompts: list[str], options: GenerationOptions, on_text: OnText | None = None
    ) -> list[BackendOutput]: ...

    def count_tokens(self, text: str) -> int: ...

    def close(self) -> None: ...


@runtime_checkable
class ChatBackend(Backend, Protocol):
    """A backend that also takes whole conversations and applies the model's own template itself (a
    hosted service). The engine sends it plain messages when the template is "auto", and it counts
    prompt tokens itself, so `count_tokens` is only an estimate there.

    - `generate_chat(prompts, options, system, on_text)`: each prompt is a user message or a list of
      chat messages; `system`, when given, goes first as a system message. Same outputs as `generate`.
    """

    def generate_chat(
        self,
        prompts: list,
        options: GenerationOptions,
        system: str | None = None,
        on_text: OnText | None = None,
    ) -> list[BackendOutput]: ...
