"""tunelab's model registry: one directory per fine-tuned model under ``$TUNELAB_HOME/registry/<id>/``.

This module owns the layout of an entry (`Entry` names every file); nothing else builds those paths.
An entry holds the weights (a LoRA ``adapter/`` or a full HF model), the tokenizer, ``tunelab.json``
(the `ModelRecord` below: base model, template, data hash, hyperparameters, metrics), the per-step
``metrics.jsonl``, ``loss.png``, the held-out examples (``heldout.jsonl``) that `evaluate()` uses, and
for a LoRA on a GGUF base, ``model.gguf`` (the merged model, llama.cpp's fast path).
Copying the directory to another machine's registry moves the model (a LoRA needs its base there too).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field

from tunelab.config import Settings
from tunelab.errors import ModelFileError
from tunelab.export.atomic import atomic_write
from tunelab.training.data import DataReport, Example, load_records

log = logging.getLogger("tunelab")

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


@dataclass(frozen=True)
class Entry:
    """The files of one registry entry (or of an entry being written, in a staging directory)."""

    path: Path

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def record_file(self) -> Path:
        return self.path / RECORD_FILE

    @property
    def adapter_dir(self) -> Path:  # a LoRA's adapter (peft's save_pretrained)
        return self.path / "adapter"

    @property
    def fast_gguf(self) -> Path:  # the merged model as GGUF, run by llama.cpp
        return self.path / "model.gguf"

    @property
    def heldout_file(self) -> Path:  # the examples kept back from training, as chat messages
        return self.path / "heldout.jsonl"

    @property
    def metrics_file(self) -> Path:  # one JSON line per logged step
        return self.path / "metrics.jsonl"

    @property
    def loss_plot(self) -> Path:
        return self.path / "loss.png"

    @property
    def is_hf_model(self) -> bool:  # full weights in Hugging Face layout (a full fine-tune, a merge)
        return (self.path / "config.json").exists()

    def record(self) -> ModelRecord | None:
        return load_record(self.path)

    def write_heldout(self, examples: list[Example]) -> None:
        with open(self.heldout_file, "w", encoding="utf-8") as f:
            for example in examples:
                row = {"messages": example.messages, "source": example.source}
                if example.expected:
                    row["answer"] = example.expected
                f.write(json.dumps(row, ensure_ascii=False) + "\n")

    def read_heldout(self) -> DataReport:
        """The held-out examples, each naming where it came from in the training data (not this copy)."""
        report = load_records(self.heldout_file)
        lines = [line for line in self.heldout_file.read_text(encoding="utf-8").split("\n") if line.strip()]
        for example, line in zip(report.examples, lines):
            example.source = json.loads(line).get("source") or example.source
        return report


def registry_dir(settings: Settings) -> Path:
    return settings.home / "registry"


def model_dir(settings: Settings, model_id: str) -> Path:
    return registry_dir(settings) / model_id


def entry(settings: Settings, model_id: str) -> Entry:
    return Entry(model_dir(settings, model_id))


def save_record(directory: Path, record: ModelRecord) -> None:
    """Write the record whole or not at all: a crash or a full disk mid-write leaves the previous one."""
    with atomic_write(Entry(directory).record_file) as partial:
        partial.write_text(record.model_dump_json(indent=2) + "\n", encoding="utf-8")


def load_record(directory: Path) -> ModelRecord | None:
    """The record of a registry directory, or None when it has none (a plain HF model copied there).
    A damaged record raises ModelFileError naming the file."""
    path = directory / RECORD_FILE
    if not path.exists():
        return None
    try:
        return ModelRecord.model_validate(json.loads(path.read_text(encoding="utf-8")))
    except (ValueError, UnicodeDecodeError) as exc:  # JSONDecodeError and ValidationError are ValueErrors
        reason = str(exc).splitlines()[0]
        raise ModelFileError(
            f"{path}: the registry entry {directory.name!r} is damaged ({reason}); "
            "remove its folder or train it again"
        ) from None


def list_entries(settings: Settings) -> list[Entry]:
    """Every usable model in the registry, by name: entries with a record, and plain HF models copied
    there. A damaged entry (a record that cannot be read) is left out with a warning naming it."""
    root = registry_dir(settings)
    if not root.is_dir():
        return []
    entries = (Entry(path) for path in sorted(root.iterdir()) if path.is_dir())
    return [e for e in entries if (e.record_file.exists() or e.is_hf_model) and _readable(e)]


def _readable(entry: Entry) -> bool:
    try:
        entry.record()
    except ModelFileError as exc:
        log.warning("%s", exc)
        return False
    return True


def list_records(settings: Settings) -> list[ModelRecord]:
    records = (entry.record() for entry in list_entries(settings))
    return [r for r in records if r is not None]
