"""A Llama-architecture Hugging Face model (an `export_merged` directory) as a GGUF that llama.cpp runs.

    export_gguf(hf_dir, out_path, base_gguf=...) -> out_path
        F16 matrices, F32 norms. With ``base_gguf`` (the tuned model's base was a GGUF), the tokenizer
        metadata is copied from it byte for byte, so the export tokenizes exactly as the original file.

Other architectures: `export_gguf_over_base` (a LoRA on a GGUF base), or llama.cpp's converter.

>>> base = base_gguf_for(tuned, settings)  # doctest: +SKIP
>>> export_gguf(Path("out/merged"), Path("out/model.gguf"), base_gguf=base)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tunelab.errors import ConfigError
from tunelab.export.atomic import atomic_write
from tunelab.export.merged import check_target

log = logging.getLogger("tunelab")

SUPPORTED_GGUF_ARCHITECTURES = ("LlamaForCausalLM",)

_LAYER_TENSORS = {
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

# general.* keys of the base file that still describe the tuned model (its license binds the derivative).
_GENERAL_KEYS_KEPT = ("general.license", "general.basename", "general.size_label", "general.languages")


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    # HF stores Q/K rows for rotate_half RoPE (first half, second half); llama.cpp's llama arch
    # rotates interleaved pairs, so each head's rows are re-interleaved (convert_hf_to_gguf's permute).
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _unsupported(hf_dir: Path, why: str) -> ConfigError:
    return ConfigError(
        f"{hf_dir}: {why}. export_gguf writes {', '.join(SUPPORTED_GGUF_ARCHITECTURES)} models with "
        "default RoPE; for the rest, llama.cpp's converter works on this merged directory: "
        f"`python convert_hf_to_gguf.py {hf_dir} --outfile model.gguf --outtype f16`"
    )


def _llama_config(hf_dir: Path) -> dict[str, Any]:
    """config.json, checked to be a Llama that llama.cpp's `llama` architecture runs unchanged."""
    path = hf_dir / "config.json"
    if not path.exists():
        raise ConfigError(f"{hf_dir} has no config.json; give a Hugging Face model directory")
    cfg = json.loads(path.read_text())
    architectures = cfg.get("architectures") or [cfg.get("model_type", "unknown")]
    if architectures[0] not in SUPPORTED_GGUF_ARCHITECTURES:
        raise _unsupported(hf_dir, f"the architecture is {architectures[0]}")
    rope = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    if rope.get("rope_type", rope.get("type", "default")) != "default":
        raise _unsupported(hf_dir, f"RoPE scaling {rope.get('rope_type', rope.get('type'))!r} is not written")
    if cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise _unsupported(hf_dir, "attention/MLP biases are not written")
    if cfg.get("hidden_act", "silu") != "silu":
        raise _unsupported(hf_dir, f"the activation is {cfg['hidden_act']!r}, not silu")
    return cfg


def _chat_template_of(hf_dir: Path) -> str | None:
    """The HF directory's chat template (transformers 5 writes chat_template.jinja; older, the config)."""
    jinja = hf_dir / "chat_template.jinja"
    if jinja.exists():
        return jinja.read_text(encoding="utf-8")
    config = hf_dir / "tokenizer_config.json"
    template = json.loads(config.read_text()).get("chat_template") if config.exists() else None
    if isinstance(template, list):  # named templates: the default one
        template = next((t["template"] for t in template if t.get("name") == "default"), None)
    return template if isinstance(template, str) else None


def _raw_value(field) -> tuple[Any, Any, Any]:
    """(value, type, sub_type) of a GGUFReader field, strings as raw bytes so they copy byte for byte."""
    from gguf import GGUFValueType

    main = field.types[0]
    if main == GGUFValueType.ARRAY:
        sub = field.types[-1]
        if sub == GGUFValueType.STRING:
            return [bytes(field.parts[i]) for i in field.data], main, sub
        return field.contents(), main, sub
    if main == GGUFValueType.STRING:
        return bytes(field.parts[field.data[0]]), main, None
    return field.contents(), main, None


def _tokenizer_from_gguf(
    writer, base_gguf: Path, vocab_size: int, chat_template: str | None, add_bos: bool | None
) -> None:
    """Copy every tokenizer.* key (and the general.* keys that still hold) from the base GGUF."""
    from gguf import GGUFReader

    reader = GGUFReader(str(base_gguf))
    tokens = reader.fields.get("tokenizer.ggml.tokens")
    if tokens is None:
        raise ConfigError(f"{base_gguf} has no tokenizer (tokenizer.ggml.tokens); export without base_gguf")
    if len(tokens.data) != vocab_size:
        raise ConfigError(
            f"{base_gguf} has {len(tokens.data)} tokens but the model has {vocab_size} embedding rows: "
            "it is not this model's base; pass the GGUF the model was tuned from, or none"
        )
    for key, field in reader.fields.items():
        if chat_template is not None and key.startswith("tokenizer.chat_template"):
            continue  # the training template replaces the base's
        if key == "tokenizer.ggml.add_bos_token" and add_bos is not None:
            continue
        if key.startswith("tokenizer.") or key in _GENERAL_KEYS_KEPT:
            writer.add_key_value(key, *_raw_value(field))
    if add_bos is not None:
        writer.add_add_bos_token(add_bos)
    if chat_template is not None:
        writer.add_chat_template(chat_template)


def _pre_tokenizer_name(pre: dict[str, Any] | None) -> str | None:
    """llama.cpp's name for a byte-level BPE pre-tokenizer, or None when it is not one it has."""
    if not pre:
        return None
    steps = pre.get("pretokenizers", []) if pre.get("type") == "Sequence" else [pre]
    kinds = [s.get("type") for s in steps]
    byte_level = steps[-1] if kinds and kinds[-1] == "ByteLevel" else None
    if byte_level is None or not byte_level.get("use_regex", True) or byte_level.get("add_prefix_space"):
        return None
    if kinds == ["ByteLevel"]:
        return "gpt-2"  # the GPT-2 split regex, which ByteLevel(use_regex=True) applies
    if kinds == ["Digits", "ByteLevel"] and steps[0].get("individual_digits"):
        return "smollm"  # each digit alone, then GPT-2's regex (SmolLM/SmolLM2 from the hub)
    return None


def _tokenizer_from_json(writer, hf_dir: Path, vocab_size: int, chat_template: str | None, add_bos) -> None:
    """A byte-level BPE vocabulary ("gpt2" in GGUF terms) from tokenizer.json."""
    import gguf
    from transformers import AutoTokenizer

    from tunelab.inference.backends.transformers_backend import tokenizer_adds_bos

    path = hf_dir / "tokenizer.json"
    if not path.exists():
        raise ConfigError(
            f"{hf_dir} has no tokenizer.json; pass base_gguf= (the GGUF the model was tuned from) to copy "
            "its tokenizer, or use llama.cpp's convert_hf_to_gguf.py"
        )
    tok = json.loads(path.read_text(encoding="utf-8"))
    model = tok.get("model", {})
    pre = _pre_tokenizer_name(tok.get("pre_tokenizer"))
    if model.get("type") != "BPE" or (tok.get("decoder") or {}).get("type") != "ByteLevel" or pre is None:
        raise ConfigError(
            f"{path}: only byte-level BPE tokenizers (GPT-2 style, as SmolLM2's) are written from "
            f"tokenizer.json, and this one is {model.get('type')} with pre-tokenizer "
            f"{(tok.get('pre_tokenizer') or {}).get('type')}. Pass base_gguf= to copy a GGUF's tokenizer, "
            "or use llama.cpp's convert_hf_to_gguf.py on this directory"
        )
    hf = AutoTokenizer.from_pretrained(hf_dir)
    vocab = dict(model["vocab"])
    added = {t["content"]: t for t in tok.get("added_tokens", [])}
    vocab.update({text: t["id"] for text, t in added.items()})
    if max(vocab.values()) >= vocab_size:
        top = max(vocab.values())
        raise ConfigError(f"{path}: token ids reach {top}, past the model's {vocab_size} embedding rows")
    # Embedding rows past the tokenizer (padded vocabularies) get placeholder tokens, as llama.cpp's does.
    tokens = [f"[PAD{i}]" for i in range(vocab_size)]
    types = [gguf.TokenType.UNUSED] * vocab_size
    for text, i in vocab.items():
        tokens[i] = text
        special = text in added and added[text].get("special")
        types[i] = (
            gguf.TokenType.CONTROL
            if special
            else gguf.TokenType.USER_DEFINED
            if text in added
            else gguf.TokenType.NORMAL
        )
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(pre)
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges([m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])])
    for setter, token_id in (
        (writer.add_bos_token_id, hf.bos_token_id),
        (writer.add_eos_token_id, hf.eos_token_id),
        (writer.add_unk_token_id, hf.unk_token_id),
        (writer.add_pad_token_id, hf.pad_token_id),
    ):
        if token_id is not None:
            setter(token_id)
    writer.add_add_bos_token(tokenizer_adds_bos(hf) if add_bos is None else add_bos)
    if chat_template is not None:
        writer.add_chat_template(chat_template)


def _safetensors_files(hf_dir: Path) -> list[Path]:
    files = sorted(hf_dir.glob("*.safetensors"))
    if not files:
        raise ConfigError(f"{hf_dir} has no .safetensors weights; save the model with save_pretrained first")
    return files


def _gguf_tensors(hf_dir: Path, cfg: dict[str, Any]) -> Iterator[tuple[str, str, Path]]:
    """(GGUF name, HF name, file) of each tensor to write, in file order; tied lm_head left out."""
    from safetensors import safe_open

    for file in _safetensors_files(hf_dir):
        with safe_open(str(file), framework="pt") as f:
            for name in f.keys():  # noqa: SIM118 - safe_open has no __iter__
                if name == "model.embed_tokens.weight":
                    yield "token_embd.weight", name, file
                elif name == "model.norm.weight":
                    yield "output_norm.weight", name, file
                elif name == "lm_head.weight":
                    if not cfg.get("tie_word_embeddings"):
                        yield "output.weight", name, file
                    # tied: llama.cpp reuses token_embd when output.weight is absent
                elif name.startswith("model.layers.") and name.endswith(".weight"):
                    _, _, layer, rest = name.split(".", 3)
                    part = rest.removesuffix(".weight")
                    if part not in _LAYER_TENSORS:
                        raise _unsupported(hf_dir, f"tensor {name} has no place in llama.cpp's llama layout")
                    yield f"blk.{layer}.{_LAYER_TENSORS[part]}.weight", name, file
                elif "rotary_emb" not in name:  # inv_freq buffers are recomputed by llama.cpp
                    raise _unsupported(hf_dir, f"tensor {name} has no place in llama.cpp's llama layout")


def _add_llama_hparams(writer, cfg: dict[str, Any], f16: bool) -> None:
    import gguf

    n_head = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    rope = cfg.get("rope_parameters") or {}
    writer.add_context_length(cfg["max_position_embeddings"])
    writer.add_embedding_length(cfg["hidden_size"])
    writer.add_block_count(cfg["num_hidden_layers"])
    writer.add_feed_forward_length(cfg["intermediate_size"])
    writer.add_head_count(n_head)
    writer.add_head_count_kv(cfg.get("num_key_value_heads") or n_head)
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(float(rope.get("rope_theta", cfg.get("rope_theta", 10000.0))))
    writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
    writer.add_vocab_size(cfg["vocab_size"])
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)


def _converted(hf_name: str, file: Path, cfg: dict[str, Any], f16: bool) -> np.ndarray:
    """One HF tensor as llama.cpp wants it: Q/K rows in its RoPE layout, in the file's type."""
    import torch
    from safetensors import safe_open

    with safe_open(str(file), framework="pt") as f:
        data = f.get_tensor(hf_name).to(torch.float32).numpy()
    n_head = cfg["num_attention_heads"]
    if hf_name.endswith("self_attn.q_proj.weight"):
        data = _permute(data, n_head)
    elif hf_name.endswith("self_attn.k_proj.weight"):
        data = _permute(data, cfg.get("num_key_value_heads") or n_head)
    # llama.cpp's own converter keeps 1-D tensors (norms) in F32: they are tiny, and F16 norms
    # would round every activation they scale.
    dtype = np.float16 if f16 and data.ndim > 1 else np.float32
    out = np.ascontiguousarray(data.astype(dtype))
    if dtype == np.float16 and not np.isfinite(out).all():
        raise ConfigError(f"{hf_name} has values beyond F16's range; export with outtype='f32'")
    return out


def export_gguf(
    hf_dir: Path,
    out_path: Path,
    *,
    base_gguf: Path | None = None,
    outtype: Literal["f16", "f32"] = "f16",
    add_bos: bool | None = None,
    overwrite: bool = False,
) -> Path:
    """Write the Llama-architecture model in `hf_dir` as a GGUF at `out_path`; return `out_path`.

    Tensors: with `outtype="f16"` the 2-D weights are F16 (half the size; on the 135M SmolLM2 the greedy
    text matches the float32 model) and the 1-D norms stay F32, as llama.cpp's converter does;
    `outtype="f32"` writes everything in F32 (bit-faithful to the HF weights). Q/K rows are permuted to
    llama.cpp's RoPE layout; GQA and tied embeddings are kept as they are.

    Tokenizer: with `base_gguf` (the GGUF the model was tuned from, see `base_gguf_for`) every
    ``tokenizer.*`` key is copied from it byte for byte, so tokens match the original file exactly;
    otherwise it is built from ``tokenizer.json`` (byte-level BPE only). Either way the HF directory's
    chat template (the training template, after `export_merged`) becomes ``tokenizer.chat_template``.
    `add_bos` overrides whether llama.cpp puts BOS in front of a prompt (default: as the tokenizer does).

    Other architectures raise ConfigError; llama.cpp's ``convert_hf_to_gguf.py`` converts them.

    >>> base = base_gguf_for("smollm2-135m-instruct-tuned-1234abcd", settings)  # doctest: +SKIP
    >>> export_gguf(Path("merged"), Path("model.gguf"), base_gguf=base)  # doctest: +SKIP
    PosixPath('model.gguf')
    """
    import gguf
    from safetensors import safe_open

    hf_dir, out_path = Path(hf_dir).expanduser(), Path(out_path).expanduser()
    if outtype not in ("f16", "f32"):
        raise ConfigError(f"outtype must be 'f16' or 'f32', got {outtype!r}")
    cfg = _llama_config(hf_dir)
    protected = [hf_dir] + ([Path(base_gguf)] if base_gguf else [])
    check_target(out_path, overwrite, protected, "file")
    if base_gguf is not None and not Path(base_gguf).is_file():
        raise ConfigError(f"base_gguf {base_gguf} is not a file")

    chat_template = _chat_template_of(hf_dir)
    f16 = outtype == "f16"
    tensors = list(_gguf_tensors(hf_dir, cfg))
    if cfg.get("tie_word_embeddings") is False and "output.weight" not in {t[0] for t in tensors}:
        raise ConfigError(f"{hf_dir}: the embeddings are not tied but there is no lm_head.weight")

    with atomic_write(out_path) as tmp:
        writer = gguf.GGUFWriter(str(tmp), "llama")
        try:
            writer.add_name(out_path.stem)
            _add_llama_hparams(writer, cfg, f16)
            if base_gguf is not None:
                _tokenizer_from_gguf(writer, Path(base_gguf), cfg["vocab_size"], chat_template, add_bos)
            else:
                _tokenizer_from_json(writer, hf_dir, cfg["vocab_size"], chat_template, add_bos)

            # Two passes, so only one tensor is in memory at a time: shapes first (the header needs them,
            # read from the safetensors index without loading), then each tensor's data.
            for gguf_name, hf_name, file in tensors:
                with safe_open(str(file), framework="pt") as f:
                    shape = tuple(f.get_slice(hf_name).get_shape())
                dtype = np.dtype(np.float16 if f16 and len(shape) > 1 else np.float32)
                writer.add_tensor_info(gguf_name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
            writer.write_header_to_file()
            writer.write_kv_data_to_file()
            writer.write_ti_data_to_file()
            for _, hf_name, file in tensors:
                writer.write_tensor_data(_converted(hf_name, file, cfg, f16))
            writer.close()
        finally:
            writer.close()
    log.info("wrote %s (%s, %d tensors)", out_path, outtype, len(tensors))
    return out_path
