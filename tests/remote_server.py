"""A real OpenAI-compatible server on loopback (llama_cpp.server with the embedded SmolLM2), for tests."""

import socket
import subprocess
import sys
import time

import httpx
import pytest

from tunelab.embedded import SMOLLM2, embedded_gguf_path

API_KEY = "test-key-123"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve_smollm2(tunelab_home, tmp_path_factory):
    """Start the server, yield its /v1 URL, stop it."""
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


def configure_chat_gpt(config_file, url, key_env="REMOTE_KEY"):
    config_file.write_text(
        f"remote:\n  chat-gpt:\n    base_url: {url}\n    model: smollm2\n    api_key_env: {key_env}\n"
    )
