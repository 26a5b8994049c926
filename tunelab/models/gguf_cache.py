"""A GGUF's torch copy: dequantized once by transformers, saved as safetensors, loaded in seconds after.

The inference engine (transformers backend), training and export all load a GGUF model through
`dequantized_dir`. The copy lives under ``$TUNELAB_HOME/cache/dequantized/``, keyed by the file's path,
size and modification time, so a changed file gets a new copy.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from functools import partial
from pathlib import Path

from tunelab.errors import ModelFileError
from tunelab.export.atomic import atomic_write


def _cache_key(gguf_path: Path) -> str:
    stat = gguf_path.stat()
    ident = f"{gguf_path.resolve()}:{stat.st_size}:{stat.st_mtime_ns}"
    return f"{gguf_path.stem}-{hashlib.sha256(ident.encode()).hexdigest()[:12]}"


@contextmanager
def progress_bars_in_a_terminal_only() -> Iterator[None]:
    """transformers' progress bars (converting a GGUF's tensors, loading and writing weights) are off
    inside this block unless stderr is a terminal: in a log each tick is one more carriage-return update.

    The GGUF converter uses tqdm itself, not transformers' switchable tqdm, so it is switched off here too.
    """
    if sys.stderr.isatty():
        yield
        return
    from transformers import modeling_gguf_pytorch_utils as gguf_loading
    from transformers.utils import logging

    was_on, converter_tqdm = logging.is_progress_bar_enabled(), gguf_loading.tqdm
    logging.disable_progress_bar()
    gguf_loading.tqdm = partial(converter_tqdm, disable=True)
    try:
        yield
    finally:
        gguf_loading.tqdm = converter_tqdm
        if was_on:
            logging.enable_progress_bar()


def dequantized_dir(gguf_path: Path, home: Path) -> Path:
    """The torch copy of a GGUF, made on first use."""
    target = home / "cache" / "dequantized" / _cache_key(gguf_path)
    if (target / "config.json").exists():
        return target
    from rich.console import Console
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # one line, not a live spinner: the converter's own tqdm bar draws below it (a rich Live display
    # would take over stderr, and rich 14 then swallows the bar's carriage-return updates)
    Console(stderr=True).print(f"[bold]dequantizing {gguf_path.name} to torch (once; cached in {target})")
    with progress_bars_in_a_terminal_only():
        try:
            tokenizer = AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
            model = AutoModelForCausalLM.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)
        except Exception as exc:
            raise ModelFileError(f"{gguf_path}: transformers could not load this GGUF ({exc})") from None
        # The weights are plain dequantized tensors now; drop the GGUF "quantizer" marker that
        # makes save_pretrained refuse, so the copy loads like any HF model.
        model.hf_quantizer = None
        model.is_quantized = False
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        with atomic_write(target) as tmp:
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    return target
