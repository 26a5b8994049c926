"""Name resolution: the order, aliases, remote names, registry, and the errors when nothing matches; a GGUF's
torch copy made quietly in a log."""

import dataclasses
import io
import os
import pty
import shutil
import subprocess
import sys

import pytest

from tunelab import BasicModelRunner, LlamaV2Runner, LLMEngine
from tunelab.config import load_settings
from tunelab.errors import ModelFileError, ModelNotFoundError
from tunelab.models.embedded import EMBEDDED, SMOLLM2, embedded_gguf_path, verify_sha256
from tunelab.models.gguf_cache import dequantized_dir
from tunelab.models.registry import Entry, ModelRecord, save_record
from tunelab.models.resolve import resolve


def test_embedded_short_names_resolve_to_checked_files():
    settings = load_settings()
    for name, model in EMBEDDED.items():
        r = resolve(name, settings)
        assert r.source == "embedded" and r.gguf_path.exists() and r.gguf_path.stat().st_size == model.size
        assert r.chat == model.chat
    assert resolve("SmolLM2-135M-Instruct", settings).name == SMOLLM2.name


def test_wrong_hash_file_is_refused(tmp_path):
    fake = tmp_path / "model.gguf"
    fake.write_bytes(b"GGUF" + b"\0" * 100)
    with pytest.raises(ModelFileError, match=r"model.gguf: sha256 is [0-9a-f]{64}, expected"):
        verify_sha256(fake, SMOLLM2.sha256, tmp_path)


def test_a_checked_file_that_changes_is_checked_again(tmp_path):
    settings = load_settings()
    good = embedded_gguf_path(SMOLLM2, settings.home)
    copy = tmp_path / "copy.gguf"
    shutil.copy(good, copy)
    verify_sha256(copy, SMOLLM2.sha256, tmp_path)
    with open(copy, "r+b") as f:
        f.seek(1000)
        f.write(b"corrupt")
    with pytest.raises(ModelFileError, match="corrupt"):
        verify_sha256(copy, SMOLLM2.sha256, tmp_path)


def test_local_directory_and_gguf_file(tiny_chat_dir, tmp_path):
    settings = load_settings()
    r = resolve(str(tiny_chat_dir), settings)
    assert r.source == "local" and r.hf_path == str(tiny_chat_dir)
    gguf = tmp_path / "x.gguf"
    gguf.write_bytes(b"")
    assert resolve(str(gguf), settings).gguf_path == gguf
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelNotFoundError, match="neither a .gguf file nor a model directory"):
        resolve(str(tmp_path / "empty"), settings)


def test_alias_is_followed_and_recorded(isolated_env, tiny_chat_dir):
    isolated_env.write_text(f"aliases:\n  meta-llama/Llama-2-7b-chat-hf: {tiny_chat_dir}\n")
    runner = BasicModelRunner("meta-llama/Llama-2-7b-chat-hf", backend="transformers", max_new_tokens=3)
    c = runner.generate("Hi")
    assert c.model == str(tiny_chat_dir)
    assert c.extra["alias_of"] == "meta-llama/Llama-2-7b-chat-hf"
    assert runner.resolved.alias_of == "meta-llama/Llama-2-7b-chat-hf"


def test_alias_loop_is_an_error(isolated_env):
    isolated_env.write_text("aliases:\n  a: b\n  b: a\n")
    with pytest.raises(ModelNotFoundError, match="alias loop"):
        resolve("a", load_settings())


def test_hub_id_offline_names_the_stand_ins_and_the_alias_to_add():
    with pytest.raises(ModelNotFoundError) as info:
        BasicModelRunner("meta-llama/Llama-2-7b-hf")
    message = str(info.value)
    assert "not available offline" in message and "HF_HUB_OFFLINE" in message
    assert "gemma-3-270m (base)" in message and "smollm2-135m-instruct (chat)" in message
    assert "meta-llama/Llama-2-7b-hf: gemma-3-270m" in message


def test_hosted_name_unconfigured_shows_the_config_lines():
    with pytest.raises(ModelNotFoundError) as info:
        BasicModelRunner("chat-gpt")
    message = str(info.value)
    assert "remote:" in message and "base_url:" in message and "api_key_env:" in message


def test_remote_name_from_config(isolated_env):
    isolated_env.write_text(
        "remote:\n  chat-gpt:\n    base_url: http://127.0.0.1:9/v1\n    model: m\n    api_key_env: MY_KEY\n"
    )
    r = resolve("chat-gpt", load_settings())
    assert r.source == "remote" and r.remote.model == "m" and r.remote.api_key_env == "MY_KEY"


def test_server_url_sends_every_name_to_the_server():
    r = resolve("anything", load_settings({"production.url": "http://127.0.0.1:8000", "production.key": "k"}))
    assert (
        r.source == "server" and r.remote.base_url == "http://127.0.0.1:8000/v1" and r.remote.api_key == "k"
    )


def test_registry_id(tiny_chat_dir, tunelab_home):
    target = tunelab_home / "registry" / "tiny-tuned-abc123"
    shutil.copytree(tiny_chat_dir, target, dirs_exist_ok=True)
    r = resolve("tiny-tuned-abc123", load_settings())
    assert r.source == "registry" and r.hf_path == str(target)


def test_alias_to_a_tuned_lora_keeps_every_field_of_it(isolated_env, tmp_path, tunelab_home):
    # A LoRA tuned from a GGUF, with its merged GGUF beside the adapter (llama.cpp's fast path).
    entry = Entry(tunelab_home / "registry" / "tiny-lora-fast-1a2b")
    entry.adapter_dir.mkdir(parents=True, exist_ok=True)
    entry.fast_gguf.write_bytes(b"GGUF")
    record = ModelRecord(
        model_id=entry.name,
        base_model=str(tmp_path / "base.gguf"),
        method="lora",
        template_name="chatml",
        template_source="{{ prompt }}",
        data_hash="0",
        n_train=2,
        n_eval=0,
        hyperparameters={},
    )
    (tmp_path / "base.gguf").write_bytes(b"")
    save_record(entry.path, record)
    isolated_env.write_text(f"aliases:\n  my-bot: {entry.name}\n")
    settings = load_settings()

    direct, aliased = resolve(entry.name, settings), resolve("my-bot", settings)
    assert direct.fast_gguf == entry.fast_gguf and direct.adapter_path == str(entry.adapter_dir)
    assert aliased.fast_gguf == entry.fast_gguf  # was dropped: the alias lost llama.cpp's fast path
    assert aliased == dataclasses.replace(direct, requested="my-bot", alias_of="my-bot")


def test_unknown_name_lists_what_was_tried():
    with pytest.raises(ModelNotFoundError) as info:
        resolve("no-such-model", load_settings())
    message = str(info.value)
    for tried in ("embedded defaults", "a local path", "aliases in", "remote models", "registry"):
        assert tried in message


def test_lamini_entry_points_construct_locally():
    llm = LLMEngine(id="example_llm", config={"production.key": "xxxx"})
    assert llm.id == "example_llm" and llm.resolved.name == "smollm2-135m-instruct"
    with pytest.raises(ModelNotFoundError, match="Llama-2-7b-chat-hf"):
        LlamaV2Runner()
    v2 = LlamaV2Runner("smollm2-135m-instruct", system_prompt="Be brief.")
    assert v2.template == "llama2" and v2.system_prompt == "Be brief."


def test_loading_weights_bars_are_off_in_a_log_and_the_users_setting_wins():
    code = "import os, tunelab; print(os.environ.get('HF_HUB_DISABLE_PROGRESS_BARS'))"
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_DISABLE_PROGRESS_BARS"}
    logged = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert logged.stdout.strip() == "1"  # stderr is a pipe: a log
    mine = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          env=env | {"HF_HUB_DISABLE_PROGRESS_BARS": "0"})  # fmt: skip
    assert mine.stdout.strip() == "0"
    _, terminal = pty.openpty()  # stderr a terminal: the bars stay
    shown = subprocess.run([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=terminal, text=True,
                           env=env, check=True)  # fmt: skip
    assert shown.stdout.strip() == "None"


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_dequantizing_a_gguf_shows_progress_in_a_terminal_only(tmp_path, capfd, monkeypatch):
    from transformers import modeling_gguf_pytorch_utils as gguf_loading
    from transformers.utils import logging

    from tests.tiny_gguf import make_tiny_gguf

    gguf = make_tiny_gguf(tmp_path / "tiny.gguf")
    bars_on, converter = logging.is_progress_bar_enabled(), gguf_loading.tqdm
    capfd.readouterr()
    dequantized_dir(gguf, tmp_path / "log")  # stderr is pytest's capture here: a log, not a terminal
    assert "Converting and de-quantizing" not in capfd.readouterr().err
    assert logging.is_progress_bar_enabled() == bars_on and gguf_loading.tqdm is converter  # put back

    terminal = _Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    dequantized_dir(gguf, tmp_path / "terminal")
    assert "Converting and de-quantizing GGUF tensors" in terminal.getvalue()
