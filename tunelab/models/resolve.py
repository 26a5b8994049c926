"""Model names -> where the weights are.

Order, first match wins (a tunelab server URL in the config sends every name there instead):
1. an embedded default by short name (``gemma-3-270m``, ``smollm2-135m-instruct``);
2. a local directory (Hugging Face layout) or ``.gguf`` file path;
3. a Hugging Face id already in the local HF cache;
4. an alias from the config file (logged, and recorded on every answer: never a silent substitution);
5. a remote model configured with an OpenAI-compatible ``base_url``;
6. a fine-tuned id in tunelab's registry;
7. a Hugging Face id downloaded from the hub, when it is reachable. The hub is asked last, so an
   alias wins over a multi-gigabyte download.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from tunelab.config import RemoteModelConfig, Settings
from tunelab.errors import ModelNotFoundError
from tunelab.models.embedded import EMBEDDED, embedded_gguf_path
from tunelab.models.registry import entry, registry_dir

log = logging.getLogger("tunelab")

Source = Literal["embedded", "local", "hf-cache", "remote", "registry", "hub", "server"]

_HF_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
# Names the lesson reaches through a hosted service; unconfigured, they get the config lines to add.
HOSTED_NAMES = {"chat-gpt", "chatgpt", "gpt-3.5-turbo", "gpt-4", "gpt-4o", "gpt-4o-mini"}


@dataclass(frozen=True)
class ResolvedModel:
    """Where a model name led. `name` is what answers; `requested` is what the user typed."""

    requested: str
    name: str
    source: Source
    gguf_path: Path | None = None
    hf_path: str | None = None  # a local directory or a hub id
    remote: RemoteModelConfig | None = None
    chat: bool | None = None  # known before loading for embedded models
    alias_of: str | None = None  # the alias that led here
    adapter_path: str | None = None  # a fine-tuned LoRA adapter applied on the base weights above
    template_name: str | None = None  # a fine-tuned model's training template, its "auto" at inference
    template_source: str | None = None
    # a tuned LoRA's GGUF: its GGUF base with the merged weights in Q8_0 (or F16), written at the end of
    # training: llama.cpp's fast path
    fast_gguf: Path | None = None


def _local(name: str, requested: str) -> ResolvedModel | None:
    path = Path(name).expanduser()
    if not path.exists():
        return None
    if path.is_file() and path.suffix == ".gguf":
        return ResolvedModel(requested, str(path), "local", gguf_path=path)
    if path.is_dir():
        if (path / "config.json").exists():
            return ResolvedModel(requested, str(path), "local", hf_path=str(path))
        ggufs = sorted(path.glob("*.gguf"))
        if len(ggufs) == 1:
            return ResolvedModel(requested, str(ggufs[0]), "local", gguf_path=ggufs[0])
    raise ModelNotFoundError(
        f"{path} exists but is neither a .gguf file nor a model directory "
        "(with config.json, or one .gguf file)"
    )


def _in_hf_cache(name: str) -> bool:
    if not _HF_ID.match(name):
        return False
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return False
    return isinstance(try_to_load_from_cache(name, "config.json"), str)


def _hub_reachable(name: str) -> tuple[bool, str]:
    """Ask the hub whether `name` exists. Returns (found, why not)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in {"1", "true", "yes"}:
        return False, "HF_HUB_OFFLINE is set"
    try:
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError

        HfApi().model_info(name, timeout=10)
        return True, ""
    except RepositoryNotFoundError:
        return False, "the hub has no such model (or it is gated and you are not logged in)"
    except Exception as exc:  # network errors come in many types; all mean "not reachable"
        return False, f"the Hugging Face hub is not reachable ({type(exc).__name__})"


def _stand_ins() -> str:
    return ", ".join(f"{m.name} ({'chat' if m.chat else 'base'})" for m in EMBEDDED.values())


def _stand_in_for(name: str) -> str:
    return "smollm2-135m-instruct" if "chat" in name.lower() or "instruct" in name.lower() else "gemma-3-270m"


def _hosted_help(name: str) -> str:
    return (
        f"{name!r} is a hosted model and no service is configured for it. Add to your config file "
        f"(tunelab config path shows where):\n"
        f"  remote:\n"
        f"    {name}:\n"
        f"      base_url: https://api.openai.com/v1\n"
        f"      model: gpt-3.5-turbo\n"
        f"      api_key_env: OPENAI_API_KEY\n"
        f"(any OpenAI-compatible server works, e.g. `tunelab serve` or `python -m llama_cpp.server`)."
    )


def _server(name: str, settings: Settings) -> ResolvedModel:
    base = settings.production_url.rstrip("/")
    remote = RemoteModelConfig(
        base_url=base if base.endswith("/v1") else base + "/v1",
        model=name,
        api_key=settings.production_key,
    )
    return ResolvedModel(name, name, "server", remote=remote)


def _alias(name: str, settings: Settings, depth: int) -> ResolvedModel:
    if depth > 5:
        raise ModelNotFoundError(f"alias loop at {name!r} in {settings.config_file}")
    resolved = resolve(settings.aliases[name], settings, _alias_depth=depth + 1)
    log.warning("model %r is answered by %r (alias in %s)", name, resolved.name, settings.config_file)
    # every field of the target (a tuned LoRA's fast GGUF included), under the name the user typed
    return dataclasses.replace(resolved, requested=name, alias_of=name)


def _registry(name: str, settings: Settings, depth: int) -> ResolvedModel | None:
    """A tuned model in the registry: full weights, or a LoRA adapter over its (resolved) base."""
    tuned = entry(settings, name)
    record = tuned.record() if tuned.path.is_dir() else None
    if record is None:
        return ResolvedModel(name, name, "registry", hf_path=str(tuned.path)) if tuned.is_hf_model else None
    template = {"template_name": record.template_name, "template_source": record.template_source}
    if not record.adapter:
        return ResolvedModel(name, name, "registry", hf_path=str(tuned.path), **template)
    try:
        base = resolve(record.base_model, settings, _alias_depth=depth + 1)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(
            f"{name!r} is a LoRA adapter on {record.base_model!r}, which cannot be found here: {exc}"
        ) from None
    return ResolvedModel(
        name,
        name,
        "registry",
        gguf_path=base.gguf_path,
        hf_path=base.hf_path,
        chat=base.chat,
        adapter_path=str(tuned.adapter_dir),
        fast_gguf=tuned.fast_gguf if tuned.fast_gguf.is_file() else None,
        **template,
    )


def _hub(name: str, settings: Settings, tried: list[str]) -> ResolvedModel:
    """The hub, asked last; offline, an error naming the embedded stand-ins and the alias line to add."""
    found, why = _hub_reachable(name)
    if found:
        return ResolvedModel(name, name, "hub", hf_path=name)
    tried.append(f"the Hugging Face hub: {why}")
    raise ModelNotFoundError(
        f"model {name!r} is not available offline: {why}. The embedded stand-ins are {_stand_ins()}; "
        f"to run code that names {name!r} unchanged, map it in {settings.config_file}:\n"
        f"  aliases:\n    {name}: {_stand_in_for(name)}\n"
        "Tried: " + "; ".join(tried)
    )


def resolve(name: str, settings: Settings, *, _alias_depth: int = 0) -> ResolvedModel:
    """Resolve `name` to a model, or raise ModelNotFoundError listing everything that was tried."""
    if not isinstance(name, str) or not name.strip():
        raise ModelNotFoundError(f"a model name must be a non-empty string, got {name!r}")
    name = name.strip()
    if settings.production_url:
        return _server(name, settings)

    tried = ["embedded defaults: " + ", ".join(EMBEDDED)]
    if embedded := EMBEDDED.get(name.lower()):
        path = embedded_gguf_path(embedded, settings.home)
        return ResolvedModel(name, embedded.name, "embedded", gguf_path=path, chat=embedded.chat)
    tried.append(f"a local path {name!r}")
    if local := _local(name, name):
        return local
    tried.append("the local Hugging Face cache")
    if _in_hf_cache(name):
        return ResolvedModel(name, name, "hf-cache", hf_path=name)
    tried.append(f"aliases in {settings.config_file}")
    if name in settings.aliases:
        return _alias(name, settings, _alias_depth)
    tried.append("remote models in the config file")
    if name in settings.remote:
        return ResolvedModel(name, name, "remote", remote=settings.remote[name])
    if name.lower() in HOSTED_NAMES:
        raise ModelNotFoundError(_hosted_help(name))
    tried.append(f"tunelab's registry ({registry_dir(settings)})")
    if tuned := _registry(name, settings, _alias_depth):
        return tuned
    if _HF_ID.match(name):
        return _hub(name, settings, tried)
    raise ModelNotFoundError(
        f"no model named {name!r}. Tried: " + "; ".join(tried) + f". Available offline: {_stand_ins()}."
    )
