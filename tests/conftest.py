from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.tiny_models import make_tiny_llama


@pytest.fixture(scope="session")
def tunelab_home(tmp_path_factory) -> Path:
    # One data home per test session: the embedded Gemma file is assembled (and dequantized) once.
    # CI passes a persistent one through TUNELAB_TEST_HOME so reruns reuse the caches.
    home = os.environ.get("TUNELAB_TEST_HOME")
    return Path(home) if home else tmp_path_factory.mktemp("tunelab-home")


@pytest.fixture(autouse=True)
def isolated_env(tunelab_home, tmp_path, monkeypatch) -> Path:
    """Every test gets tunelab's data home, an empty config file of its own, and no hub."""
    config = tmp_path / "config.yaml"
    monkeypatch.setenv("TUNELAB_HOME", str(tunelab_home))
    monkeypatch.setenv("TUNELAB_CONFIG", str(config))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    names = ("URL", "API_KEY", "BACKEND", "DEVICE", "DTYPE", "DB_URL")
    for var in (f"TUNELAB_{name}" for name in names):
        monkeypatch.delenv(var, raising=False)
    return config


@pytest.fixture(scope="session")
def tiny_chat_dir(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-chat"), chat=True)


@pytest.fixture(scope="session")
def tiny_base_dir(tmp_path_factory) -> Path:
    return make_tiny_llama(tmp_path_factory.mktemp("tiny-base"), chat=False)


@pytest.fixture(scope="session")
def postgres_server():
    """A PostgreSQL server for the session (tests/postgres.py); `.create_database(name)` gives a fresh
    database's URL. Skipped when PostgreSQL is not installed, unless TUNELAB_REQUIRE_POSTGRES=1."""
    from tests.postgres import postgres_or_skip

    with postgres_or_skip() as server:
        yield server


@pytest.fixture(scope="session")
def postgres_url(postgres_server) -> str:
    """postgresql://postgres@127.0.0.1:PORT/tunelab, one database shared by the session."""
    return postgres_server.url


# the tiny chat model as a GGUF on llama.cpp and in bf16 on transformers, per test module
@pytest.fixture(scope="module")
def tiny_gguf(tiny_chat_dir, tmp_path_factory):
    from tests.tiny_gguf import convert_hf_llama_to_gguf

    return convert_hf_llama_to_gguf(tiny_chat_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module")
def llama(tiny_gguf):
    from tunelab.inference.backends.llama_cpp_backend import LlamaCppBackend

    with LlamaCppBackend(tiny_gguf, n_threads=1) as backend:
        yield backend


@pytest.fixture(scope="module")
def bf16(tiny_chat_dir):
    # bf16 on a CPU: the batch-invariant path (tests/test_batch_invariant.py)
    from tunelab.inference.backends.transformers_backend import TransformersBackend

    return TransformersBackend(str(tiny_chat_dir), device="cpu", dtype="bfloat16", max_batch=4)
