"""Export a fine-tuned model out of tunelab as one standalone Hugging Face model directory.

    export_merged(model_id, out_dir, settings) -> out_dir
        the base's weights (float32; a GGUF base is dequantized) + the LoRA adapter, merged
        (a full fine-tune is re-saved), as safetensors with the tokenizer; the training template
        becomes the tokenizer's chat template, and ``tunelab.json`` is copied in as provenance.

>>> from tunelab.config import load_settings
>>> tuned = "smollm2-135m-instruct-tuned-1234abcd"
>>> merged = export_merged(tuned, Path("out/merged"), load_settings())  # doctest: +SKIP

Every export writes into a temporary sibling and renames it into place (`atomic_write`), so an
interrupted export never leaves a half-written model under the name asked for.
"""

from __future__ import annotations

import logging
from pathlib import Path

from tunelab.config import Settings
from tunelab.errors import ConfigError, ModelNotFoundError
from tunelab.export.atomic import atomic_write
from tunelab.inference.templates import chat_template_for
from tunelab.models.registry import ModelRecord, list_records, load_record, model_dir, save_record

log = logging.getLogger("tunelab")


def tuned_record(model_id: str, settings: Settings) -> ModelRecord:
    """The registry record of `model_id`, or an error saying what the name is instead."""
    from tunelab.models.resolve import resolve

    # Only a bare name is a registry id: a path (an earlier export holds a tunelab.json too) is not.
    is_id = model_id not in ("", ".", "..") and Path(model_id).name == model_id
    record = load_record(model_dir(settings, model_id)) if is_id else None
    if record is not None:
        return record
    tuned = ", ".join(r.model_id for r in list_records(settings)) or "none yet"
    try:
        resolved = resolve(model_id, settings)
    except ModelNotFoundError as exc:
        raise ModelNotFoundError(
            f"no fine-tuned model {model_id!r} to export ({exc}). Fine-tuned models here: {tuned}"
        ) from None
    raise ConfigError(
        f"{model_id!r} is not a fine-tuned model (it resolves to {resolved.name!r} from {resolved.source}, "
        f"with no tunelab.json in the registry), so there is nothing to merge: use it as it is. "
        f"Fine-tuned models here: {tuned}"
    )


def check_target(target: Path, overwrite: bool, protected: list[Path], what: str) -> None:
    """Refuse an output that exists (unless `overwrite`) or that would swallow the model's own files."""
    resolved = target.resolve()
    for keep in protected:
        keep = keep.resolve()
        if resolved == keep or resolved in keep.parents:
            raise ConfigError(f"{target} holds {keep}, which the export reads; choose another output path")
    if not target.exists():
        return
    if what == "directory" and not target.is_dir():
        raise ConfigError(f"{target} exists and is a file; give a directory path for the merged model")
    if what == "file" and target.is_dir():
        raise ConfigError(f"{target} is a directory; give a file path for the GGUF ({target}/model.gguf)")
    empty_dir = target.is_dir() and not any(target.iterdir())
    if not empty_dir and not overwrite:
        raise ConfigError(
            f"{target} already exists and is not empty; choose another path, or pass overwrite=True "
            "(`--overwrite`) to replace it"
        )


def base_gguf_for(model_id: str, settings: Settings) -> Path | None:
    """The GGUF file a fine-tuned model's base came from (its tokenizer is the one to copy), or None.

    For a LoRA this is the resolved model's `gguf_path`; a full fine-tune's registry entry holds HF
    weights, so its record's `base_model` is resolved instead.
    """
    from tunelab.models.resolve import resolve

    record = tuned_record(model_id, settings)
    try:
        return resolve(record.base_model, settings).gguf_path
    except ModelNotFoundError:
        return None


def export_merged(model_id: str, out_dir: Path, settings: Settings, *, overwrite: bool = False) -> Path:
    """Write fine-tuned `model_id` as one standalone Hugging Face model directory; return `out_dir`.

    A LoRA is merged into its base (loaded in float32, a GGUF base from its dequantized copy) with
    peft's `merge_and_unload()`; a full fine-tune is re-saved. The directory holds safetensors weights,
    the tokenizer with the training template as its chat template (so "auto" answers as the registry
    model did), and the registry's ``tunelab.json`` as provenance. Any transformers-based tool loads it;
    `export_gguf` turns it into a GGUF.

    >>> export_merged("tiny-chat-tuned-1a2b3c4d", Path("merged"), load_settings())  # doctest: +SKIP
    PosixPath('merged')
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunelab.models.gguf_cache import dequantized_dir
    from tunelab.models.resolve import resolve

    record = tuned_record(model_id, settings)
    source = model_dir(settings, model_id)
    out_dir = Path(out_dir).expanduser()
    resolved = resolve(model_id, settings)
    protected = [source, settings.home]
    if resolved.hf_path and Path(resolved.hf_path).exists():
        protected.append(Path(resolved.hf_path))
    check_target(out_dir, overwrite, protected, "directory")

    tokenizer = AutoTokenizer.from_pretrained(source)
    if record.adapter:
        from peft import PeftModel

        if resolved.gguf_path is not None:
            base_path = str(dequantized_dir(resolved.gguf_path, settings.home))
        else:
            base_path = resolved.hf_path
        # float32: the precision LoRA was trained against; merging in bf16 would round the small deltas.
        model = AutoModelForCausalLM.from_pretrained(base_path, dtype=torch.float32)
        model = PeftModel.from_pretrained(model, resolved.adapter_path).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
    model.config.use_cache = True  # training turns the KV cache off; inference wants it back
    tokenizer.chat_template = chat_template_for(record.template_name, record.template_source)

    with atomic_write(out_dir) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # A merged model is a full model: its record says so, so it loads from a registry as one.
        save_record(tmp, record.model_copy(update={"method": "full", "merged_from": model_id}))
    log.info("exported %s (%s) merged to %s", model_id, record.method, out_dir)
    return out_dir
