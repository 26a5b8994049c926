"""Prompt templates: how a prompt becomes the text a model sees, and where its answer ends.

- ``raw``: the text as given (what the lesson's base-model calls do);
- ``llama2``: ``[INST] ... [/INST]`` with an optional ``<<SYS>>`` block;
- ``chatml``: ``<|im_start|>user ... <|im_end|>`` turns;
- the model's own chat template (``auto`` on a chat model), read from its tokenizer or GGUF;
- a user Jinja string, given ``messages`` (chat style) and ``prompt``/``system`` (plain style).

A BOS text that a model's template renders is dropped when the backend adds BOS itself (never doubled)
and kept when it does not (SmolLM2's BOS is ``<|im_start|>``, which its template must keep).
A prompt that already carries a template's markers (the lesson's ``"[INST]...[/INST]"``) is passed
through unwrapped.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache

from jinja2 import TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tunelab.errors import ConfigError

log = logging.getLogger("tunelab")

BUILTIN_TEMPLATES = ("raw", "llama2", "chatml")
TEMPLATE_CHOICES = ("auto", *BUILTIN_TEMPLATES)

_LLAMA2 = (
    "{% if system %}[INST] <<SYS>>\n{{ system }}\n<</SYS>>\n\n{{ prompt }} [/INST]"
    "{% else %}[INST] {{ prompt }} [/INST]{% endif %}"
)
_CHATML = (
    "{% if system %}<|im_start|>system\n{{ system }}<|im_end|>\n{% endif %}"
    # a trailing literal newline would be dropped by Jinja, so the last one is an expression
    "<|im_start|>user\n{{ prompt }}<|im_end|>\n{{ '<|im_start|>assistant\\n' }}"
)
_RAW = "{{ prompt }}"

# Messages-based equivalents of the built-in prompt templates, for a tuned model's exported chat
# template: for a system message and one user turn with add_generation_prompt they render exactly what
# the prompt form renders (tested), and they go on to later turns the way the family does, each answer
# closed as training closed it.
_RAW_MESSAGES = (
    "{% for message in messages %}{% if message['role'] == 'user' %}{{ message['content'] }}"
    "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}{% endif %}"
    "{% endfor %}"
)
_LLAMA2_MESSAGES = (
    "{% if messages and messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
    "{% set turns = messages[1:] %}{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
    "{% for message in turns %}{% if message['role'] == 'user' %}"
    "{% if loop.first and system %}{{ '[INST] <<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}"
    "{{ message['content'] + ' [/INST]' }}{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
    "{% endif %}{% elif message['role'] == 'assistant' %}"
    "{{ ' ' + message['content'].lstrip() + eos_token }}{% endif %}{% endfor %}"
)
_CHATML_MESSAGES = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

_SENTINEL = "\u2063TUNELAB_SENTINEL\u2063"


@dataclass(frozen=True)
class Template:
    """A way to wrap a prompt. `stop` ends the answer; `markers` show a prompt is already wrapped."""

    name: str
    source: str  # Jinja text
    stop: tuple[str, ...] = ()
    markers: tuple[str, ...] = ()
    bos_token: str = ""
    eos_token: str = ""
    add_bos: bool = False  # the backend adds BOS itself, so a leading BOS text is dropped

    def is_wrapped(self, prompt: str) -> bool:
        return any(m in prompt for m in self.markers)

    def render(self, prompt: str, system: str | None = None) -> str:
        """The text the model sees. A prompt already in this template is returned unchanged."""
        if self.is_wrapped(prompt):
            return prompt
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": prompt}
        ]
        try:
            text = _compile(self.source).render(
                messages=messages,
                prompt=prompt,
                system=system or "",
                add_generation_prompt=True,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
            )
        except TemplateError as exc:
            raise ConfigError(f"template {self.name!r} failed to render: {exc}") from None
        if self.add_bos and self.bos_token and text.startswith(self.bos_token):
            text = text[len(self.bos_token) :]  # the backend adds BOS itself; never twice
        return text

    def render_chat(self, messages: list[dict[str, str]], **context) -> str:
        """A conversation rendered for the assistant's answer (the chat API).

        One that ends with a user turn (or a tool result) opens the assistant's turn. One that ends with an
        assistant message is continued (a prefill, as OpenAI and vLLM take it): the text stops right after
        that message, where its turn would close, so the model goes on writing it (transformers'
        `continue_final_message`). A template written for one prompt (``raw``, ``llama2``) takes one user
        message (then the assistant's to continue) and an optional system message first. `context` goes
        to a chat template as extra variables (`tools`, tunelab.inference.tools)."""
        if not messages or messages[-1].get("role") not in ("user", "assistant", "tool"):
            raise ConfigError(
                "a chat conversation must end with a user message (or an assistant message to continue)"
            )
        prefill = messages[-1]["role"] == "assistant"
        if "messages" in self.source:
            if prefill:
                text = self._continue(messages, **context)
            else:
                text = self._render_messages(messages, add_generation_prompt=True, **context)
            if self.add_bos and self.bos_token and text.startswith(self.bos_token):
                text = text[len(self.bos_token) :]
            return text
        system = [m["content"] for m in messages if m["role"] == "system"]
        turns = [m for m in messages if m["role"] != "system"]
        if len(turns) != 1 + prefill or len(system) > 1:
            raise ConfigError(
                f"template {self.name!r} takes one user message (and one system message); this "
                f"conversation has {len(turns)} turns. Use a model with a chat template, or 'chatml'"
            )
        if prefill:  # the answer goes on from the assistant's text, as training renders one
            return "".join(text for text, _ in self._render_single_turn(messages))
        return self.render(turns[0]["content"], system[0] if system else None)

    def _continue(self, messages: list[dict[str, str]], **context) -> str:
        """The conversation rendered whole, cut right after the last (assistant) message's text."""
        content = messages[-1]["content"]
        if not content.strip():  # nothing to continue: the assistant's turn, opened
            return self._render_messages(messages[:-1], add_generation_prompt=True, **context)
        full = self._render_messages(messages, add_generation_prompt=False, **context)
        at = full.rfind(content.strip())
        if at < 0:
            raise ConfigError(
                f"template {self.name!r} does not write the last assistant message as given, so it "
                "cannot be continued; end the conversation with a user message"
            )
        # keep the message's trailing spaces when the template kept them (it may strip them)
        kept = content.lstrip() if full.startswith(content.lstrip(), at) else content.strip()
        return full[: at + len(kept)]

    def render_conversation(self, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
        """A whole training conversation as (text, is_answer) segments, exactly as inference renders it.

        Each assistant turn's segment is what the model must learn to write: the answer plus whatever
        the template closes the turn with (``<|im_end|>``, ...). A template written for one prompt
        (``raw``, ``llama2``) takes one user turn and an optional system message.
        """
        if "messages" not in self.source:
            return self._render_single_turn(messages)
        segments: list[tuple[str, bool]] = []
        done = ""
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prefix = self._render_messages(messages[:k], add_generation_prompt=True)
            full = self._render_messages(messages[: k + 1], add_generation_prompt=False)
            if not prefix.startswith(done) or not full.startswith(prefix):
                raise ConfigError(
                    f"template {self.name!r} renders a conversation differently from its prefix, so the "
                    "answer tokens cannot be told apart; train with another template"
                )
            segments += [(prefix[len(done) :], False), (full[len(prefix) :], True)]
            done = full
        if segments and self.add_bos and self.bos_token and segments[0][0].startswith(self.bos_token):
            segments[0] = (segments[0][0][len(self.bos_token) :], False)
        return segments

    def _render_single_turn(self, messages: list[dict[str, str]]) -> list[tuple[str, bool]]:
        system = [m["content"] for m in messages if m["role"] == "system"]
        turns = [m for m in messages if m["role"] != "system"]
        if len(turns) != 2 or turns[0]["role"] != "user" or len(system) > 1:
            raise ConfigError(
                f"template {self.name!r} has one user turn and one answer; this conversation has "
                f"{len(turns)} turns. Train multi-turn data with a chat template "
                "('chatml' or the model's own)"
            )
        prompt = self.render(turns[0]["content"], system[0] if system else None)
        # The answer follows the prompt after a space, as a model continues "[INST] ... [/INST]".
        answer = turns[1]["content"] if self.name == "raw" else " " + turns[1]["content"].lstrip()
        return [(prompt, False), (answer, True)]

    def _render_messages(
        self, messages: list[dict[str, str]], *, add_generation_prompt: bool, **context
    ) -> str:
        try:
            return _compile(self.source).render(
                messages=messages,
                add_generation_prompt=add_generation_prompt,
                bos_token=self.bos_token,
                eos_token=self.eos_token,
                **context,
            )
        except TemplateError as exc:
            raise ConfigError(f"template {self.name!r} failed to render: {exc}") from None


def _raise(message: str) -> None:
    raise TemplateError(message)


@lru_cache(maxsize=64)
def _compile(source: str):
    # The sandbox HF uses for chat templates: a template from a model file cannot touch Python objects.
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    try:
        return env.from_string(source)
    except TemplateError as exc:
        raise ConfigError(f"template is not valid Jinja: {exc}") from None


# The token that closes the assistant's turn in each family (an EOS-like stop, besides the model's EOS).
_END_OF_TURN = {"chatml": "<|im_end|>", "gemma": "<end_of_turn>", "llama3": "<|eot_id|>"}


def _family(source: str) -> str:
    if "<|im_start|>" in source:
        return "chatml"
    if "[INST]" in source:
        return "llama2"
    if "<start_of_turn>" in source:
        return "gemma"
    if "<|start_header_id|>" in source:
        return "llama3"
    return "custom"


def _from_jinja(name: str, source: str, bos_token: str, eos_token: str, add_bos: bool) -> Template:
    """Derive markers and stops from a chat template by rendering a sentinel message."""
    probe = Template(name=name, source=source, bos_token=bos_token, eos_token=eos_token, add_bos=add_bos)
    rendered = probe.render(_SENTINEL)
    prefix = rendered.split(_SENTINEL)[0] if _SENTINEL in rendered else ""
    lines = [line.strip() for line in prefix.splitlines() if line.strip()]
    # The line that opens the user turn, e.g. "<|im_start|>user" or "[INST]": a prompt carrying it is
    # already wrapped. It is not a stop: a model writing the next turn itself (self-dialogue) is
    # something to see and diagnose, not to hide.
    marker = lines[-1] if lines else ""
    if "{{" in source and "messages" not in source:
        marker = ""  # a plain prompt template has no turn structure to detect
    stops = tuple(dict.fromkeys(s for s in (eos_token, _END_OF_TURN.get(_family(source), "")) if s))
    return Template(
        name=name,
        source=source,
        stop=stops,
        markers=(marker,) if marker else (),
        bos_token=bos_token,
        eos_token=eos_token,
        add_bos=add_bos,
    )


@dataclass(frozen=True)
class _Builtin:
    source: str  # the prompt form (reads `prompt`, `system`)
    messages_source: str  # the same template over `messages`, for exported chat templates
    stop: tuple[str, ...] = ()
    markers: tuple[str, ...] = ()


_BUILTINS = {
    "raw": _Builtin(_RAW, _RAW_MESSAGES),
    # Llama-2 chat ends its turn with EOS, which every backend stops on
    "llama2": _Builtin(_LLAMA2, _LLAMA2_MESSAGES, markers=("[INST]",)),
    "chatml": _Builtin(_CHATML, _CHATML_MESSAGES, stop=("<|im_end|>",), markers=("<|im_start|>",)),
}


def builtin(name: str, bos_token: str = "", eos_token: str = "") -> Template:
    if name not in _BUILTINS:
        raise ConfigError(
            f"unknown template {name!r}; choose one of {TEMPLATE_CHOICES} or give a Jinja string"
        )
    spec = _BUILTINS[name]
    return Template(name, spec.source, spec.stop, spec.markers, bos_token=bos_token, eos_token=eos_token)


# A user's own prompt-style Jinja (written for `prompt` and `system`) is kept as it is, fed from the
# last user message: it only ever described one turn, and this renders that turn exactly.
_PROMPT_STYLE_PREFIX = (
    "{% set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else '' %}"
    "{% set prompt = (messages | selectattr('role', 'equalto', 'user') | list | last)['content'] %}"
)


def chat_template_for(template_name: str, template_source: str) -> str:
    """The messages-based Jinja chat template that renders prompts as training did.

    A chat template (it reads ``messages``) is returned unchanged; tunelab's built-in prompt templates
    (``raw``, ``llama2``, ``chatml``) get their messages-based equivalent, and any other prompt-style
    Jinja is wrapped so that ``prompt``/``system`` come from the messages.

    >>> chat_template_for("llama2", builtin("llama2").source).startswith("{% if messages")
    True
    """
    if "messages" in template_source:
        return template_source
    if template_name in BUILTIN_TEMPLATES and template_source == builtin(template_name).source:
        return _BUILTINS[template_name].messages_source
    return _PROMPT_STYLE_PREFIX + template_source


def resolve_template(
    spec: str | None,
    *,
    model_chat_template: str | None,
    model_name: str = "",
    bos_token: str = "",
    eos_token: str = "",
    add_bos: bool = False,
) -> Template:
    """Pick the template for `spec` ("auto", a built-in name, or a Jinja string) on a given model.

    "auto" is the model's own chat template when it has one (a chat model), raw text otherwise
    (a base model) — except Llama-2 chat checkpoints without a template in their files, which get llama2.
    """
    spec = spec or "auto"
    if spec == "auto":
        if model_chat_template:
            family = _family(model_chat_template)
            return _from_jinja(f"{family} (model's own)", model_chat_template, bos_token, eos_token, add_bos)
        lowered = model_name.lower()
        if "llama-2" in lowered and "chat" in lowered:
            return builtin("llama2", bos_token, eos_token)
        return builtin("raw", bos_token, eos_token)
    if spec in BUILTIN_TEMPLATES:
        return builtin(spec, bos_token, eos_token)
    if "{{" in spec or "{%" in spec:
        _compile(spec)
        return _from_jinja("custom", spec, bos_token, eos_token, add_bos)
    raise ConfigError(f"unknown template {spec!r}; choose one of {TEMPLATE_CHOICES} or give a Jinja string")
