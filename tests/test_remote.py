"""Remote models through a real OpenAI-compatible server on loopback: llama_cpp.server with SmolLM2."""

import pytest

from tests.remote_server import API_KEY, configure_chat_gpt, serve_smollm2
from tunelab import BasicModelRunner, RemoteModelError
from tunelab.config import load_settings


@pytest.fixture(scope="module")
def server_url(tunelab_home, tmp_path_factory):
    yield from serve_smollm2(tunelab_home, tmp_path_factory)


def test_hosted_name_answers_through_the_same_call(isolated_env, server_url, monkeypatch):
    configure_chat_gpt(isolated_env, server_url)
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
    configure_chat_gpt(isolated_env, server_url)
    monkeypatch.setenv("REMOTE_KEY", API_KEY)
    runner = BasicModelRunner("chat-gpt", max_new_tokens=6)
    records = runner.generate(["The capital of France is", "One, two, three,"], template="raw")
    assert all(r.text for r in records) and records[0].template == "raw"


def test_wrong_key_is_a_clear_error(isolated_env, server_url, monkeypatch):
    configure_chat_gpt(isolated_env, server_url)
    monkeypatch.setenv("REMOTE_KEY", "wrong")
    with pytest.raises(RemoteModelError, match="refused the API key.*REMOTE_KEY"):
        BasicModelRunner("chat-gpt")("Hi")


def test_service_down_is_a_clear_error(isolated_env):
    configure_chat_gpt(isolated_env, "http://127.0.0.1:9/v1")
    with pytest.raises(RemoteModelError, match=r"127.0.0.1:9/v1 .*is not reachable"):
        BasicModelRunner("chat-gpt")("Hi")


def test_lamini_production_url_talks_to_the_server(server_url):
    settings_config = {"production.url": server_url.removesuffix("/v1"), "production.key": API_KEY}
    assert load_settings(settings_config).production_url
    runner = BasicModelRunner("smollm2", config=settings_config, max_new_tokens=8)
    assert runner("Who is the boss of Twitter?")
