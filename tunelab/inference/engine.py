"""The engine: resolved model + prompts + template + options -> Completions.

The Python API, the CLI and (later) the server all call this; it knows nothing of HTTP or terminals.
Loaded backends are cached per (model, backend, device), so several runners on one model share weights.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
import time
from dataclasses import dataclass

from tunelab.config import Settings
from tunelab.errors import ConfigError, GenerationOptionError, PromptError, ToolCallError
from tunelab.inference.backends.base import Backend, ChatBackend, OnText
from tunelab.inference.backends.vllm_backend import vllm_available, vllm_on_cpu
from tunelab.inference.device import pick_device
from tunelab.inference.embeddings import Embedding
from tunelab.inference.logprobs import Score
from tunelab.inference.options import BackendOutput, Completion, GenerationOptions
from tunelab.inference.templates import BUILTIN_TEMPLATES, Template, resolve_template
from tunelab.inference.tools import (
    PREFILL,
    ToolCall,
    ToolSpec,
    check_tool_backend,
    conversation_for,
    generate_with_tools,
    has_tool_turns,
)
from tunelab.models.resolve import ResolvedModel

log = logging.getLogger("tunelab")

BACKENDS = ("auto", "transformers", "llama_cpp", "vllm")


def choose_backend(model: ResolvedModel, requested: str, device: str) -> str:
    """`auto`: vLLM on a CUDA GPU where it is installed, llama.cpp for a GGUF on CPU (fastest here),
    transformers otherwise."""
    if model.remote is not None:
        if requested not in ("auto", "remote"):
            raise ConfigError(f"{model.name!r} is a remote model; it has no local {requested!r} backend")
        return "remote"
    if requested not in BACKENDS:
        raise ConfigError(f"unknown backend {requested!r}; choose one of {BACKENDS}")
    has_llama_cpp = importlib.util.find_spec("llama_cpp") is not None
    if model.adapter_path is not None and model.fast_gguf is not None:
        # a tuned model with its merged GGUF: as fast as its base on llama.cpp (the adapter path stays
        # for backend="transformers": training, exact float32 answers)
        if requested == "llama_cpp" or (requested == "auto" and device == "cpu" and has_llama_cpp):
            return "llama_cpp"
    if requested == "auto" and device == "cuda" and not vllm_on_cpu() and vllm_available() is None:
        return "vllm"  # a GPU with vLLM installed: its batching, and tuned models as LoRA adapters
    if model.adapter_path is not None:
        return _adapter_backend(model, requested)
    if requested == "llama_cpp":
        if model.gguf_path is None:
            raise ConfigError(
                f"{model.name!r} is not a GGUF file, so the llama_cpp backend cannot run it; "
                "use backend='transformers'"
            )
        return "llama_cpp"
    if requested in ("transformers", "vllm"):
        return requested
    if model.gguf_path is not None and device == "cpu" and has_llama_cpp:
        return "llama_cpp"
    return "transformers"


def _adapter_backend(model: ResolvedModel, requested: str) -> str:
    """A LoRA adapter without a merged GGUF: vLLM applies it over its base (multi-LoRA), transformers
    through peft; llama.cpp cannot."""
    if requested == "vllm":
        return "vllm"
    if requested == "llama_cpp":
        raise ConfigError(
            f"{model.name!r} is a LoRA adapter, which the llama_cpp backend does not apply; use "
            f"backend='transformers' or 'vllm', or `tunelab export {model.name} --merged DIR --gguf` "
            "and run the GGUF"
        )
    return "transformers"


@dataclass
class Prepared:
    """Prompts after validation and templating; `errors[i]` is set for a prompt that cannot run."""

    texts: list[str]
    errors: list[str | None]
    wrapped: list[bool]


def is_token_ids(prompt) -> bool:
    """A prompt given as token ids (a non-empty list of ints): run as it is, no template, no BOS added."""
    return (
        isinstance(prompt, list)
        and bool(prompt)
        and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt)
    )


def prepare_prompts(
    prompts: list, template: Template, system: str | None, tools: ToolSpec | None = None
) -> Prepared:
    """Each prompt is a string, a chat conversation (a list of {"role", "content"} messages), or token
    ids (a list of ints, passed on untouched)."""
    texts, errors, wrapped = [], [], []
    for i, prompt in enumerate(prompts):
        where = f"prompt {i}" if len(prompts) > 1 else "the prompt"
        if is_token_ids(prompt):
            texts.append(list(prompt))
            errors.append(None)
            wrapped.append(False)
        elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
            try:
                conversation = ([{"role": "system", "content": system}] if system else []) + prompt
                texts.append(_render_chat(template, conversation, tools))
                errors.append(None)
            except (ConfigError, ToolCallError) as exc:
                texts.append("")
                errors.append(f"{where}: {exc}")
            wrapped.append(False)
        elif not isinstance(prompt, str):
            texts.append("")
            errors.append(f"{where} is a {type(prompt).__name__}, not a string: {prompt!r:.60}")
            wrapped.append(False)
        elif not prompt.strip():
            texts.append("")
            errors.append(f"{where} is empty")
            wrapped.append(False)
        else:
            texts.append(template.render(prompt, system))
            errors.append(None)
            wrapped.append(template.is_wrapped(prompt))
    return Prepared(texts, errors, wrapped)


def _render_chat(template: Template, conversation: list[dict], tools: ToolSpec | None) -> str:
    """A conversation through its template; with tools or tool turns, as tunelab.inference.tools says
    (and ending with the call marker when the answer must be a call)."""
    if tools is None and not has_tool_turns(conversation):
        return template.render_chat(conversation)
    messages, context = conversation_for(template.source, conversation, tools)
    forced = tools is not None and tools.forced
    return template.render_chat(messages, **context) + (PREFILL if forced else "")


class InferenceEngine:
    """The inference core: loads backends (cached per model, backend and device) and answers prompts
    through a template. The Python API, the CLI and the server all call it; `LLMEngine` in
    `tunelab.runner` is Lamini's runner class, a thin facade over this."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self._backends: dict[tuple, Backend] = {}
        self._lock = threading.Lock()

    def load(self, model: ResolvedModel, backend: str = "auto", device: str = "auto") -> Backend:
        device_name = "remote" if model.remote is not None else pick_device(device)
        kind = choose_backend(model, backend, device_name)
        where = f"{model.gguf_path or model.hf_path}+{model.adapter_path}+{model.fast_gguf}"
        if model.remote is not None:  # a changed key or URL must reach a new client
            where = model.remote.model_dump_json() + str(model.remote.resolve_key())
        key = (model.name, where, kind, device_name, self.settings.dtype)
        if kind == "vllm":  # one engine per base model; its tuned models are adapters over it
            key = ("vllm", str(self._vllm_base_path(model)))
        with self._lock:
            if key not in self._backends:
                self._backends[key] = self._build(model, kind, device_name)
            loaded = self._backends[key]
        if kind == "vllm" and model.adapter_path is not None:
            return loaded.with_adapter(model.name, model.adapter_path)
        return loaded

    def _vllm_base_path(self, model: ResolvedModel):
        """The Hugging Face folder vLLM loads: a GGUF's dequantized copy, else the model's own folder
        (for a tuned model, its base's)."""
        from tunelab.models.gguf_cache import dequantized_dir

        return dequantized_dir(model.gguf_path, self.settings.home) if model.gguf_path else model.hf_path

    def _build(self, model: ResolvedModel, kind: str, device: str) -> Backend:
        if kind == "remote":
            from tunelab.inference.backends.remote_backend import RemoteBackend

            return RemoteBackend(model.remote)
        if kind == "llama_cpp":
            from tunelab.inference.backends.llama_cpp_backend import LlamaCppBackend

            # an adapter's gguf_path is its base's: the tuned weights are in its own merged GGUF
            return LlamaCppBackend(model.fast_gguf if model.adapter_path is not None else model.gguf_path)
        from tunelab.inference.backends.transformers_backend import TransformersBackend
        from tunelab.models.gguf_cache import dequantized_dir

        if kind == "vllm":
            from tunelab.inference.backends.vllm_backend import VllmBackend

            return VllmBackend(
                str(self._vllm_base_path(model)), dtype=self.settings.dtype, **self.settings.vllm.model_dump()
            )

        if model.gguf_path is not None:
            return TransformersBackend(
                str(dequantized_dir(model.gguf_path, self.settings.home)),
                device=device,
                dtype=self.settings.dtype,
                adapter_path=model.adapter_path,
            )
        return TransformersBackend(
            model.hf_path,
            device=device,
            dtype=self.settings.dtype,
            local_files_only=model.source != "hub",
            adapter_path=model.adapter_path,
        )

    def template_for(self, model: ResolvedModel, backend: Backend, spec: str | None) -> Template:
        if (spec or "auto") == "auto" and model.template_source:
            # A fine-tuned model answers in the template it was trained with.
            spec = model.template_name if model.template_name in BUILTIN_TEMPLATES else model.template_source
        return resolve_template(
            spec,
            model_chat_template=backend.chat_template,
            model_name=model.alias_of or model.name,
            bos_token=backend.bos_token,
            eos_token=backend.eos_token,
            add_bos=backend.add_bos,
        )

    def measure(
        self,
        model: ResolvedModel,
        prompt: str | list[dict[str, str]],
        *,
        template: str | None = "auto",
        system: str | None = None,
        backend: str = "auto",
        device: str = "auto",
        tools: ToolSpec | None = None,
    ) -> tuple[int, int]:
        """(prompt tokens, context length) of one prompt as the model would see it (0 tokens when a remote
        service counts them itself). A prompt that cannot be rendered raises PromptError."""
        engine_backend = self.load(model, backend, device)
        check_tool_backend(engine_backend.name, tools)
        if isinstance(engine_backend, ChatBackend):  # the service counts its own tokens
            return 0, engine_backend.context_length
        chosen = self.template_for(model, engine_backend, template)
        prepared = prepare_prompts([prompt], chosen, system, tools)
        if prepared.errors[0]:
            raise PromptError(prepared.errors[0])
        text = prepared.texts[0]
        n_tokens = len(text) if isinstance(text, list) else engine_backend.count_tokens(text)
        return n_tokens, engine_backend.context_length

    def tokenize(
        self,
        model: ResolvedModel,
        prompt: str | list[dict[str, str]],
        *,
        template: str | None = "raw",
        add_special_tokens: bool = True,
        backend: str = "auto",
        device: str = "auto",
    ) -> list[int]:
        """The token ids the model sees for `prompt` (a text through `template`, or a conversation through
        the chat template); BOS first when the model adds one and `add_special_tokens`."""
        engine_backend = self._local(model, backend, device, "tokenize")
        prepared = prepare_prompts([prompt], self.template_for(model, engine_backend, template), None)
        if prepared.errors[0]:
            raise PromptError(prepared.errors[0])
        return engine_backend.tokenize(
            prepared.texts[0], add_bos=add_special_tokens and engine_backend.add_bos
        )

    def detokenize(
        self, model: ResolvedModel, ids: list[int], *, backend: str = "auto", device: str = "auto"
    ) -> str:
        """The text of token ids (special tokens render as nothing); ids outside the vocabulary raise
        PromptError."""
        engine_backend = self._local(model, backend, device, "detokenize")
        bad = [t for t in ids if not 0 <= t < engine_backend.vocab_size]
        if bad:
            raise PromptError(f"token ids must be in [0, {engine_backend.vocab_size}); got {bad[:5]}")
        return engine_backend.detokenize(ids)

    def score(
        self,
        model: ResolvedModel,
        pairs: list[tuple[str, str]],
        *,
        backend: str = "auto",
        device: str = "auto",
    ) -> list[Score]:
        """The log-likelihood of each continuation after its prompt (raw text, no template), as one batch.

        The continuation's tokens are those of prompt + continuation after the prompt's own tokens (as
        lm-eval splits them), so a word the two share a token across is scored as the model reads it."""
        engine_backend = self._local(model, backend, device, "score")
        ids, n_scored = [], []
        for context, continuation in pairs:
            if not continuation:
                raise PromptError("the continuation to score is empty")
            head = engine_backend.tokenize(context)  # BOS alone for "" when the model adds one
            if not head:  # nothing before the first token to predict it from
                raise PromptError(
                    "the prompt is empty and the model adds no BOS: give a prompt to score after"
                )
            whole = engine_backend.tokenize(context + continuation)
            if whole[: len(head)] != head:  # the join changed the prompt's last token: score it apart
                whole = head + engine_backend.tokenize(continuation, add_bos=False)
            ids.append(whole)
            n_scored.append(len(whole) - len(head))
        options = GenerationOptions(max_new_tokens=0, prompt_logprobs=1)
        completions = self.generate(
            model, ids, options=options, template="raw", backend=backend, device=device
        )
        scores = []
        for completion, n in zip(completions, n_scored, strict=True):
            if completion.error:
                raise PromptError(completion.error)
            tokens = tuple(completion.prompt_logprobs[-n:])
            scores.append(Score(sum(t.logprob for t in tokens), all(t.greedy for t in tokens), tokens))
        return scores

    def embed(
        self, model: ResolvedModel, items: list, *, backend: str = "auto", device: str = "auto"
    ) -> list[Embedding]:
        """Each input (a text, or a list of token ids) as a unit-length vector: the mean of the model's
        last hidden states (tunelab.inference.embeddings). A bad input raises PromptError."""
        if not items:
            raise PromptError("there is nothing to embed: input is empty")
        return self._local(model, backend, device, "embed").embed(items)

    def _local(self, model: ResolvedModel, backend: str, device: str, what: str) -> Backend:
        """The loaded backend, when it computes token ids and logits itself (not a remote service)."""
        engine_backend = self.load(model, backend, device)
        if not getattr(engine_backend, "supports_logprobs", False):
            raise ConfigError(
                f"the {engine_backend.name} backend of {model.name!r} cannot {what}: token ids, "
                "log-probabilities and embeddings need a local model (llama_cpp or transformers)"
            )
        return engine_backend

    def generate(
        self,
        model: ResolvedModel,
        prompts: list,
        *,
        options: GenerationOptions,
        template: str | None = "auto",
        system: str | None = None,
        backend: str = "auto",
        device: str = "auto",
        on_text: OnText | None = None,
        tools: ToolSpec | None = None,
    ) -> list[Completion]:
        """Answer every prompt as one batch; a bad prompt gets an error record, the others their answers.

        A prompt is a string or a chat conversation (list of messages). `on_text(i, text_so_far)` is
        called as prompt i's answer grows (token by token on local backends, once on remote ones); it
        may return False to say nobody reads that answer any more (llama.cpp then stops it).
        With `tools` (tunelab.inference.tools) a conversation's answer may be tool calls
        (`Completion.tool_calls`); on_text then gets the raw answer, calls included."""
        wants_tokens = options.logprobs is not None or options.prompt_logprobs is not None
        if wants_tokens or any(is_token_ids(p) for p in prompts):
            engine_backend = self._local(model, backend, device, "take token ids or give logprobs")
        else:
            engine_backend = self.load(model, backend, device)
        remote_chat = isinstance(engine_backend, ChatBackend) and (template or "auto") == "auto"
        if remote_chat:
            # The service applies the model's own template; tunelab sends plain messages.
            chosen = Template("service's own", "{{ prompt }}")
        else:
            chosen = self.template_for(model, engine_backend, template)
        check_tool_backend(engine_backend.name, tools)
        if options.json_after is not None and not getattr(engine_backend, "lazy_json", False):
            raise GenerationOptionError(
                f"json_after needs the llama_cpp backend; this model runs on {engine_backend.name}"
            )
        prepared = prepare_prompts(prompts, chosen, system, tools)
        options = GenerationOptions.from_kwargs(
            options, stop=tuple(dict.fromkeys(options.stop + chosen.stop))
        )
        runnable = [i for i, err in enumerate(prepared.errors) if err is None]
        start = time.perf_counter()
        calls: dict[int, list[ToolCall] | None] = {}
        if not runnable:
            outputs: list[BackendOutput] = []
        else:
            relay = None
            if on_text is not None:

                def relay(k: int, text: str) -> bool | None:
                    return on_text(runnable[k], text)

            if tools is not None and tools.calls:
                texts = [prepared.texts[i] for i in runnable]
                answers = generate_with_tools(engine_backend, texts, options, tools, chosen.stop, relay)
                outputs = [a.output for a in answers]
                calls = {i: a.calls for i, a in zip(runnable, answers)}
            elif remote_chat:
                outputs = engine_backend.generate_chat(
                    [prompts[i] for i in runnable], options, system, on_text=relay
                )
            else:
                outputs = engine_backend.generate(
                    [prepared.texts[i] for i in runnable], options, on_text=relay
                )
        latency = time.perf_counter() - start
        by_index = dict(zip(runnable, outputs))
        completions = []
        for i, prompt in enumerate(prompts):
            out = by_index.get(i) or BackendOutput("", "error", 0, 0, error=prepared.errors[i])
            completions.append(
                Completion(
                    text=out.text,
                    finish_reason=out.finish_reason,
                    prompt_tokens=out.prompt_tokens,
                    completion_tokens=out.completion_tokens,
                    model=model.name,
                    template=chosen.name,
                    backend=engine_backend.name,
                    prompt=_prompt_text(prompt, engine_backend if out.error is None else None),
                    latency_s=latency if i in by_index else 0.0,
                    tokens_per_s=out.completion_tokens / latency if latency > 0 and i in by_index else 0.0,
                    error=out.error,
                    max_new_tokens=options.max_new_tokens,
                    logprobs=out.logprobs,
                    prompt_logprobs=out.prompt_logprobs,
                    tool_calls=calls.get(i),
                    cached_tokens=out.cached_tokens,
                    extra={
                        k: v
                        for k, v in {
                            "requested_model": model.requested if model.requested != model.name else None,
                            "alias_of": model.alias_of,
                            "already_wrapped": prepared.wrapped[i] or None,
                        }.items()
                        if v is not None
                    },
                )
            )
        return completions


def _prompt_text(prompt, backend: Backend | None = None) -> str:
    """What a Completion records as its prompt: the text, a conversation's last user message, or the
    text of token ids (when they ran on `backend`)."""
    if isinstance(prompt, str):
        return prompt
    if is_token_ids(prompt):
        return backend.detokenize(prompt) if backend is not None else repr(prompt)
    if isinstance(prompt, list) and prompt and isinstance(prompt[-1], dict):
        return str(prompt[-1].get("content", ""))
    return repr(prompt)


_ENGINES: dict[str, InferenceEngine] = {}


def engine_for(settings: Settings) -> InferenceEngine:
    """One engine per data home, shared by every runner in the process."""
    key = str(settings.home)
    if key not in _ENGINES:
        _ENGINES[key] = InferenceEngine(settings)
    engine = _ENGINES[key]
    engine.settings = settings
    return engine
