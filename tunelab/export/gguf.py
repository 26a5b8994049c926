"""Export a fine-tuned model out of tunelab: merged Hugging Face weights, and a GGUF for llama.cpp.

    export_merged(model_id, out_dir, settings) -> out_dir
        the base's weights (float32; a GGUF base is dequantized) + the LoRA adapter, merged
        (a full fine-tune is re-saved), as safetensors with the tokenizer; the training template
        becomes the tokenizer's chat template, and ``tunelab.json`` is copied in as provenance.
    export_gguf(hf_dir, out_path, base_gguf=...) -> out_path
        a Llama-architecture HF directory as a GGUF that llama.cpp runs: F16 matrices, F32 norms.
        With ``base_gguf`` (the tuned model's base was a GGUF), the tokenizer metadata is copied from
        it byte for byte, so the export tokenizes exactly as the original file.
    export_gguf_over_base(model_id, out_path, settings) -> out_path
        a LoRA tuned from a GGUF, written as that GGUF with the merged weights in F16 (or Q8_0) and
        every other tensor and key of the base kept: any architecture llama.cpp runs (Gemma 3 too).
        Training writes one into the registry entry, which `backend="auto"` runs.

>>> from tunelab.config import load_settings
>>> settings = load_settings()
>>> tuned = "smollm2-135m-instruct-tuned-1234abcd"
>>> merged = export_merged(tuned, Path("out/merged"), settings)  # doctest: +SKIP
>>> export_gguf(merged, Path("out/model.gguf"), base_gguf=base_gguf_for(tuned, settings))  # doctest: +SKIP

Both write into a temporary sibling and rename it into place, so an interrupted export never leaves
a half-written model under the name asked for.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np

from tunelab.config import Settings
from tunelab.errors import ConfigError, ModelNotFoundError
from tunelab.inference.templates import BUILTIN_TEMPLATES, builtin
from tunelab.models.registry import ModelRecord, list_records, load_record, model_dir, save_record

log = logging.getLogger("tunelab")

SUPPORTED_GGUF_ARCHITECTURES = ("LlamaForCausalLM",)

# -- the training template as a chat template -------------------------------------------------------

# Messages-based equivalents of tunelab's built-in prompt templates: for a system message and one user
# turn with add_generation_prompt they render exactly what the built-in renders (tested), and they go on
# to later turns the way the family does, each answer closed as training closed it.
_MESSAGES_TEMPLATES = {
    "raw": (
        "{% for message in messages %}{% if message['role'] == 'user' %}{{ message['content'] }}"
        "{% elif message['role'] == 'assistant' %}{{ message['content'] }}{{ eos_token }}{% endif %}"
        "{% endfor %}"
    ),
    "llama2": (
        "{% if messages and messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}"
        "{% set turns = messages[1:] %}{% else %}{% set system = '' %}{% set turns = messages %}{% endif %}"
        "{% for message in turns %}{% if message['role'] == 'user' %}"
        "{% if loop.first and system %}{{ '[INST] <<SYS>>\\n' + system + '\\n<</SYS>>\\n\\n' }}"
        "{{ message['content'] + ' [/INST]' }}{% else %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
        "{% endif %}{% elif message['role'] == 'assistant' %}"
        "{{ ' ' + message['content'].lstrip() + eos_token }}{% endif %}{% endfor %}"
    ),
    "chatml": (
        "{% for message in messages %}"
        "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{% endfor %}"
        "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
    ),
}

# A user's own prompt-style Jinja (written for `prompt` and `system`) is kept as it is, fed from the
# last user message: it only ever described one turn, and this renders that turn exactly.
_PROMPT_STYLE_PREFIX = (
    "{% set system = messages[0]['content'] if messages and messages[0]['role'] == 'system' else '' %}"
    "{% set prompt = (messages | selectattr('role', 'equalto', 'user') | list | last)['content'] %}"
)


def chat_template_for(template_name: str, template_source: str) -> str:
    """The messages-based Jinja chat template that renders prompts as training did.

    A chat template (it reads ``messages``) is returned unchanged; tunelab's built-in prompt templates
    (``raw``, ``llama2``, ``chatml``) get their messages-based equivalent, and any other prompt-style
    Jinja is wrapped so that ``prompt``/``system`` come from the messages.

    >>> chat_template_for("llama2", builtin("llama2").source).startswith("{% if messages")
    True
    """
    if "messages" in template_source:
        return template_source
    if template_name in BUILTIN_TEMPLATES and template_source == builtin(template_name).source:
        return _MESSAGES_TEMPLATES[template_name]
    return _PROMPT_STYLE_PREFIX + template_source


# -- merged Hugging Face weights ------------------------------------------------------------------


def _tuned_record(model_id: str, settings: Settings) -> ModelRecord:
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


def _check_target(target: Path, overwrite: bool, protected: list[Path], what: str) -> None:
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


def _tmp_sibling(target: Path, tag: str) -> Path:
    # In the same directory as the target, so the final rename never crosses a file system.
    return target.with_name(f".{target.name}.{tag}-{os.getpid()}")


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename `tmp` to `target`; an old `target` is moved aside first and deleted only afterwards."""
    old = None
    if target.exists():
        old = _tmp_sibling(target, "old")
        shutil.rmtree(old, ignore_errors=True)
        target.rename(old)
    tmp.rename(target)
    if old is not None:
        if old.is_dir():
            shutil.rmtree(old, ignore_errors=True)
        else:
            old.unlink(missing_ok=True)


def base_gguf_for(model_id: str, settings: Settings) -> Path | None:
    """The GGUF file a fine-tuned model's base came from (its tokenizer is the one to copy), or None.

    For a LoRA this is the resolved model's `gguf_path`; a full fine-tune's registry entry holds HF
    weights, so its record's `base_model` is resolved instead.
    """
    from tunelab.models.resolve import resolve

    record = _tuned_record(model_id, settings)
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

    from tunelab.inference.backends.transformers_backend import dequantized_dir
    from tunelab.models.resolve import resolve

    record = _tuned_record(model_id, settings)
    source = model_dir(settings, model_id)
    out_dir = Path(out_dir).expanduser()
    resolved = resolve(model_id, settings)
    protected = [source, settings.home]
    if resolved.hf_path and Path(resolved.hf_path).exists():
        protected.append(Path(resolved.hf_path))
    _check_target(out_dir, overwrite, protected, "directory")

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

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(out_dir, "tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        # A merged model is a full model: its record says so, so it loads from a registry as one.
        save_record(tmp, record.model_copy(update={"method": "full", "merged_from": model_id}))
        _move_into_place(tmp, out_dir)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("exported %s (%s) merged to %s", model_id, record.method, out_dir)
    return out_dir


# -- GGUF ------------------------------------------------------------------------------------------

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
    import torch
    from safetensors import safe_open

    hf_dir, out_path = Path(hf_dir).expanduser(), Path(out_path).expanduser()
    if outtype not in ("f16", "f32"):
        raise ConfigError(f"outtype must be 'f16' or 'f32', got {outtype!r}")
    cfg = _llama_config(hf_dir)
    protected = [hf_dir] + ([Path(base_gguf)] if base_gguf else [])
    _check_target(out_path, overwrite, protected, "file")
    if base_gguf is not None and not Path(base_gguf).is_file():
        raise ConfigError(f"base_gguf {base_gguf} is not a file")

    n_head = cfg["num_attention_heads"]
    n_head_kv = cfg.get("num_key_value_heads") or n_head
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // n_head
    rope = cfg.get("rope_parameters") or {}
    rope_theta = rope.get("rope_theta", cfg.get("rope_theta", 10000.0))
    chat_template = _chat_template_of(hf_dir)
    f16 = outtype == "f16"
    tensors = list(_gguf_tensors(hf_dir, cfg))
    if cfg.get("tie_word_embeddings") is False and "output.weight" not in {t[0] for t in tensors}:
        raise ConfigError(f"{hf_dir}: the embeddings are not tied but there is no lm_head.weight")

    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(out_path, "tmp")
    writer = gguf.GGUFWriter(str(tmp), "llama")
    try:
        writer.add_name(out_path.stem)
        writer.add_context_length(cfg["max_position_embeddings"])
        writer.add_embedding_length(cfg["hidden_size"])
        writer.add_block_count(cfg["num_hidden_layers"])
        writer.add_feed_forward_length(cfg["intermediate_size"])
        writer.add_head_count(n_head)
        writer.add_head_count_kv(n_head_kv)
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
        writer.add_rope_dimension_count(head_dim)
        writer.add_rope_freq_base(float(rope_theta))
        writer.add_layer_norm_rms_eps(cfg["rms_norm_eps"])
        writer.add_vocab_size(cfg["vocab_size"])
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if f16 else gguf.LlamaFileType.ALL_F32)
        if base_gguf is not None:
            _tokenizer_from_gguf(writer, Path(base_gguf), cfg["vocab_size"], chat_template, add_bos)
        else:
            _tokenizer_from_json(writer, hf_dir, cfg["vocab_size"], chat_template, add_bos)

        def converted(hf_name: str, file: Path) -> np.ndarray:
            with safe_open(str(file), framework="pt") as f:
                data = f.get_tensor(hf_name).to(torch.float32).numpy()
            if hf_name.endswith("self_attn.q_proj.weight"):
                data = _permute(data, n_head)
            elif hf_name.endswith("self_attn.k_proj.weight"):
                data = _permute(data, n_head_kv)
            # llama.cpp's own converter keeps 1-D tensors (norms) in F32: they are tiny, and F16 norms
            # would round every activation they scale.
            dtype = np.float16 if f16 and data.ndim > 1 else np.float32
            out = np.ascontiguousarray(data.astype(dtype))
            if dtype == np.float16 and not np.isfinite(out).all():
                raise ConfigError(f"{hf_name} has values beyond F16's range; export with outtype='f32'")
            return out

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
            writer.write_tensor_data(converted(hf_name, file))
        writer.close()
        _move_into_place(tmp, out_path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    log.info("wrote %s (%s, %d tensors)", out_path, outtype, len(tensors))
    return out_path


# -- a LoRA merged into its GGUF base --------------------------------------------------------------

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
    import torch
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer
    from peft.utils import ModulesToSaveWrapper
    from transformers import AutoModelForCausalLM

    from tunelab.inference.backends.transformers_backend import dequantized_dir
    from tunelab.models.resolve import resolve

    if outtype not in _OVER_BASE_TYPES:
        raise ConfigError(f"outtype must be one of {_OVER_BASE_TYPES}, got {outtype!r}")
    record = _tuned_record(model_id, settings)
    resolved = resolve(model_id, settings)
    if not record.adapter or resolved.gguf_path is None or resolved.adapter_path is None:
        raise ConfigError(f"{model_id!r} is not a LoRA tuned from a GGUF; use export_merged + export_gguf")
    base_gguf = Path(resolved.gguf_path)
    out_path = Path(out_path).expanduser()
    _check_target(out_path, overwrite, [base_gguf, model_dir(settings, model_id)], "file")

    reader = gguf.GGUFReader(str(base_gguf))
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
    model = PeftModel.from_pretrained(model, resolved.adapter_path)
    if any(isinstance(m, ModulesToSaveWrapper) for m in model.modules()):
        raise ConfigError(
            f"{model_id}: its adapter trains whole modules besides the LoRA (modules_to_save); "
            "export_merged + llama.cpp's converter handle it"
        )
    merged: dict[str, np.ndarray] = {}  # GGUF name -> the merged weight as written
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
    del model

    chat_template = chat_template_for(record.template_name, record.template_source)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_sibling(out_path, "tmp")
    writer = gguf.GGUFWriter(str(tmp), arch)
    try:
        for key, field in reader.fields.items():
            if (
                key.startswith("GGUF.")
                or key in ("general.architecture", "general.name", "general.file_type", "general.alignment")
                or key.startswith("tokenizer.chat_template")
            ):
                continue
            writer.add_key_value(key, *_raw_value(field))
        writer.add_name(model_id)
        writer.add_chat_template(chat_template)
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
        writer.close()
        _move_into_place(tmp, out_path)
    finally:
        writer.close()
        tmp.unlink(missing_ok=True)
    log.info(
        "wrote %s: %s over %s, %d merged weights in %s",
        out_path,
        model_id,
        base_gguf.name,
        len(merged),
        outtype,
    )
    return out_path
