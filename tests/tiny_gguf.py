"""The tiny random-weight Llama of `tiny_models.py`, converted to GGUF, so llama.cpp runs the same weights.

The converter is tunelab's own (`tunelab.export.gguf.export_gguf`); here it writes F32, so llama.cpp computes
with exactly the weights transformers has, and greedy answers can be compared token for token.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from tunelab.export.gguf import export_gguf


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


def make_tiny_k_quant_gguf(path: str | Path, *, seed: int = 0) -> Path:
    """The tiny Llama, wide enough for K-quant blocks (256), quantized by llama.cpp itself to Q4_K_M:
    a file with the type mix of the embedded Gemma's (Q4_K, Q6_K, F32 norms)."""
    import ctypes

    import gguf
    import llama_cpp

    from tests.tiny_models import make_tiny_llama

    path = Path(path)
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = make_tiny_llama(Path(tmp) / "hf", seed=seed, hidden_size=256, intermediate_size=512)
        f32 = convert_hf_llama_to_gguf(hf_dir, Path(tmp) / "tiny-f32.gguf")
        params = llama_cpp.llama_model_quantize_default_params()
        params.ftype = llama_cpp.LLAMA_FTYPE_MOSTLY_Q4_K_M
        params.nthread = 1
        rc = llama_cpp.llama_model_quantize(str(f32).encode(), str(path).encode(), ctypes.byref(params))
        assert rc == 0, f"llama_model_quantize failed ({rc})"
    types = {t.tensor_type.name for t in gguf.GGUFReader(path).tensors}
    assert {"Q4_K", "Q6_K"} <= types, types
    return path
