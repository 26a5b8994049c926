"""logprobs, echo, token-id prompts and /tokenize over HTTP: a real `tunelab serve` (uvicorn on loopback)
on each backend, with the official `openai` SDK and plain HTTP as clients."""

import httpx
import openai
import pytest

from tests.remote_server import RunningServer
from tests.tiny_gguf import convert_hf_llama_to_gguf
from tunelab.config import Settings
from tunelab.server.service import Service

TEXT = "The quick brown fox jumps over the lazy dog"


@pytest.fixture(scope="module")
def tiny_gguf(tiny_chat_dir, tmp_path_factory):
    return convert_hf_llama_to_gguf(tiny_chat_dir, tmp_path_factory.mktemp("gguf") / "tiny.gguf")


@pytest.fixture(scope="module", params=["transformers", "llama_cpp"])
def server(request, tunelab_home, tiny_chat_dir, tiny_gguf):
    model = str(tiny_chat_dir if request.param == "transformers" else tiny_gguf)
    service = Service(
        Settings(home=tunelab_home), None, extra_models=[model], backend=request.param, no_auth=True
    )
    with RunningServer(service) as running:
        sdk = openai.OpenAI(base_url=running.url + "/v1", api_key="none", max_retries=0)
        yield {"url": running.url, "model": model, "sdk": sdk}


def post(server, path, body) -> httpx.Response:
    return httpx.post(server["url"] + path, json=body, timeout=60)


def tokenize(server, text: str) -> list[int]:
    out = post(server, "/tokenize", {"prompt": text, "add_special_tokens": False})
    assert out.status_code == 200, out.text
    return out.json()["tokens"]


def test_tokenize_and_detokenize_round_trip_without_a_model_name(server):
    ids = tokenize(server, TEXT)
    body = post(server, "/tokenize", {"prompt": TEXT, "add_special_tokens": False}).json()
    assert body["count"] == len(ids) > 3 and body["max_model_len"] > 0
    assert post(server, "/detokenize", {"tokens": ids}).json() == {"prompt": TEXT}
    named = post(server, "/tokenize", {"model": server["model"], "prompt": TEXT, "add_special_tokens": False})
    assert named.json()["tokens"] == ids
    chat = post(server, "/tokenize", {"messages": [{"role": "user", "content": "Hi"}]}).json()
    assert post(server, "/detokenize", {"tokens": chat["tokens"]}).json()["prompt"].endswith("assistant\n")
    info = httpx.get(server["url"] + "/tokenizer_info").json()
    assert info["eos_token"] == "<|im_end|>" and "im_start" in info["chat_template"]
    # what lm-eval's remote tokenizer does with it: the EOS text back to one id
    assert len(tokenize(server, info["eos_token"])) == 1


def test_tokens_routes_answer_bad_input_with_the_field(server):
    bad = post(server, "/detokenize", {"tokens": [10**8]})
    assert bad.status_code == 400 and "100000000" in bad.json()["error"]["message"]
    both = post(server, "/tokenize", {"prompt": "a", "messages": [{"role": "user", "content": "b"}]})
    assert both.status_code == 400 and both.json()["error"]["param"] == "prompt"
    unknown = post(server, "/tokenize", {"model": "no-such-model", "prompt": "a"})
    assert unknown.status_code == 404


def test_echo_with_logprobs_scores_token_id_prompts_as_lm_eval_asks(server):
    """lm-eval's local-completions loglikelihood request: token ids, echo, logprobs 1, max_tokens 1."""
    sdk = server["sdk"]
    prompts = [tokenize(server, TEXT), tokenize(server, "Hello world! A tiny model")]
    asked = dict(model=server["model"], max_tokens=1, temperature=0, echo=True, logprobs=1)
    both = sdk.completions.create(prompt=prompts, **asked)
    assert [c.index for c in both.choices] == [0, 1]
    for ids, choice in zip(prompts, both.choices):
        lp = choice.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(ids) + 1
        assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
        assert all(x < 0 for x in lp.token_logprobs[1:]) and all(len(t) == 1 for t in lp.top_logprobs[1:])
        assert choice.text.startswith(post(server, "/detokenize", {"tokens": ids}).json()["prompt"])
        assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
        # alone, the same numbers as in the batch
        alone = sdk.completions.create(prompt=ids, **asked).choices[0].logprobs
        assert alone.token_logprobs == lp.token_logprobs and alone.top_logprobs == lp.top_logprobs
    assert both.usage.prompt_tokens == sum(len(p) for p in prompts) and both.usage.completion_tokens == 2


def test_max_tokens_zero_with_echo_scores_the_prompt_only(server):
    sdk = server["sdk"]
    ids = tokenize(server, TEXT)
    out = sdk.completions.create(model=server["model"], prompt=ids, max_tokens=0, echo=True, logprobs=0)
    choice = out.choices[0]
    assert choice.text == TEXT and out.usage.completion_tokens == 0
    assert len(choice.logprobs.token_logprobs) == len(ids) and choice.logprobs.top_logprobs[1] == {}
    by_text = sdk.completions.create(model=server["model"], prompt=TEXT, max_tokens=0, echo=True, logprobs=2)
    assert by_text.choices[0].logprobs.token_logprobs == choice.logprobs.token_logprobs
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.completions.create(model=server["model"], prompt=TEXT, max_tokens=0)
    assert refused.value.body["param"] == "max_tokens"
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.completions.create(model=server["model"], prompt=TEXT, logprobs=6)
    assert refused.value.body["param"] == "logprobs"


def test_completion_logprobs_without_echo_count_offsets_from_the_prompt(server):
    out = server["sdk"].completions.create(
        model=server["model"], prompt=TEXT, max_tokens=4, temperature=0, logprobs=3
    )
    lp = out.choices[0].logprobs
    assert len(lp.tokens) == out.usage.completion_tokens == 4 and lp.text_offset[0] == len(TEXT)
    assert all(len(t) == 3 and max(t.values()) == x for t, x in zip(lp.top_logprobs, lp.token_logprobs))


def test_chat_logprobs_whole_and_streamed(server):
    sdk = server["sdk"]
    asked = dict(
        model=server["model"],
        messages=[{"role": "user", "content": "What do you think of Mars?"}],
        max_tokens=6,
        temperature=0,
        logprobs=True,
        top_logprobs=4,
    )
    whole = sdk.chat.completions.create(**asked)
    content = whole.choices[0].logprobs.content
    assert len(content) == whole.usage.completion_tokens == 6
    assert all(len(e.top_logprobs) == 4 and e.top_logprobs[0].logprob == e.logprob for e in content)
    assert all(bytes(e.bytes).decode("utf-8", errors="replace") == e.token for e in content)
    streamed = [
        entry
        for chunk in sdk.chat.completions.create(stream=True, **asked)
        if chunk.choices and chunk.choices[0].logprobs
        for entry in chunk.choices[0].logprobs.content
    ]
    assert [e.model_dump() for e in streamed] == [e.model_dump() for e in content]
    plain = sdk.chat.completions.create(**{**asked, "logprobs": False, "top_logprobs": None})
    assert (
        plain.choices[0].logprobs is None
        and plain.choices[0].message.content == whole.choices[0].message.content
    )
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(**{**asked, "logprobs": False})
    assert refused.value.body["param"] == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as refused:
        sdk.chat.completions.create(**{**asked, "top_logprobs": 21})
    assert refused.value.body["param"] == "top_logprobs"


def test_a_server_without_a_default_model_asks_for_one(tunelab_home):
    service = Service(Settings(home=tunelab_home), None, no_auth=True)
    with RunningServer(service) as running:
        out = httpx.post(running.url + "/tokenize", json={"prompt": "Hi"})
    assert out.status_code == 400 and out.json()["error"]["param"] == "model"


def test_a_remote_model_refuses_logprobs_with_a_400(tunelab_home, isolated_env, monkeypatch):
    from tests.remote_server import configure_chat_gpt
    from tunelab.config import load_settings

    configure_chat_gpt(isolated_env, "http://127.0.0.1:9/v1")  # never reached: refused before any call
    monkeypatch.setenv("REMOTE_KEY", "unused")
    service = Service(load_settings(), None, no_auth=True)
    with RunningServer(service) as running:
        body = {"model": "chat-gpt", "prompt": "Hi", "max_tokens": 2, "logprobs": 1}
        out = httpx.post(running.url + "/v1/completions", json=body, timeout=60)
        ids = httpx.post(running.url + "/v1/completions", json={**body, "prompt": [1, 2, 3]}, timeout=60)
    assert out.status_code == 400 and "remote" in out.json()["error"]["message"], out.text
    assert ids.status_code == 400 and "local model" in ids.json()["error"]["message"], ids.text
