"""Real servers on loopback for tests: llama_cpp.server with the embedded SmolLM2, and tunelab's own app."""

import os
import socket
import subprocess
import sys
import threading
import time

import httpx
import pytest
import uvicorn

from tunelab.models.embedded import SMOLLM2, embedded_gguf_path

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


class RunningServer:
    """tunelab's app for a Service, served by uvicorn in a thread of the test process."""

    def __init__(self, service):
        self.service = service
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        from tunelab.server.app import create_app

        config = uvicorn.Config(create_app(service), host="127.0.0.1", port=self.port, log_level="warning")
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self):
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            assert time.time() < deadline, "server did not start"
            time.sleep(0.05)
        return self

    def __exit__(self, *exc):
        self.server.should_exit = True
        self.thread.join(10)


def start_tunelab_serve(home, port: int, model: str, *options: str, log=subprocess.DEVNULL):
    """`tunelab serve` as its own process (transformers backend, `model` served, `options` added), for the
    tests that signal or kill it; returns once /health answers."""
    env = dict(os.environ, TUNELAB_HOME=str(home), TUNELAB_CONFIG=os.path.join(home, "config.yaml"))
    env["HF_HUB_OFFLINE"] = "1"
    command = [sys.executable, "-m", "tunelab.cli", "serve", "--port", str(port), "--model", model]
    command += ["--backend", "transformers", *options]
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while time.time() < deadline:
        assert proc.poll() is None, "the server exited at start"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2).status_code == 200:
                return proc
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise AssertionError("the server did not start")
