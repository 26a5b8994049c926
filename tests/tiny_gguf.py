"""The tiny random-weight Llama of `tiny_models.py`, converted to GGUF, so llama.cpp runs the same weights.

A minimal version of llama.cpp's convert_hf_to_gguf.py for exactly this model: F32 tensors, a
byte-level BPE ("gpt2") vocabulary, the ChatML template.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import numpy as np

_TENSOR_NAMES = {
    "input_layernorm": "attn_norm",
    "self_attn.q_proj": "attn_q",
    "self_attn.k_proj": "attn_k",
    "self_attn.v_proj": "attn_v",
    "self_attn.o_proj": "attn_output",
    "post_attention_layernorm": "ffn_norm",
    "mlp.gate_proj": "ffn_gate",
    "mlp.up_proj": "ffn_up",
    "mlp.down_proj": "ffn_down",
}


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # HF stores Q/K rows for rotate_half RoPE (first half, second half); llama.cpp's llama arch
    # rotates interleaved pairs, so each head's rows are re-interleaved (convert_hf_to_gguf's permute).
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def convert_hf_llama_to_gguf(hf_dir: str | Path, out_path: str | Path, *, add_bos: bool = False) -> Path:
    """Write the HF Llama in `hf_dir` (a `make_tiny_llama` output) as an F32 GGUF at `out_path`."""
    import gguf
    from safetensors.numpy import load_file

    hf_dir, out_path = Path(hf_dir), Path(out_path)
    cfg = json.loads((hf_dir / "config.json").read_text())
    tok = json.loads((hf_dir / "tokenizer.json").read_text())
    n_head, n_head_kv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    rope_theta = (cfg.get("rope_parameters") or {}).get("rope_theta", cfg.get("rope_theta", 10000.0))

    w = gguf.GGUFWriter(str(out_path), "llama")
    w.add_name("tiny-llama")
    w.add_context_length(cfg["max_position_embeddings"])
    w.add_embedding_length(cfg["hidden_size"])
    w.add_block_count(cfg["num_hidden_layers"])
    w.add_feed_forward_length(cfg["intermediate_size"])
    w.add_head_count(n_head)
    w.add_head_count_kv(n_head_kv)
    w.add_key_length(head_dim)
    w.add_value_length(head_dim)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(float(rope_theta))
    w.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    w.add_vocab_size(cfg["vocab_size"])
    w.add_file_type(gguf.LlamaFileType.ALL_F32)

    vocab = dict(tok["model"]["vocab"])
    specials = {t["content"] for t in tok["added_tokens"] if t["special"]}
    vocab.update({t["content"]: t["id"] for t in tok["added_tokens"]})
    tokens = [""] * cfg["vocab_size"]
    for text, i in vocab.items():
        tokens[i] = text
    types = [gguf.TokenType.CONTROL if t in specials else gguf.TokenType.NORMAL for t in tokens]
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("gpt-2")  # the GPT-2 split regex, which HF's ByteLevel(use_regex=True) uses
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(cfg["bos_token_id"])
    w.add_eos_token_id(cfg["eos_token_id"])
    if cfg.get("pad_token_id") is not None:
        w.add_pad_token_id(cfg["pad_token_id"])
    w.add_add_bos_token(add_bos)
    template_file = hf_dir / "chat_template.jinja"
    if template_file.exists():
        w.add_chat_template(template_file.read_text())

    weights = load_file(str(hf_dir / "model.safetensors"))
    for name, data in weights.items():
        data = data.astype(np.float32)
        if name == "model.embed_tokens.weight":
            new = "token_embd.weight"
        elif name == "model.norm.weight":
            new = "output_norm.weight"
        elif name == "lm_head.weight":
            if cfg.get("tie_word_embeddings"):
                continue  # llama.cpp reuses token_embd when output.weight is absent
            new = "output.weight"
        else:
            _, _, layer, rest = name.split(".", 3)
            part = rest.removesuffix(".weight")
            new = f"blk.{layer}.{_TENSOR_NAMES[part]}.weight"
            if part == "self_attn.q_proj":
                data = _permute(data, n_head)
            elif part == "self_attn.k_proj":
                data = _permute(data, n_head_kv)
        w.add_tensor(new, np.ascontiguousarray(data))

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out_path


def make_tiny_gguf(path: str | Path, *, hf_dir: str | Path | None = None, seed: int = 0) -> Path:
    """Write the tiny Llama as GGUF at `path`; convert `hf_dir` if given, else make one with `seed`."""
    if hf_dir is not None:
        return convert_hf_llama_to_gguf(hf_dir, path)
    from tests.tiny_models import make_tiny_llama

    with tempfile.TemporaryDirectory() as tmp:
        return convert_hf_llama_to_gguf(make_tiny_llama(Path(tmp) / "hf", seed=seed), path)
