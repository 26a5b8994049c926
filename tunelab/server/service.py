"""What the server serves and to whom: the models an owner may see, and requests turned into engine
requests (through the batcher). No HTTP here: the routes translate, this decides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from tunelab.config import Settings
from tunelab.errors import ContextExceeded, ModelNotServed
from tunelab.inference.batching import Batcher, Request
from tunelab.inference.engine import engine_for
from tunelab.inference.options import GenerationOptions
from tunelab.inference.tools import ToolSpec
from tunelab.models.embedded import EMBEDDED
from tunelab.models.registry import list_entries
from tunelab.models.resolve import ResolvedModel, resolve

log = logging.getLogger("tunelab")

LOCAL_OWNER = "local"  # the owner of every request when the server runs with --no-auth


@dataclass
class Service:
    settings: Settings
    store: object | None  # tunelab.store.db.Store; None with --no-auth and no store wanted
    extra_models: list[str] = field(default_factory=list)  # `tunelab serve --model NAME_OR_PATH`
    backend: str = "auto"
    device: str = "auto"
    no_auth: bool = False
    window_s: float = 0.02
    max_batch: int = 32
    max_pending: int | None = 256  # prompts waiting or running; past it a 429, Retry-After (None: no limit)
    job_workers: int = 1  # fine-tuning jobs run at once (0: none run in this server)

    def __post_init__(self) -> None:
        # The server answers with its own models; it never forwards to another server.
        self.settings = self.settings.model_copy(update={"production_url": None, "production_key": None})
        self.engine = engine_for(self.settings)
        self.batcher = Batcher(
            self.engine,
            backend=self.backend,
            device=self.device,
            window_s=self.window_s,
            max_batch=self.max_batch,
            max_pending=self.max_pending,
        )
        self._resolved: dict[str, ResolvedModel] = {}
        self.worker = None

    # -- models ----------------------------------------------------------------------------------------

    def _owner_of_model(self, name: str) -> str | None:
        return self.store.owner_of("model", name) if self.store is not None else None

    def models_for(self, owner: str) -> dict[str, str]:
        """Model id -> owned_by, for what `owner` may use."""
        names: dict[str, str] = {name: "tunelab" for name in EMBEDDED}
        names |= {alias: "tunelab" for alias in self.settings.aliases}
        names |= {name: "remote" for name in self.settings.remote}
        names |= {name: "tunelab" for name in self.extra_models}
        names |= {entry.name: "tunelab" for entry in list_entries(self.settings)}
        visible = {}
        for name, owned_by in names.items():
            model_owner = self._owner_of_model(name)
            if model_owner is None:
                visible[name] = owned_by
            elif model_owner == owner:
                visible[name] = model_owner
        return visible

    def resolve_for(self, owner: str, name: str) -> ResolvedModel:
        if name not in self.models_for(owner):
            raise ModelNotServed(f"The model '{name}' does not exist or you do not have access to it.")
        if name not in self._resolved:
            self._resolved[name] = resolve(name, self.settings)
        return self._resolved[name]

    # -- generation ---------------------------------------------------------------------------------------

    def plan(
        self,
        owner: str,
        model_name: str,
        prompts: list,
        *,
        n: int,
        max_tokens: int | None,
        template: str,
        options: dict,
        tools: ToolSpec | None = None,
    ) -> list[list[Request]]:
        """Check every prompt and make n requests for each (not yet queued: a stream attaches its
        callbacks first). Raises before anything runs unless every prompt fits the model's context."""
        model = self.resolve_for(owner, model_name)
        planned = []
        for prompt in prompts:
            prompt_tokens, context = self.engine.measure(
                model, prompt, template=template, backend=self.backend, device=self.device, tools=tools
            )
            budget = context - prompt_tokens
            wanted = max_tokens if max_tokens is not None else min(512, max(1, budget))
            if prompt_tokens and prompt_tokens + wanted > context:
                raise ContextExceeded(
                    f"This model's maximum context length is {context} tokens. However, you requested "
                    f"{prompt_tokens + wanted} tokens ({prompt_tokens} in the prompt, {wanted} for the "
                    "completion). Please reduce the prompt or the completion length."
                )
            planned.append((prompt, GenerationOptions.from_kwargs(None, max_new_tokens=wanted, **options)))
        return [
            [Request(model, prompt, generation, template=template, tools=tools) for _ in range(n)]
            for prompt, generation in planned
        ]

    def submit(self, planned: list[list[Request]]) -> None:
        for requests in planned:
            for request in requests:
                self.batcher.submit(request)

    def start(self) -> None:
        """Start the fine-tuning job workers (jobs a stopped server left running resume)."""
        from tunelab.jobs.worker import JobWorker

        if self.store is not None and self.job_workers > 0 and self.worker is None:
            self.worker = JobWorker(self.store, self.settings, concurrency=self.job_workers)
            self.worker.start()

    def close(self) -> None:
        if self.worker is not None:
            self.worker.stop()
        self.batcher.close()
        if self.store is not None:
            self.store.close()
