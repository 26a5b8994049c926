"""A LoRA tuned from a GGUF, written as that GGUF with the merged weights.

export_gguf_over_base(model_id, out_path, settings) -> out_path
    the base file with the LoRA-merged weights in F16 (or Q8_0) and every other tensor and key of
    the base kept: any architecture llama.cpp runs (Gemma 3 too). Training writes one into the
    registry entry, which `backend="auto"` runs.
export_tuned_gguf(model_id, merged_dir, out_path, settings) -> out_path
    the GGUF for a tuned model: the whole-model writer (Llama), else the base file with the merged
    weights. `tunelab export --gguf` calls it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Literal

import numpy as np

from tunelab.config import Settings
from tunelab.errors import ConfigError
from tunelab.export.atomic import atomic_write
from tunelab.export.gguf import _permute, _raw_value, export_gguf
from tunelab.export.merged import base_gguf_for, check_target, tuned_record
from tunelab.inference.templates import chat_template_for
from tunelab.models.registry import model_dir

log = logging.getLogger("tunelab")

_OVER_BASE_TYPES = ("f16", "q8_0")


def _arch_of(reader) -> str:
    field = reader.fields.get("general.architecture")
    if field is None:
        raise ConfigError(f"{reader.data.filename}: no general.architecture key; not a model GGUF")
    return bytes(field.parts[field.data[0]]).decode("utf-8")


def _gguf_layout(base_hf: np.ndarray, base_gguf: np.ndarray, n_heads: tuple[int, ...]):
    """How an HF weight maps onto the GGUF tensor it came from: as it is, or with its Q/K rows re-
    interleaved for llama.cpp's RoPE (llama arch). Decided by the data: the base's dequantized HF copy
    must equal the GGUF's own tensor, dequantized, under the map. None when no known map fits."""
    if base_hf.shape != base_gguf.shape:
        return None
    scale = float(np.abs(base_gguf).max()) or 1.0
    candidates = [lambda w: w]
    candidates += [lambda w, n=n: _permute(w, n) for n in n_heads if base_hf.shape[0] % (2 * n) == 0]
    for layout in candidates:
        if float(np.abs(layout(base_hf) - base_gguf).max()) <= 1e-6 * scale:
            return layout
    return None


def export_gguf_over_base(
    model_id: str,
    out_path: Path,
    settings: Settings,
    *,
    outtype: Literal["f16", "q8_0"] = "f16",
    overwrite: bool = False,
) -> Path:
    """Write LoRA model `model_id`, tuned from a GGUF, as that GGUF with the LoRA merged in.

    Every key of the base file is kept (the training template replaces its chat template), and so is
    every tensor the LoRA leaves alone, quantized as it was (embeddings, norms, ...); each weight the
    LoRA changes is merged in float32 (peft's own merge, on the dequantized base) and written as
    `outtype`: F16, or Q8_0 (half F16's size, one more rounding; benchmarks/tuned.py measures both).
    So it works for every architecture llama.cpp runs (Llama, Gemma 3, ...), and its file stays close
    to the base's size. How each HF weight lies in the GGUF is checked on the data: the dequantized
    base must equal the file's own tensor under the chosen layout, else ConfigError.

    >>> export_gguf_over_base("gemma-3-270m-tuned-1a2b3c4d", Path("model.gguf"), settings)  # doctest: +SKIP
    PosixPath('model.gguf')
    """
    import gguf

    from tunelab.models.resolve import resolve

    if outtype not in _OVER_BASE_TYPES:
        raise ConfigError(f"outtype must be one of {_OVER_BASE_TYPES}, got {outtype!r}")
    record = tuned_record(model_id, settings)
    resolved = resolve(model_id, settings)
    if not record.adapter or resolved.gguf_path is None or resolved.adapter_path is None:
        raise ConfigError(f"{model_id!r} is not a LoRA tuned from a GGUF; use export_merged + export_gguf")
    base_gguf = Path(resolved.gguf_path)
    out_path = Path(out_path).expanduser()
    check_target(out_path, overwrite, [base_gguf, model_dir(settings, model_id)], "file")

    reader = gguf.GGUFReader(str(base_gguf))
    merged = _merged_weights(model_id, resolved.adapter_path, base_gguf, reader, outtype, settings)
    chat_template = chat_template_for(record.template_name, record.template_source)
    with atomic_write(out_path) as tmp:
        _write_over_base(tmp, reader, model_id, chat_template, merged, outtype)
    log.info(
        "wrote %s: %s over %s, %d merged weights in %s",
        out_path,
        model_id,
        base_gguf.name,
        len(merged),
        outtype,
    )
    return out_path


def _merged_weights(
    model_id: str, adapter_path: str, base_gguf: Path, reader, outtype: str, settings: Settings
) -> dict[str, np.ndarray]:
    """GGUF tensor name -> the LoRA-merged weight, in the GGUF's layout and already in `outtype`."""
    import gguf
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper
    from transformers import AutoModelForCausalLM

    from tunelab.models.gguf_cache import dequantized_dir

    arch = _arch_of(reader)
    arch_enum = next((a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch), None)
    if arch_enum is None:
        raise ConfigError(f"{base_gguf}: architecture {arch!r} is unknown to the gguf package")
    n_blocks = int(reader.fields[f"{arch}.block_count"].contents())
    n_heads = tuple(
        int(reader.fields[k].contents())
        for k in (f"{arch}.attention.head_count", f"{arch}.attention.head_count_kv")
        if k in reader.fields and np.ndim(reader.fields[k].contents()) == 0
    )
    names = gguf.get_tensor_name_map(arch_enum, n_blocks)
    base_tensors = {t.name: t for t in reader.tensors}

    # float32, as export_merged: the precision LoRA was trained against
    base_dir = dequantized_dir(base_gguf, settings.home)
    model = AutoModelForCausalLM.from_pretrained(base_dir, dtype=torch.float32)
    model = PeftModel.from_pretrained(model, adapter_path)
    if any(isinstance(m, ModulesToSaveWrapper) for m in model.modules()):
        raise ConfigError(
            f"{model_id}: its adapter trains whole modules besides the LoRA (modules_to_save); "
            "export_merged + llama.cpp's converter handle it"
        )
    merged: dict[str, np.ndarray] = {}
    q8 = gguf.GGMLQuantizationType.Q8_0
    with torch.no_grad():
        for module_name, module in model.named_modules():
            if not isinstance(module, LoraLayer):
                continue
            hf_name = module_name.removeprefix("base_model.model.")
            gguf_name = names.get_name(hf_name)
            tensor = base_tensors.get(f"{gguf_name}.weight") if gguf_name else None
            if tensor is None:
                raise ConfigError(
                    f"{model_id}: the LoRA changes {hf_name}, which has no tensor in {base_gguf}"
                )
            weight = module.get_base_layer().weight
            before = weight.detach().numpy().copy()
            base_data = gguf.quants.dequantize(tensor.data, tensor.tensor_type).reshape(before.shape)
            layout = _gguf_layout(before, base_data, n_heads)
            if layout is None:
                raise ConfigError(
                    f"{model_id}: {hf_name} does not match {tensor.name} of {base_gguf} in any layout "
                    "tunelab knows; export_merged gives the merged weights for llama.cpp's converter"
                )
            module.merge()
            after = layout(weight.detach().numpy())
            if not np.isfinite(after).all() or (outtype == "f16" and np.abs(after).max() > 65504):
                raise ConfigError(f"{hf_name}: merged values beyond F16's range; the LoRA diverged")
            # in its final type at once, so no float32 copy of the model outlives the merge
            if outtype == "f16":
                merged[tensor.name] = np.ascontiguousarray(after, dtype=np.float16)
            else:
                merged[tensor.name] = gguf.quants.quantize(np.ascontiguousarray(after, dtype=np.float32), q8)
    return merged


_NOT_COPIED = ("general.architecture", "general.name", "general.file_type", "general.alignment")


def _write_over_base(
    path: Path, reader, model_id: str, chat_template: str, merged: dict[str, np.ndarray], outtype: str
) -> None:
    """The base file's keys and tensors, with the merged weights and the training chat template."""
    import gguf

    writer = gguf.GGUFWriter(str(path), _arch_of(reader))
    try:
        for key, field in reader.fields.items():
            if key.startswith(("GGUF.", "tokenizer.chat_template")) or key in _NOT_COPIED:
                continue
            writer.add_key_value(key, *_raw_value(field))
        writer.add_name(model_id)
        writer.add_chat_template(chat_template)
        q8 = gguf.GGMLQuantizationType.Q8_0
        for tensor in reader.tensors:
            if tensor.name in merged:
                # F16 as it is; Q8_0 as its bytes, whose shape gives the element shape
                writer.add_tensor(
                    tensor.name, merged[tensor.name], raw_dtype=None if outtype == "f16" else q8
                )
            else:
                # the file's bytes as they are (a quantized tensor's shape follows from its bytes)
                writer.add_tensor(tensor.name, tensor.data, raw_dtype=tensor.tensor_type)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()


def export_tuned_gguf(
    model_id: str, merged_dir: Path, out_path: Path, settings: Settings, *, overwrite: bool = False
) -> Path:
    """The GGUF of tuned `model_id`, whose merged HF copy is `merged_dir` (from `export_merged`).

    A Llama is written whole from `merged_dir` (`export_gguf`); any other architecture tuned with LoRA
    from a GGUF is written as its base file with the merged weights (`export_gguf_over_base`). When
    neither applies, the whole-model writer's refusal is raised: it says what to use instead."""
    try:
        return export_gguf(
            merged_dir, out_path, base_gguf=base_gguf_for(model_id, settings), overwrite=overwrite
        )
    except ConfigError as whole_model_refused:
        try:
            return export_gguf_over_base(model_id, out_path, settings, overwrite=overwrite)
        except ConfigError:
            raise whole_model_refused from None
