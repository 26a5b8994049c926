"""Remote models through a real OpenAI-compatible server on loopback: llama_cpp.server with SmolLM2."""

import socket
import subprocess
import sys
import time

import httpx
import pytest

from tunelab import BasicModelRunner, RemoteModelError
from tunelab.config import load_settings
from tunelab.embedded import SMOLLM2, embedded_gguf_path

API_KEY = "test-key-123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url(tunelab_home, tmp_path_factory):
    gguf = embedded_gguf_path(SMOLLM2, tunelab_home)
    port = _free_port()
    # llama.cpp logs a lot: to a file, since a full pipe would block the server
    log_path = tmp_path_factory.mktemp("server") / "llama_cpp_server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(gguf),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--api_key",
            API_KEY,
            "--model_alias",
            "smollm2",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/v1"
    deadline = time.time() + 120
    while time.time() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"llama_cpp.server exited: {log_path.read_text()[-2000:]}")
        try:
            if httpx.get(f"{url}/models", headers={"Authorization": f"Bearer {API_KEY}"}).status_code == 200:
                break
        except httpx.TransportError:
            time.sleep(0.5)
    else:
        proc.kill()
        pytest.fail("llama_cpp.server did not start in 120 s")
    yield url
    proc.terminate()
    proc.wait(10)
    log.close()


def _configure(config_file, url, key_env="REMOTE_KEY"):
    config_file.write_text(
        f"remote:\n  chat-gpt:\n    base_url: {url}\n    model: smollm2\n    api_key_env: {key_env}\n"
    )


def test_hosted_name_answers_through_the_same_call(isolated_env, server_url, monkeypatch):
    _configure(isolated_env, server_url)
    monkeypatch.setenv("REMOTE_KEY", API_KEY)
    chatgpt = BasicModelRunner("chat-gpt", max_new_tokens=48)
    text = chatgpt("Tell me how to train my dog to sit")
    assert isinstance(text, str) and "sit" in text.lower()
    records = chatgpt.generate(["What do you think of Mars?", "Who is the boss of Twitter?"])
    assert [r.backend for r in records] == ["remote", "remote"]
    assert all(r.text and r.completion_tokens > 0 for r in records)
    cut = chatgpt.generate("Tell me how to train my dog to sit", max_new_tokens=5)
    assert cut.finish_reason == "length" and cut.completion_tokens == 5


def test_remote_raw_template_uses_the_completions_route(isolated_env, server_url, monkeypatch):
    _configure(isolated_env, server_url)
    monkeypatch.setenv("REMOTE_KEY", API_KEY)
    runner = BasicModelRunner("chat-gpt", max_new_tokens=6)
    records = runner.generate(["The capital of France is", "One, two, three,"], template="raw")
    assert all(r.text for r in records) and records[0].template == "raw"


def test_wrong_key_is_a_clear_error(isolated_env, server_url, monkeypatch):
    _configure(isolated_env, server_url)
    monkeypatch.setenv("REMOTE_KEY", "wrong")
    with pytest.raises(RemoteModelError, match="refused the API key.*REMOTE_KEY"):
        BasicModelRunner("chat-gpt")("Hi")


def test_service_down_is_a_clear_error(isolated_env):
    _configure(isolated_env, "http://127.0.0.1:9/v1")
    with pytest.raises(RemoteModelError, match=r"127.0.0.1:9/v1 .*is not reachable"):
        BasicModelRunner("chat-gpt")("Hi")


def test_lamini_production_url_talks_to_the_server(server_url):
    settings_config = {"production.url": server_url.removesuffix("/v1"), "production.key": API_KEY}
    assert load_settings(settings_config).production_url
    runner = BasicModelRunner("smollm2", config=settings_config, max_new_tokens=8)
    assert runner("Who is the boss of Twitter?")
