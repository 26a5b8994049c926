"""Dynamic batching: requests that arrive close together, for the same model and with the same options,
are answered by one engine call (one batch), not one after another.

The server submits each request here and waits on its Future; a worker thread per model gathers what
arrived within `window_s` (up to `max_batch` prompts), groups it by (template, system, options), and
runs each group through `InferenceEngine.generate` as one batch. On llama.cpp a batch is decoded together step
by step (continuous batching inside the batch); on transformers it is one padded `generate`.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from tunelab.inference.engine import InferenceEngine
from tunelab.inference.options import Completion, GenerationOptions
from tunelab.inference.tools import ToolSpec
from tunelab.models.resolve import ResolvedModel

log = logging.getLogger("tunelab")


@dataclass
class Request:
    """One prompt (text or chat conversation) to answer; `on_text` streams its answer as it grows."""

    model: ResolvedModel
    prompt: str | list[dict[str, str]]
    options: GenerationOptions
    template: str | None = "auto"
    system: str | None = None
    on_text: Callable[[str], bool | None] | None = None
    future: Future = field(default_factory=Future)
    tools: ToolSpec | None = None  # tool calling (tunelab.inference.tools)
    abandoned: Callable[[], bool] | None = None  # True once nobody waits for the answer: it stops early

    @property
    def group(self) -> tuple:
        return (self.template, self.system, self.options, self.tools)


class Overloaded(Exception):
    """More prompts are waiting than the batcher takes (`max_pending`): ask again later."""

    def __init__(self, pending: int, limit: int, retry_after_s: int):
        super().__init__(
            f"the server is busy: {pending} prompts are waiting or running (its limit is {limit}); "
            f"retry after {retry_after_s} s"
        )
        self.retry_after_s = retry_after_s


class Batcher:
    """Queues per model, a worker thread each; `submit` returns a Future of the Completion.

    `max_pending` bounds the prompts accepted and not yet answered (all models together): past it,
    `admit` raises Overloaded instead of letting them queue without bound (the server's 429)."""

    def __init__(
        self,
        engine: InferenceEngine,
        *,
        backend: str = "auto",
        device: str = "auto",
        window_s: float = 0.02,
        max_batch: int = 32,
        max_pending: int | None = None,
    ):
        self.engine, self.backend, self.device = engine, backend, device
        self.window_s, self.max_batch, self.max_pending = window_s, max_batch, max_pending
        self._queues: dict[str, queue.Queue] = {}
        self._lock = threading.Lock()
        self._closed = False
        self.pending = 0  # prompts accepted and not yet answered
        self.batches: list[int] = []  # sizes of the batches run, for tests and benchmarks

    def admit(self, count: int) -> None:
        """Raise Overloaded when `count` more prompts would take those waiting past `max_pending` (a call
        on an idle server is always admitted). Checked before a call's prompts are submitted, so a
        streamed answer is refused before it starts; calls admitted together may pass the limit a little."""
        limit, pending = self.max_pending, self.pending
        if limit is not None and pending and pending + count > limit:
            raise Overloaded(pending, limit, retry_after_s=max(1, round(pending / self.max_batch)))

    def _answered(self, _: Future) -> None:
        with self._lock:
            self.pending -= 1

    def submit(self, request: Request) -> Future:
        if self._closed:
            raise RuntimeError("the batcher is closed")
        with self._lock:
            self.pending += 1
        request.future.add_done_callback(self._answered)
        model = request.model
        key = f"{model.name}|{model.gguf_path or model.hf_path}|{model.adapter_path}"
        with self._lock:
            if key not in self._queues:
                self._queues[key] = queue.Queue()
                threading.Thread(
                    target=self._work,
                    args=(self._queues[key],),
                    name=f"batcher {request.model.name}",
                    daemon=True,
                ).start()
        self._queues[key].put(request)
        return request.future

    def close(self) -> None:
        self._closed = True
        for q in self._queues.values():
            q.put(None)

    def _work(self, requests: queue.Queue) -> None:
        waiting: list[Request] = []
        while True:
            if not waiting:
                first = requests.get()
                if first is None:
                    return
                waiting.append(first)
            deadline = time.monotonic() + self.window_s
            while len(waiting) < self.max_batch * 4:
                try:
                    more = requests.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if more is None:
                    requests.put(None)  # close after this round
                    break
                waiting.append(more)
            group = waiting[0].group
            batch = [r for r in waiting if r.group == group][: self.max_batch]
            taken = {id(r) for r in batch}
            waiting = [r for r in waiting if id(r) not in taken]
            self._run(batch)

    def _run(self, batch: list[Request]) -> None:
        live = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not live:
            return
        first = live[0]

        def relay(i: int, text: str) -> bool | None:
            if live[i].abandoned is not None and live[i].abandoned():
                return False  # its client left: the backend may stop this sequence
            return live[i].on_text(text) if live[i].on_text else None

        self.batches.append(len(live))
        try:
            completions: list[Completion] = self.engine.generate(
                first.model,
                [r.prompt for r in live],
                options=first.options,
                template=first.template,
                system=first.system,
                backend=self.backend,
                device=self.device,
                on_text=relay if any(r.on_text or r.abandoned for r in live) else None,
                tools=first.tools,
            )
        except Exception as exc:  # the whole batch failed (model would not load, service down, ...)
            log.warning("a batch of %d for %s failed: %s", len(live), first.model.name, exc)
            for r in live:
                r.future.set_exception(exc)
            return
        for r, completion in zip(live, completions):
            r.future.set_result(completion)
