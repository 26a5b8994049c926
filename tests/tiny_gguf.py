"""The tiny random-weight Llama of `tiny_models.py`, converted to GGUF, so llama.cpp runs the same weights.

The converter is tunelab's own (`tunelab.export.export_gguf`); here it writes F32, so llama.cpp computes
with exactly the weights transformers has, and greedy answers can be compared token for token.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tunelab.export import export_gguf


def convert_hf_llama_to_gguf(hf_dir: str | Path, out_path: str | Path, *, add_bos: bool = False) -> Path:
    """Write the HF Llama in `hf_dir` (a `make_tiny_llama` output) as an F32 GGUF at `out_path`."""
    return export_gguf(Path(hf_dir), Path(out_path), outtype="f32", add_bos=add_bos, overwrite=True)


def make_tiny_gguf(path: str | Path, *, hf_dir: str | Path | None = None, seed: int = 0) -> Path:
    """Write the tiny Llama as GGUF at `path`; convert `hf_dir` if given, else make one with `seed`."""
    if hf_dir is not None:
        return convert_hf_llama_to_gguf(hf_dir, path)
    from tests.tiny_models import make_tiny_llama

    with tempfile.TemporaryDirectory() as tmp:
        return convert_hf_llama_to_gguf(make_tiny_llama(Path(tmp) / "hf", seed=seed), path)
