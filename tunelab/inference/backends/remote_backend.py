"""Remote models: any OpenAI-compatible service (OpenAI, a tunelab server, llama_cpp.server, vLLM).

A list of prompts goes out as concurrent requests, so the service can batch them.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

from tunelab.config import RemoteModelConfig
from tunelab.errors import RemoteModelError, TypedOutputError
from tunelab.inference.backends.base import OnText
from tunelab.inference.options import BackendOutput, GenerationOptions


class RemoteBackend:
    name = "remote"
    chat_template = None  # the service applies the model's own template on /chat/completions
    bos_token = ""
    eos_token = ""
    add_bos = False
    context_length = 1 << 30  # the service enforces its own limit and says so

    def __init__(self, config: RemoteModelConfig, *, max_concurrency: int = 16):
        import openai

        self.config = config
        key = config.resolve_key()
        if not key:
            # Local servers usually accept any key; the SDK insists on one being set.
            key = "none"
        self.client = openai.OpenAI(
            base_url=config.base_url, api_key=key, timeout=config.timeout_s, max_retries=1
        )
        self.max_concurrency = max_concurrency

    def count_tokens(self, text: str) -> int:
        return max(1, len(text) // 4)  # the service counts for real in `usage`

    def _error(self, exc: Exception) -> RemoteModelError:
        import openai

        where = f"{self.config.base_url} (model {self.config.model!r})"
        if isinstance(exc, openai.AuthenticationError):
            env = self.config.api_key_env or "the api_key_env of this remote model"
            return RemoteModelError(f"{where} refused the API key (401); check {env}")
        if isinstance(exc, openai.APIConnectionError):
            return RemoteModelError(f"{where} is not reachable: {exc.__cause__ or exc}")
        if isinstance(exc, openai.APIStatusError):
            return RemoteModelError(f"{where} answered HTTP {exc.status_code}: {exc.message}")
        return RemoteModelError(f"{where}: {exc}")

    def _params(self, options: GenerationOptions) -> dict:
        params: dict = dict(
            model=self.config.model,
            max_tokens=options.max_new_tokens,
            temperature=options.temperature,
            top_p=options.top_p,
        )
        if options.stop:
            params["stop"] = list(options.stop)[:4]
        if options.seed is not None:
            params["seed"] = options.seed
        if options.presence_penalty:
            params["presence_penalty"] = options.presence_penalty
        if options.frequency_penalty:
            params["frequency_penalty"] = options.frequency_penalty
        if options.repetition_penalty != 1.0:  # not OpenAI's; vLLM and tunelab servers take it
            params["extra_body"] = {"repetition_penalty": options.repetition_penalty}
        return params

    def generate_chat(
        self,
        prompts: list,
        options: GenerationOptions,
        system: str | None = None,
        on_text: OnText | None = None,
    ) -> list[BackendOutput]:
        """Plain user messages (or whole conversations); the service applies the model's own template."""

        def one(prompt) -> BackendOutput:
            turns = prompt if isinstance(prompt, list) else [{"role": "user", "content": prompt}]
            messages = ([{"role": "system", "content": system}] if system else []) + turns
            params = self._params(options)
            if options.json_schema is not None:  # OpenAI's structured outputs
                schema = {"name": "output", "schema": json.loads(options.json_schema)}
                params["response_format"] = {"type": "json_schema", "json_schema": schema}
            try:
                response = self.client.chat.completions.create(messages=messages, **params)
            except Exception as exc:
                raise self._error(exc) from None
            choice = response.choices[0]
            usage = response.usage
            return BackendOutput(
                choice.message.content or "",
                "length" if choice.finish_reason == "length" else "stop",
                usage.prompt_tokens if usage else 0,
                usage.completion_tokens if usage else 0,
            )

        return self._concurrently(one, prompts, on_text)

    def generate(
        self, prompts: list[str], options: GenerationOptions, on_text: OnText | None = None
    ) -> list[BackendOutput]:
        """Already-templated texts on /completions, one request each, sent concurrently."""
        if options.json_schema is not None:
            raise TypedOutputError(
                "typed output from a remote model goes through its chat route (response_format): "
                "use template='auto', not a template tunelab applies"
            )

        def one(prompt: str) -> BackendOutput:
            try:
                response = self.client.completions.create(prompt=prompt, **self._params(options))
            except Exception as exc:
                raise self._error(exc) from None
            choice = response.choices[0]
            usage = response.usage
            return BackendOutput(
                choice.text,
                "length" if choice.finish_reason == "length" else "stop",
                usage.prompt_tokens if usage else 0,
                usage.completion_tokens if usage else 0,
            )

        return self._concurrently(one, prompts, on_text)

    def _concurrently(self, one, prompts: list, on_text: OnText | None = None) -> list[BackendOutput]:
        # Not every OpenAI-compatible server takes a list of prompts (llama_cpp.server does not), and
        # chat takes one conversation per request: concurrent requests let the server batch them.
        if not prompts:
            return []
        with ThreadPoolExecutor(min(self.max_concurrency, len(prompts))) as pool:
            outputs = list(pool.map(one, prompts))
        if on_text is not None:  # no token stream from the service here: each answer arrives whole
            for i, out in enumerate(outputs):
                on_text(i, out.text)
        return outputs

    def close(self) -> None:
        self.client.close()
