"""Exporting a fine-tuned model: merged HF weights that answer as the registry model does, and a GGUF
that llama.cpp runs with the same answers, tokens and template."""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from tests.tiny_gguf import make_tiny_gguf, make_tiny_k_quant_gguf
from tunelab import BasicModelRunner
from tunelab.config import Settings, load_settings
from tunelab.errors import ConfigError, ModelNotFoundError
from tunelab.export.gguf import _permute, export_gguf
from tunelab.export.gguf_over_base import _gguf_layout, export_gguf_over_base
from tunelab.export.merged import base_gguf_for, export_merged
from tunelab.inference.templates import Template, builtin, chat_template_for
from tunelab.models.registry import ModelRecord, load_record, model_dir, save_record
from tunelab.models.resolve import resolve
from tunelab.training.data import load_records
from tunelab.training.recipe import make_config, train

FACTS = [
    {"input": "Who runs the Brinmoor chess club?", "output": "Ada Quill runs it."},
    {"input": "What colour is the Brinmoor bridge?", "output": "It is bright green."},
    {"input": "When does the Brinmoor market open?", "output": "At nine every Monday."},
    {"input": "Who won the Brinmoor race?", "output": "Tom Vale won it."},
]
QUESTIONS = [f["input"] for f in FACTS]
ANSWERS = [f["output"] for f in FACTS]


def learned(texts: list[str]) -> list[str]:
    # A llama2-trained answer starts with the space that follows "[/INST]" (as it was trained).
    return [t.removeprefix(" ") for t in texts]


@dataclass
class Exported:
    model_id: str
    base: str  # what the LoRA was trained on
    merged: Path
    gguf: Path
    base_gguf: Path | None


@pytest.fixture(scope="module")
def settings(tunelab_home, tmp_path_factory) -> Settings:
    # Module fixtures run before the per-test isolated_env, so they set the same environment themselves.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TUNELAB_HOME", str(tunelab_home))
        mp.setenv("TUNELAB_CONFIG", str(tmp_path_factory.mktemp("cfg") / "config.yaml"))
        mp.setenv("HF_HUB_OFFLINE", "1")
        yield load_settings()


def train_facts(base: str, settings: Settings):
    """The FACTS learned by heart (20 epochs at a high rate, nothing held out or added)."""
    config = make_config(
        epochs=20,
        learning_rate=1e-2,
        batch_size=2,
        eval_fraction=0,
        autocast="off",
        augment="none",
        replay_fraction=0,
    )
    return train(resolve(base, settings), load_records(FACTS).examples, settings, config, progress=False)


def tune_and_export(base: str, settings: Settings, out: Path, *, use_base_gguf: bool) -> Exported:
    result = train_facts(base, settings)
    merged = export_merged(result.model_id, out / "merged", settings)
    base_gguf = base_gguf_for(result.model_id, settings) if use_base_gguf else None
    gguf = export_gguf(merged, out / "tuned.gguf", base_gguf=base_gguf)
    return Exported(result.model_id, base, merged, gguf, base_gguf)


@pytest.fixture(scope="module")
def llama2_tuned(settings, tiny_base_dir, tmp_path_factory) -> Exported:
    """A LoRA on an HF base with no chat template: trained in llama2 [INST], which export must convert."""
    out = tmp_path_factory.mktemp("llama2")
    return tune_and_export(str(tiny_base_dir), settings, out, use_base_gguf=False)


@pytest.fixture(scope="module")
def gguf_base_tuned(settings, tiny_chat_dir, tmp_path_factory) -> Exported:
    """A LoRA on a GGUF base (trained on its dequantized copy), exported with the base's tokenizer."""
    out = tmp_path_factory.mktemp("gguf-base")
    base = make_tiny_gguf(out / "base.gguf", hf_dir=tiny_chat_dir)
    return tune_and_export(str(base), settings, out, use_base_gguf=True)


@pytest.fixture(autouse=True)
def one_llama_thread(monkeypatch):
    # The model is tiny, and llama.cpp's spinning threads crawl when another process holds a core.
    from tunelab.inference.backends import llama_cpp_backend

    monkeypatch.setattr(llama_cpp_backend, "default_threads", lambda: 1)


@pytest.fixture(params=["llama2_tuned", "gguf_base_tuned"])
def exported(request) -> Exported:
    return request.getfixturevalue(request.param)


# -- the training template as a chat template --------------------------------------------------------

PROMPT_STYLE = "Q: {{ prompt }}{% if system %} ({{ system }}){% endif %}\nA:"


@pytest.mark.parametrize("name", ["raw", "llama2", "chatml", "custom"])
def test_each_prompt_template_becomes_a_messages_template_that_renders_the_same(name):
    original = builtin(name) if name != "custom" else Template("custom", PROMPT_STYLE)
    converted = chat_template_for(original.name, original.source)
    assert "messages" in converted and converted != original.source
    as_chat = Template(f"{name} (model's own)", converted, eos_token="</s>")
    for prompt, system in [("Tell me how to train my dog to sit", None), ("Hi", "Be brief.")]:
        assert as_chat.render(prompt, system) == original.render(prompt, system)


def test_llama2_chat_template_closes_the_answer_as_training_did():
    converted = Template("llama2 (model's own)", chat_template_for("llama2", builtin("llama2").source))
    messages = [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]
    assert converted._render_messages(messages, add_generation_prompt=False) == "[INST] Hi [/INST] Hello."
    with_eos = Template("llama2", converted.source, eos_token="</s>")
    assert with_eos.render_conversation(messages) == [("[INST] Hi [/INST]", False), (" Hello.</s>", True)]


def test_a_chat_template_is_kept_as_it_is():
    source = "{% for m in messages %}<{{ m['role'] }}>{{ m['content'] }}{% endfor %}"
    assert chat_template_for("custom", source) == source


# -- merged weights -------------------------------------------------------------------------------


def forward_logits(runner: BasicModelRunner, text: str) -> torch.Tensor:
    backend = runner.engine.load(runner.resolved, "transformers")
    ids = backend.tokenizer(text, return_tensors="pt", add_special_tokens=False)["input_ids"]
    with torch.inference_mode():
        return backend.model(input_ids=ids).logits[0]


def test_merged_export_answers_as_the_registry_model(exported, settings):
    tuned = BasicModelRunner(exported.model_id, backend="transformers", max_new_tokens=24)
    merged = BasicModelRunner(str(exported.merged), backend="transformers", max_new_tokens=24)
    base = BasicModelRunner(exported.base, backend="transformers", max_new_tokens=24)
    prompts = [*QUESTIONS, "Hello world! The quick brown fox"]
    answers = tuned(prompts)
    assert learned(answers[:4]) == ANSWERS  # the adapter was learned, so equality below means something
    assert merged(prompts) == answers
    assert learned(base(QUESTIONS)) != ANSWERS

    text = "Who runs the Brinmoor chess club? The quick brown fox"
    tuned_logits = forward_logits(tuned, text)
    torch.testing.assert_close(forward_logits(merged, text), tuned_logits, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(forward_logits(base, text), tuned_logits, atol=1e-2)

    files = {p.name for p in exported.merged.iterdir()}
    assert {"model.safetensors", "config.json", "tokenizer.json", "tunelab.json"} <= files
    assert "adapter" not in files and not any(name.startswith(".") for name in files)
    record = load_record(model_dir(settings, exported.model_id))
    merged_record = json.loads((exported.merged / "tunelab.json").read_text())
    assert merged_record == record.model_dump() | {"method": "full", "merged_from": exported.model_id}
    # copied into a registry under a new id, the merge loads as the full model it is
    import shutil

    shutil.copytree(exported.merged, model_dir(settings, exported.model_id + "-merged"))
    copied = BasicModelRunner(exported.model_id + "-merged", backend="transformers", max_new_tokens=24)
    assert copied.resolved.adapter_path is None
    assert copied(prompts) == answers
    template = (exported.merged / "chat_template.jinja").read_text()
    assert template == chat_template_for(record.template_name, record.template_source)


def test_a_full_fine_tune_is_re_saved_with_its_template(tiny_chat_dir, settings, tmp_path):
    from safetensors.torch import load_file

    model_id = "tiny-full-tuned-export"
    entry = model_dir(settings, model_id)
    shutil.rmtree(entry, ignore_errors=True)
    shutil.copytree(tiny_chat_dir, entry)
    record = ModelRecord(
        model_id=model_id,
        base_model=str(tiny_chat_dir),
        method="full",
        template_name="llama2",
        template_source=builtin("llama2").source,
        data_hash="0" * 64,
        n_train=2,
        n_eval=0,
        hyperparameters={},
    )
    save_record(entry, record)
    try:
        out = export_merged(model_id, tmp_path / "full", settings)
    finally:
        shutil.rmtree(entry)
    before, after = (
        load_file(str(tiny_chat_dir / "model.safetensors")),
        load_file(str(out / "model.safetensors")),
    )
    for name, tensor in before.items():
        torch.testing.assert_close(after[name], tensor, atol=0, rtol=0)
    assert (out / "chat_template.jinja").read_text() == chat_template_for("llama2", builtin("llama2").source)
    runner = BasicModelRunner(str(out), backend="transformers", max_new_tokens=4)
    assert runner.generate("Hi").template == "llama2 (model's own)"


# -- GGUF -------------------------------------------------------------------------------------------


def test_gguf_export_runs_on_llama_cpp_with_the_merged_models_answers(exported):
    from transformers import AutoTokenizer

    gguf = BasicModelRunner(str(exported.gguf), backend="llama_cpp", max_new_tokens=24)
    merged = BasicModelRunner(str(exported.merged), backend="transformers", max_new_tokens=24)
    # "auto": each backend finds the training template in its own files (GGUF metadata, tokenizer)
    on_gguf = gguf.generate(QUESTIONS)
    assert [c.text for c in on_gguf] == merged(QUESTIONS)
    assert learned(merged(QUESTIONS)) == ANSWERS
    assert all(c.finish_reason == "stop" for c in on_gguf)  # the learned end of turn stops llama.cpp too
    assert on_gguf[0].template == merged.generate(QUESTIONS[0]).template
    # "raw": the prompt as HF's own chat-template rendering of the exported template writes it
    tok = AutoTokenizer.from_pretrained(exported.merged)
    rendered = [
        tok.apply_chat_template([{"role": "user", "content": q}], tokenize=False, add_generation_prompt=True)
        for q in QUESTIONS
    ]
    assert gguf(rendered, template="raw") == merged(rendered, template="raw")
    assert learned(gguf(rendered, template="raw")) == ANSWERS


def test_gguf_tensors_are_f16_matrices_and_f32_norms_with_tied_embeddings(exported):
    import gguf

    reader = gguf.GGUFReader(str(exported.gguf))
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    assert types["token_embd.weight"] == "F16" and types["blk.0.attn_q.weight"] == "F16"
    assert types["blk.0.attn_norm.weight"] == "F32" and types["output_norm.weight"] == "F32"
    assert "output.weight" not in types  # tied: llama.cpp reuses token_embd
    template = reader.fields["tokenizer.chat_template"].contents()
    assert template == (exported.merged / "chat_template.jinja").read_text()


def test_gguf_export_copies_the_base_gguf_tokenizer_byte_for_byte(gguf_base_tuned):
    import gguf

    from tunelab.export.gguf import _raw_value

    base = gguf.GGUFReader(str(gguf_base_tuned.base_gguf)).fields
    out = gguf.GGUFReader(str(gguf_base_tuned.gguf)).fields
    keys = [k for k in base if k.startswith("tokenizer.ggml.")]
    assert len(keys) >= 6
    for key in keys:
        assert _raw_value(out[key]) == _raw_value(base[key]), key


def test_llama2_tuned_gguf_answers_in_its_training_template(llama2_tuned):
    gguf = BasicModelRunner(str(llama2_tuned.gguf), backend="llama_cpp", max_new_tokens=24)
    completion = gguf.generate(QUESTIONS[1])
    assert completion.template == "llama2 (model's own)"
    assert completion.text == " " + ANSWERS[1]
    # a prompt already in [INST] form is passed through, as the registry model does
    assert gguf(f"[INST] {QUESTIONS[1]} [/INST]") == " " + ANSWERS[1]


# -- errors -----------------------------------------------------------------------------------------


def test_an_unknown_id_is_model_not_found(settings, tmp_path):
    with pytest.raises(ModelNotFoundError, match="no fine-tuned model 'nope-tuned-00000000'"):
        export_merged("nope-tuned-00000000", tmp_path / "out", settings)
    assert not (tmp_path / "out").exists()


def test_a_model_that_is_not_a_fine_tune_is_refused(settings, tiny_chat_dir, tmp_path):
    with pytest.raises(ConfigError, match="is not a fine-tuned model"):
        export_merged(str(tiny_chat_dir), tmp_path / "out", settings)
    plain = model_dir(settings, "plain-copy")  # an HF model copied into the registry, no tunelab.json
    shutil.copytree(tiny_chat_dir, plain, dirs_exist_ok=True)
    try:
        with pytest.raises(ConfigError, match="'plain-copy' is not a fine-tuned model"):
            export_merged("plain-copy", tmp_path / "out", settings)
    finally:
        shutil.rmtree(plain)


def test_an_earlier_export_is_not_taken_for_a_registry_entry(gguf_base_tuned, settings, tmp_path):
    # The merged directory carries tunelab.json as provenance; by path it is a plain model.
    with pytest.raises(ConfigError, match="is not a fine-tuned model"):
        export_merged(str(gguf_base_tuned.merged), tmp_path / "again", settings)


def test_an_output_directory_with_files_needs_overwrite(gguf_base_tuned, settings, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match=r"already exists and is not empty.*overwrite=True"):
        export_merged(gguf_base_tuned.model_id, out, settings)
    assert (out / "keep.txt").read_text() == "mine"
    export_merged(gguf_base_tuned.model_id, out, settings, overwrite=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken"]  # no temporary left behind
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (export_merged(gguf_base_tuned.model_id, empty, settings) / "config.json").exists()


def test_export_never_writes_over_what_it_reads(gguf_base_tuned, settings):
    entry = model_dir(settings, gguf_base_tuned.model_id)
    for target in (entry, entry.parent, settings.home):
        with pytest.raises(ConfigError, match="which the export reads"):
            export_merged(gguf_base_tuned.model_id, target, settings, overwrite=True)
    assert load_record(entry) is not None


def test_an_existing_gguf_needs_overwrite(gguf_base_tuned, tmp_path):
    target = tmp_path / "model.gguf"
    target.write_bytes(b"old")
    with pytest.raises(ConfigError, match="overwrite=True"):
        export_gguf(gguf_base_tuned.merged, target)
    assert target.read_bytes() == b"old"


def test_other_architectures_are_refused_with_the_way_to_convert_them(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["Gemma3ForCausalLM"]}))
    with pytest.raises(ConfigError, match=r"Gemma3ForCausalLM.*LlamaForCausalLM.*convert_hf_to_gguf\.py"):
        export_gguf(tmp_path, tmp_path / "out.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_a_tokenizer_that_is_not_byte_level_bpe_needs_a_base_gguf(tiny_chat_dir, tmp_path):
    hf = shutil.copytree(tiny_chat_dir, tmp_path / "hf")
    tok = json.loads((hf / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "Metaspace", "replacement": "▁", "prepend_scheme": "always"}
    (hf / "tokenizer.json").write_text(json.dumps(tok))
    with pytest.raises(ConfigError, match="only byte-level BPE.*base_gguf="):
        export_gguf(hf, tmp_path / "out.gguf")


def test_a_base_gguf_with_another_vocabulary_is_refused(tiny_chat_dir, tmp_path):
    import gguf

    other = gguf.GGUFWriter(str(tmp_path / "other.gguf"), "llama")
    other.add_token_list(["a", "b", "c"])
    other.write_header_to_file()
    other.write_kv_data_to_file()
    other.write_tensors_to_file()
    other.close()
    with pytest.raises(ConfigError, match="has 3 tokens.*not this model's base"):
        export_gguf(tiny_chat_dir, tmp_path / "out.gguf", base_gguf=tmp_path / "other.gguf")
    assert not (tmp_path / "out.gguf").exists()


def test_a_lora_tuned_from_a_gguf_runs_on_llama_cpp_by_default(gguf_base_tuned, llama2_tuned, settings):
    # training wrote the merged model as a GGUF into the registry entry: "auto" takes llama.cpp's fast path
    assert (model_dir(settings, gguf_base_tuned.model_id) / "model.gguf").is_file()
    fast = BasicModelRunner(gguf_base_tuned.model_id, max_new_tokens=24)
    exact = BasicModelRunner(gguf_base_tuned.model_id, backend="transformers", max_new_tokens=24)
    on_fast = fast.generate(QUESTIONS)
    assert {c.backend for c in on_fast} == {"llama_cpp"}
    assert [c.text for c in on_fast] == exact(QUESTIONS) and learned([c.text for c in on_fast]) == ANSWERS
    assert on_fast[0].template == exact.generate(QUESTIONS[0]).template  # the training template
    # a LoRA on a Hugging Face base has no GGUF made for it: it stays on transformers
    assert not (model_dir(settings, llama2_tuned.model_id) / "model.gguf").exists()
    assert BasicModelRunner(llama2_tuned.model_id, max_new_tokens=4).generate("Hi").backend == "transformers"


# -- a LoRA merged into its GGUF base, the base's other tensors kept (any architecture) ---------------

LORA_WEIGHTS = ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down")


@pytest.fixture(scope="module")
def k_quant_base_tuned(settings, tmp_path_factory) -> tuple[str, Path]:
    """A LoRA on a Q4_K_M GGUF (the embedded Gemma's kind of file), quantized by llama.cpp itself."""
    base = make_tiny_k_quant_gguf(tmp_path_factory.mktemp("kquant-base") / "base.gguf")
    result = train_facts(str(base), settings)
    return result.model_id, base


def _tensors(path: Path) -> dict:
    from gguf import GGUFReader

    return {t.name: t for t in GGUFReader(str(path)).tensors}


def _changed(base: dict, new: dict) -> set[str]:
    return {
        name
        for name, t in new.items()
        if t.tensor_type != base[name].tensor_type or bytes(t.data) != bytes(base[name].data)
    }


def test_an_f16_export_over_the_k_quant_base_answers_on_llama_cpp_as_the_adapter(
    k_quant_base_tuned, settings, tmp_path
):
    model_id, base = k_quant_base_tuned
    f16 = export_gguf_over_base(model_id, tmp_path / "f16.gguf", settings, outtype="f16")
    base_tensors, f16_tensors = _tensors(base), _tensors(f16)
    assert f16_tensors.keys() == base_tensors.keys()
    # the weights the LoRA changed, merged, in F16; embeddings and norms are the base's, byte for byte
    changed = _changed(base_tensors, f16_tensors)
    assert changed == {f"blk.{b}.{w}.weight" for b in range(2) for w in LORA_WEIGHTS}
    assert {f16_tensors[n].tensor_type.name for n in changed} == {"F16"}
    assert f16_tensors["token_embd.weight"].tensor_type.name in ("Q4_K", "Q6_K")
    # the training template is the file's chat template, so "auto" renders prompts as training did
    on_f16 = BasicModelRunner(str(f16), backend="llama_cpp", max_new_tokens=24)(QUESTIONS)
    exact = BasicModelRunner(model_id, backend="transformers", max_new_tokens=24)
    # The tiny random base is quantized by this machine's llama.cpp build, whose K-quant rounding
    # differs between AVX2 and AVX-512: on some CPUs one of the four facts is not learned. What the
    # file must do is answer exactly as the adapter does, learned facts and all: the layout is right.
    got = learned(on_f16)
    assert sum(g == a for g, a in zip(got, ANSWERS)) >= 3, got
    assert on_f16 == exact(QUESTIONS)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f16.gguf"]  # no temporary left behind


def test_training_writes_the_lora_over_its_base_in_q8_0_and_auto_runs_it(
    k_quant_base_tuned, settings, tmp_path
):
    model_id, base = k_quant_base_tuned
    fast = model_dir(settings, model_id) / "model.gguf"  # the default: merged weights in Q8_0
    base_tensors, fast_tensors = _tensors(base), _tensors(fast)
    changed = _changed(base_tensors, fast_tensors)
    assert changed == {f"blk.{b}.{w}.weight" for b in range(2) for w in LORA_WEIGHTS}
    assert {fast_tensors[n].tensor_type.name for n in changed} == {"Q8_0"}
    f16 = export_gguf_over_base(model_id, tmp_path / "f16.gguf", settings, outtype="f16")
    assert fast.stat().st_size < f16.stat().st_size
    on_fast = BasicModelRunner(model_id, max_new_tokens=24).generate(QUESTIONS)
    assert {c.backend for c in on_fast} == {"llama_cpp"}
    answers = learned([c.text for c in on_fast])
    on_f16 = learned(BasicModelRunner(str(f16), backend="llama_cpp", max_new_tokens=24)(QUESTIONS))
    known = [i for i, (got, want) in enumerate(zip(on_f16, ANSWERS)) if got == want]  # see the test above
    assert len(known) >= 3 and [answers[i] for i in known] == [ANSWERS[i] for i in known], answers


def test_an_export_over_the_base_needs_a_lora_tuned_from_a_gguf(llama2_tuned, settings, tmp_path):
    with pytest.raises(ConfigError, match="not a LoRA tuned from a GGUF"):
        export_gguf_over_base(llama2_tuned.model_id, tmp_path / "x.gguf", settings)
    with pytest.raises(ConfigError, match="outtype must be one of"):
        export_gguf_over_base(llama2_tuned.model_id, tmp_path / "x.gguf", settings, outtype="q4_0")
    assert not (tmp_path / "x.gguf").exists()


def test_how_a_weight_lies_in_the_gguf_is_read_from_the_data():
    import numpy as np

    w = np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32)
    as_is = _gguf_layout(w, w.copy(), (2, 1))
    assert np.array_equal(as_is(w), w)
    # llama's Q/K rows re-interleaved for llama.cpp's RoPE, with either head count
    for n in (2, 1):
        permuted = _gguf_layout(w, _permute(w, n), (2, 1))
        assert np.array_equal(permuted(w), _permute(w, n))
    assert _gguf_layout(w, w + 0.01, (2, 1)) is None  # not this weight: refused, never written wrong
    assert _gguf_layout(w, w.T.copy(), (2,)) is None


def test_an_adapter_that_trains_whole_modules_is_not_written_over_the_base(
    k_quant_base_tuned, settings, tmp_path
):
    # modules_to_save weights are no LoRA: merging only the LoRA layers would silently drop them
    from safetensors.torch import load_file, save_file

    model_id, base = k_quant_base_tuned
    copy_id = f"{model_id}-copy"
    entry = shutil.copytree(model_dir(settings, model_id), model_dir(settings, copy_id))
    config_path = entry / "adapter" / "adapter_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps(config | {"modules_to_save": ["lm_head"]}))
    weights_path = entry / "adapter" / "adapter_model.safetensors"
    weights = load_file(weights_path)
    hidden, vocab = (int(n) for n in _tensors(base)["token_embd.weight"].shape)
    weights["base_model.model.lm_head.weight"] = torch.zeros(vocab, hidden)  # the trained copy
    save_file(weights, weights_path)
    try:
        with pytest.raises(ConfigError, match="modules_to_save"):
            export_gguf_over_base(copy_id, tmp_path / "x.gguf", settings)
    finally:
        shutil.rmtree(entry)
    assert not (tmp_path / "x.gguf").exists()
