"""tunelab's model registry: one directory per fine-tuned model under ``$TUNELAB_HOME/registry/<id>/``.

A directory holds the weights (a LoRA ``adapter/`` or a full HF model), the tokenizer, ``tunelab.json``
(the `ModelRecord` below: base model, template, data hash, hyperparameters, metrics), the per-step
``metrics.jsonl``, ``loss.png`` and the held-out examples (``heldout.jsonl``) that `evaluate()` uses.
Copying the directory to another machine's registry moves the model (a LoRA needs its base there too).
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from tunelab.config import Settings

RECORD_FILE = "tunelab.json"


class ModelRecord(BaseModel):
    """What a fine-tuned model is and how it was made."""

    model_id: str
    base_model: str  # the name the base resolves by (embedded name, path or hub id)
    method: Literal["lora", "full"]
    template_name: str
    template_source: str  # Jinja: the exact template used in training, used again at inference
    data_hash: str
    n_train: int
    n_eval: int
    hyperparameters: dict[str, Any]
    metrics: dict[str, Any] = Field(default_factory=dict)
    is_public: bool = False
    merged_from: str | None = None  # set on an exported merge of a LoRA fine-tune
    created_at: str = Field(default_factory=lambda: datetime.now(UTC).isoformat(timespec="seconds"))

    @property
    def adapter(self) -> bool:
        return self.method == "lora"


def registry_dir(settings: Settings) -> Path:
    return settings.home / "registry"


def model_dir(settings: Settings, model_id: str) -> Path:
    return registry_dir(settings) / model_id


def save_record(directory: Path, record: ModelRecord) -> None:
    (directory / RECORD_FILE).write_text(record.model_dump_json(indent=2) + "\n", encoding="utf-8")


def load_record(directory: Path) -> ModelRecord | None:
    """The record of a registry directory, or None when it has none (a plain HF model copied there)."""
    path = directory / RECORD_FILE
    if not path.exists():
        return None
    return ModelRecord.model_validate(json.loads(path.read_text(encoding="utf-8")))


def list_records(settings: Settings) -> list[ModelRecord]:
    root = registry_dir(settings)
    if not root.is_dir():
        return []
    records = (load_record(entry) for entry in sorted(root.iterdir()) if entry.is_dir())
    return [r for r in records if r is not None]
