"""Replay: the base model's own answers to general prompts, mixed into training.

Fine-tuning on new facts moves a model away from what it did before (Gekhman et al.: once new facts
are fitted, hallucination on known ones grows). Mixing in the base model's answers to general prompts
(`replay_prompts`, a shipped data set) keeps its general behaviour without teaching anything new:
the answers are its own (self-distillation), asked through the template training uses, greedy, and
only those that ended by themselves. They are computed once per base model and template and cached
under ``$TUNELAB_HOME/cache/replay/``.
"""

from __future__ import annotations

import hashlib
import json
import logging
import random
from pathlib import Path

from tunelab.config import Settings
from tunelab.export.atomic import atomic_write
from tunelab.inference.templates import Template
from tunelab.models.resolve import ResolvedModel
from tunelab.training.data import Example
from tunelab.training.datasets import load_dataset

log = logging.getLogger("tunelab")

MAX_NEW_TOKENS = 160


def _cache_file(settings: Settings, base: ResolvedModel, template: Template, prompts: list[str]) -> Path:
    ident = json.dumps([base.name, str(base.gguf_path or base.hf_path), template.source, prompts])
    digest = hashlib.sha256(ident.encode()).hexdigest()[:16]
    return settings.home / "cache" / "replay" / f"{Path(base.name).name}-{digest}.jsonl"


def base_answers(base: ResolvedModel, template: Template, settings: Settings) -> list[dict[str, str]]:
    """{"input", "output"} for every replay prompt the base model answers by itself (cached)."""
    prompts = [r["input"] for r in load_dataset("replay_prompts", "all")]
    cache = _cache_file(settings, base, template, prompts)
    if cache.is_file():
        # split at "\n" only: str.splitlines() also breaks at U+2028, U+0085, ... inside an answer
        return [json.loads(line) for line in cache.read_text(encoding="utf-8").split("\n") if line]
    from tunelab.inference.engine import engine_for
    from tunelab.inference.options import GenerationOptions

    log.info("replay: asking %s %d general prompts (once; cached in %s)", base.name, len(prompts), cache)
    options = GenerationOptions.from_kwargs(None, max_new_tokens=MAX_NEW_TOKENS, temperature=0)
    completions = engine_for(settings).generate(
        base, prompts, options=options, template=template.source, backend=settings.backend
    )
    rows = [
        {"input": c.prompt, "output": c.text.strip()}
        for c in completions
        if c.finish_reason == "stop" and c.text.strip()
    ]
    with atomic_write(cache) as tmp:
        tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return rows


def replay_examples(
    base: ResolvedModel, template: Template, settings: Settings, n: int, seed: int
) -> list[Example]:
    """`n` replay examples (fewer when the base answered fewer prompts by itself)."""
    if n <= 0:
        return []
    rows = base_answers(base, template, settings)
    chosen = random.Random(seed).sample(rows, min(n, len(rows)))
    return [
        Example(
            [{"role": "user", "content": r["input"]}, {"role": "assistant", "content": r["output"]}],
            f"replay: {r['input'][:40]}",
            origin="replay",
        )
        for r in chosen
    ]
