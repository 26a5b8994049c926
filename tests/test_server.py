"""`tunelab serve` for real: uvicorn on a loopback port; the official `openai` SDK and raw HTTP as clients."""

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.remote_server import RunningServer
from tunelab import BasicModelRunner, LLMEngine
from tunelab.config import Settings
from tunelab.server.service import Service
from tunelab.store.db import Store

ROUTES = [
    ("GET", "/v1/models", None),
    ("GET", "/v1/models/{model}", None),
    ("POST", "/v1/completions", {"model": "{model}", "prompt": "Hi", "max_tokens": 2}),
    ("POST", "/v1/chat/completions", {"model": "{model}", "messages": [{"role": "user", "content": "Hi"}]}),
    ("POST", "/v1/tunelab/compare", {"models": ["{model}"], "prompts": ["Hi"], "max_tokens": 2}),
    ("POST", "/v1/embeddings", {"model": "{model}", "input": "Hi"}),
    ("POST", "/tokenize", {"model": "{model}", "prompt": "Hi"}),
    ("POST", "/detokenize", {"model": "{model}", "tokens": [1, 2]}),
    ("GET", "/tokenizer_info?model={model}", None),
    ("POST", "/v1/responses", {"model": "{model}", "input": "Hi", "max_output_tokens": 2, "store": False}),
    ("POST", "/v1/chat/completions", {"model": "{model}", "messages": [{"role": "user", "content": "Hi"}],
                                      "max_tokens": 2, "stream": True}),
]  # fmt: skip


@pytest.fixture(scope="module")
def setup(tunelab_home, tiny_chat_dir, tiny_base_dir, tmp_path_factory):
    db = tmp_path_factory.mktemp("store") / "tunelab.db"
    settings = Settings(home=tunelab_home)
    store = Store.open(settings, f"sqlite:///{db}")
    alice = store.create_key("alice")[1]
    bob = store.create_key("bob")[1]
    revoked_key, revoked = store.create_key("carol")
    store.revoke_key(revoked_key.id)
    private = str(tiny_base_dir)  # alice's model: bob must not learn it exists
    store.set_owner("model", private, "alice")
    service = Service(settings, store, extra_models=[str(tiny_chat_dir), private], backend="transformers")
    with RunningServer(service) as running:
        yield {
            "url": running.url,
            "alice": alice,
            "bob": bob,
            "revoked": revoked,
            "chat": str(tiny_chat_dir),
            "private": private,
            "service": service,
        }


def client(setup, key="alice") -> openai.OpenAI:
    return openai.OpenAI(base_url=setup["url"] + "/v1", api_key=setup[key], max_retries=0)


def test_chat_completions_through_the_openai_sdk(setup):
    sdk = client(setup)
    out = sdk.chat.completions.create(
        model=setup["chat"],
        messages=[{"role": "user", "content": "Tell me how to train my dog"}],
        max_tokens=5,
        temperature=0,
        n=2,
        seed=1,
    )
    assert len(out.choices) == 2 and out.choices[0].message.content == out.choices[1].message.content
    assert out.choices[0].finish_reason == "length" and out.object == "chat.completion"
    assert out.usage.completion_tokens == 10 and out.usage.prompt_tokens > 0
    assert out.usage.total_tokens == out.usage.prompt_tokens + 10
    # the same answer the runner gives locally through the model's own template
    local = BasicModelRunner(setup["chat"], backend="transformers").generate(
        "Tell me how to train my dog", max_new_tokens=5
    )
    assert out.choices[0].message.content == local.text


def test_completions_take_a_list_and_stop_strings(setup):
    sdk = client(setup)
    prompts = ["Tell me how to train my dog to sit", "What do you think of Mars?"]
    out = sdk.completions.create(model=setup["chat"], prompt=prompts, max_tokens=8, temperature=0)
    local = BasicModelRunner(setup["chat"], backend="transformers", template="raw")
    assert [c.text for c in out.choices] == local(prompts, max_new_tokens=8)
    assert [c.index for c in out.choices] == [0, 1]
    cut = out.choices[0].text[3:6]
    stopped = sdk.completions.create(
        model=setup["chat"], prompt=prompts[0], max_tokens=8, temperature=0, stop=[cut]
    )
    assert stopped.choices[0].finish_reason == "stop" and cut not in stopped.choices[0].text


def test_streaming_chat_gives_the_same_text_as_one_response(setup):
    sdk = client(setup)
    messages = [{"role": "user", "content": "What do you think of Mars?"}]
    whole = sdk.chat.completions.create(model=setup["chat"], messages=messages, max_tokens=12, temperature=0)
    stream = sdk.chat.completions.create(
        model=setup["chat"],
        messages=messages,
        max_tokens=12,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    pieces = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(pieces) > 2  # it really arrives piece by piece
    assert "".join(pieces) == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == [
        "length"
    ]
    assert chunks[-1].usage.completion_tokens == 12


def test_streaming_completions(setup):
    sdk = client(setup)
    whole = sdk.completions.create(model=setup["chat"], prompt="Hello world", max_tokens=10, temperature=0)
    parts = list(
        sdk.completions.create(
            model=setup["chat"], prompt="Hello world", max_tokens=10, temperature=0, stream=True
        )
    )
    assert "".join(p.choices[0].text for p in parts) == whole.choices[0].text
    assert parts[-1].choices[0].finish_reason == "length"


def test_models_list_and_retrieve(setup):
    sdk = client(setup)
    ids = {m.id for m in sdk.models.list()}
    assert {"gemma-3-270m", "smollm2-135m-instruct", setup["chat"], setup["private"]} <= ids
    assert sdk.models.retrieve(setup["chat"]).id == setup["chat"]


@pytest.mark.parametrize("penalties", [{}, {"frequency_penalty": 1.5, "presence_penalty": 0.5}])
def test_concurrent_requests_are_batched_not_serialised(setup, penalties):
    sdk = client(setup)
    service = setup["service"]
    before = len(service.batcher.batches)
    prompts = [f"Question number {i}: what do you think of Mars?" for i in range(8)]

    def ask(prompt):
        out = sdk.completions.create(
            model=setup["chat"], prompt=prompt, max_tokens=12, temperature=0, **penalties
        )
        return out.choices[0].text

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, prompts))
    sizes = service.batcher.batches[before:]
    assert sum(sizes) == 8 and max(sizes) > 1, sizes  # some requests shared one engine call
    assert answers == [ask(p) for p in prompts]  # batching does not change answers


def test_lamini_clients_talk_to_the_server(setup):
    config = {"production.url": setup["url"], "production.key": setup["alice"]}
    engine = LLMEngine(id="example_llm", model_name=setup["chat"], config=config)
    assert isinstance(engine("What do you think of Mars?", max_new_tokens=4), str)
    runner = BasicModelRunner(setup["chat"], config=config)
    assert runner.generate("Hi", max_new_tokens=3).backend == "remote"
    with pytest.raises(Exception, match="401"):
        BasicModelRunner(setup["chat"], config={**config, "production.key": setup["revoked"]})("Hi")


def _request(setup, method, path, body, key, model=None):
    headers = {} if key is None else {"Authorization": key}
    model = model or setup["private"]
    path = path.replace("{model}", model)
    if body is not None:
        body = json.loads(json.dumps(body).replace("{model}", model))
    return httpx.request(method, setup["url"] + path, json=body, headers=headers, timeout=30)


@pytest.mark.parametrize("method,path,body", ROUTES)
def test_auth_matrix_on_every_route(setup, method, path, body):
    for key, status in [
        (None, 401),
        ("Basic abc", 401),
        ("Bearer", 401),
        ("Bearer tl-not-a-real-key", 401),
        (f"Bearer {setup['revoked']}", 401),
        (f"Bearer {setup['bob']}", 404 if "{model}" in path or body else 200),
        (f"Bearer {setup['alice']}", 200),
    ]:
        response = _request(setup, method, path, body, key)
        assert response.status_code == status, (key, response.text)
        if status != 200:
            error = response.json()["error"]
            assert error["message"] and error["type"]
        if key and setup["bob"] in key:
            # to bob, alice's model looks exactly like one that does not exist
            ghost = _request(setup, method, path, body, key, model="/no/such/model")
            if "{model}" in path or body:
                assert response.json() == json.loads(ghost.text.replace("/no/such/model", setup["private"]))
            else:
                assert setup["private"] not in response.text


def test_a_key_revoked_during_its_stream_finishes_that_stream_and_nothing_after(setup):
    store = setup["service"].store
    key, secret = store.create_key("dave")
    headers = {"Authorization": f"Bearer {secret}"}
    body = {"model": setup["chat"], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 40}
    chat = setup["url"] + "/v1/chat/completions"
    with httpx.stream("POST", chat, json={**body, "stream": True}, headers=headers, timeout=60) as stream:
        lines = stream.iter_lines()
        assert next(line for line in lines if line.startswith("data:"))
        store.revoke_key(key.id)  # as `tunelab keys revoke` does, from another process
        rest = list(lines)
    assert stream.status_code == 200 and "data: [DONE]" in rest  # valid when it started: it finishes
    after = httpx.post(chat, json=body, headers=headers, timeout=60)
    assert after.status_code == 401 and after.json()["error"]["code"] == "invalid_api_key"


def test_health_needs_no_key(setup):
    assert httpx.get(setup["url"] + "/health").json()["status"] == "ok"


def test_bad_requests_get_openai_error_bodies_and_the_server_keeps_serving(setup):
    url, headers = setup["url"], {"Authorization": f"Bearer {setup['alice']}"}
    chat = url + "/v1/chat/completions"
    broken = httpx.post(
        chat, content=b'{"model": "x", "messages": [', headers={**headers, "content-type": "application/json"}
    )
    assert broken.status_code == 400 and broken.json()["error"]["type"] == "invalid_request_error"
    wrong_type = httpx.post(
        chat, json={"model": setup["chat"], "messages": "hi", "max_tokens": "lots"}, headers=headers
    )
    assert wrong_type.status_code == 400 and "max_tokens" in wrong_type.json()["error"]["message"]
    unknown = httpx.post(
        chat,
        json={"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]},
        headers=headers,
    )
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    too_long = httpx.post(
        chat,
        json={"model": setup["chat"], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 100000},
        headers=headers,
    )
    assert too_long.status_code == 400 and too_long.json()["error"]["code"] == "context_length_exceeded"
    huge = httpx.post(
        url + "/v1/completions",
        json={"model": setup["chat"], "prompt": "x" * 10_000_000},
        headers=headers,
        timeout=60,
    )
    assert huge.status_code == 413 and "MB" in huge.json()["error"]["message"]
    refused = httpx.post(
        chat,
        json={"model": setup["chat"], "messages": [{"role": "user", "content": "hi"}], "top_logprobs": 2},
        headers=headers,
    )
    assert refused.status_code == 400 and refused.json()["error"]["param"] == "top_logprobs"
    # a part that is not text, on both routes that read a chat (found by schemathesis: /tokenize was a 500)
    image = {"type": "image_url", "image_url": {"url": "http://x/y.png"}}
    messages = [{"role": "user", "content": "hi"}, {"role": "user", "content": [image]}]
    for route in (chat, url + "/tokenize"):
        picture = httpx.post(route, json={"model": setup["chat"], "messages": messages}, headers=headers)
        assert picture.status_code == 400, picture.text
        assert picture.json()["error"]["param"] == "messages[1].content[0].type"
        assert "'image_url' part" in picture.json()["error"]["message"]
    # a body that is not UTF-8: 401 without a key (it is read before the key check), else a 400 saying so
    garbage = {"content-type": "application/json"}
    assert httpx.post(chat, content=b"\xff\xfe\x00", headers=garbage).status_code == 401
    unreadable = httpx.post(chat, content=b"\xff\xfe\x00", headers={**headers, **garbage})
    assert unreadable.status_code == 400 and "not UTF-8" in unreadable.json()["error"]["message"]
    text = httpx.post(chat, content=b'{"model": "x"}', headers={**headers, "content-type": "text/plain"})
    assert text.status_code == 400 and "Content-Type: application/json" in text.json()["error"]["message"]
    hello = {"model": setup["chat"], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    bias = httpx.post(chat, json={**hello, "logit_bias": {"1": 5}}, headers=headers)
    assert bias.status_code == 400 and bias.json()["error"]["param"] == "logit_bias"
    for seed, status in ((-(2**63), 200), (2**64 - 1, 200), (-(10**30), 400)):  # -10**30 was a 500
        seeded = httpx.post(chat, json={**hello, "seed": seed, "temperature": 1}, headers=headers)
        assert seeded.status_code == status, (seed, seeded.text)
    no_boundary = {"content-type": "multipart/form-data"}
    assert httpx.post(url + "/v1/files", content=b"x", headers=no_boundary).status_code == 401
    # a client that leaves in the middle of a stream
    body = {
        "model": setup["chat"],
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 60,
        "stream": True,
    }
    with httpx.stream("POST", chat, json=body, headers=headers, timeout=30) as response:
        for _ in response.iter_lines():
            break
    ok = client(setup).chat.completions.create(
        model=setup["chat"], messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    assert ok.choices[0].message.content is not None


def test_no_auth_mode_serves_without_keys(tunelab_home, tiny_chat_dir, tmp_path):
    settings = Settings(home=tunelab_home)
    store = Store.open(settings, f"sqlite:///{tmp_path / 'db.sqlite'}")
    service = Service(
        settings, store, extra_models=[str(tiny_chat_dir)], backend="transformers", no_auth=True
    )
    with RunningServer(service) as running:
        assert httpx.get(running.url + "/health").json()["auth"] is False
        sdk = openai.OpenAI(base_url=running.url + "/v1", api_key="anything", max_retries=0)
        assert (
            sdk.completions.create(model=str(tiny_chat_dir), prompt="Hi", max_tokens=2).choices[0].text
            is not None
        )


def test_vllm_backend_is_refused_with_the_reason_when_it_cannot_run(tiny_chat_dir):
    from tunelab.errors import ConfigError
    from tunelab.inference.backends.vllm_backend import vllm_available

    reason = vllm_available()
    if reason is None:
        pytest.skip("vLLM can run here: tests/test_vllm.py runs it")
    with pytest.raises(ConfigError, match="vllm"):
        BasicModelRunner(str(tiny_chat_dir), backend="vllm")("Hi")


def test_the_server_runs_on_a_postgresql_store(postgres_server, tunelab_home, tiny_chat_dir):
    url = postgres_server.create_database("serve_test")
    settings = Settings(home=tunelab_home)
    store = Store.open(settings, url)
    secret = store.create_key("dana")[1]
    service = Service(settings, store, extra_models=[str(tiny_chat_dir)], backend="transformers")
    with RunningServer(service) as running:
        sdk = openai.OpenAI(base_url=running.url + "/v1", api_key=secret, max_retries=0)
        assert sdk.completions.create(
            model=str(tiny_chat_dir), prompt="Hi", max_tokens=2
        ).usage.completion_tokens
        wrong = openai.OpenAI(base_url=running.url + "/v1", api_key=secret + "x", max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            wrong.models.list()


def test_penalties_and_top_p_zero_through_the_sdk(setup):
    sdk = client(setup)
    question = "Tell me about the sea"

    def ask(**options) -> str:
        out = sdk.chat.completions.create(
            model=setup["chat"],
            messages=[{"role": "user", "content": question}],
            max_tokens=16,
            **{"temperature": 0, **options},
        )
        return out.choices[0].message.content

    plain = ask()
    penalized = ask(presence_penalty=2.0, frequency_penalty=2.0)
    assert penalized != plain
    local = BasicModelRunner(setup["chat"], backend="transformers").generate(
        question, max_new_tokens=16, presence_penalty=2.0, frequency_penalty=2.0
    )
    assert penalized == local.text  # the server and the Python API share one engine
    assert ask(extra_body={"repetition_penalty": 1.5}) != plain
    assert ask(temperature=1.0, top_p=0) == plain  # top_p 0 is greedy, as OpenAI takes it
    for field, value in [("presence_penalty", 2.5), ("frequency_penalty", -3), ("repetition_penalty", 0)]:
        with pytest.raises(openai.BadRequestError) as refused:
            ask(extra_body={field: value})
        assert refused.value.param == field and field in refused.value.message


def test_streamed_usage_counts_each_prompt_once_with_n(setup):
    sdk = client(setup)
    asked = dict(model=setup["chat"], prompt=["Hello world", "Why?"], max_tokens=4, temperature=0, n=2)
    whole = sdk.completions.create(**asked).usage
    chunks = list(sdk.completions.create(**asked, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage == whole and whole.completion_tokens == 16
    messages = [{"role": "user", "content": "Hello world"}]
    chat = dict(model=setup["chat"], messages=messages, max_tokens=4, temperature=0, n=3)
    whole = sdk.chat.completions.create(**chat).usage
    chunks = list(sdk.chat.completions.create(**chat, stream=True, stream_options={"include_usage": True}))
    assert chunks[-1].usage == whole and whole.completion_tokens == 12


def test_a_chat_ending_with_an_assistant_message_continues_it(setup):
    sdk = client(setup)
    started = "The sea is"
    messages = [
        {"role": "user", "content": "Tell me about the sea"},
        {"role": "assistant", "content": started},
    ]
    out = sdk.chat.completions.create(model=setup["chat"], messages=messages, max_tokens=8, temperature=0)
    # the model goes on from the assistant's words, inside its turn (no <|im_end|> after them)
    rendered = f"<|im_start|>user\n{messages[0]['content']}<|im_end|>\n<|im_start|>assistant\n{started}"
    raw = sdk.completions.create(model=setup["chat"], prompt=rendered, max_tokens=8, temperature=0)
    assert out.choices[0].message.content == raw.choices[0].text
    streamed = sdk.chat.completions.create(
        model=setup["chat"], messages=messages, max_tokens=8, temperature=0, stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in streamed if c.choices]
    assert "".join(pieces) == raw.choices[0].text


def test_unknown_routes_and_malformed_json_say_what_is_wrong(setup):
    headers = {"Authorization": f"Bearer {setup['alice']}"}
    missing = httpx.post(setup["url"] + "/v1/no/such/route", json={}, headers=headers)
    assert missing.status_code == 404
    error = missing.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert "POST /v1/no/such/route" in error["message"] and "POST /v1/chat/completions" in error["message"]
    with pytest.raises(openai.NotFoundError):
        client(setup).post("/no/such/route", cast_to=object, body={})
    wrong_method = httpx.get(setup["url"] + "/v1/chat/completions", headers=headers)
    assert wrong_method.status_code == 405
    assert "Method not allowed (GET /v1/chat/completions)" in wrong_method.json()["error"]["message"]
    broken = httpx.post(
        setup["url"] + "/v1/chat/completions",
        content=b'{"model": "x",\n "messages": [',
        headers={**headers, "content-type": "application/json"},
    )
    error = broken.json()["error"]
    assert broken.status_code == 400 and error["param"] is None and error["code"] == "invalid_json"
    assert "not valid JSON" in error["message"] and "line 2 column 15" in error["message"]


def test_past_its_queue_limit_the_server_answers_429_with_retry_after(tunelab_home, tiny_chat_dir):
    service = Service(
        Settings(home=tunelab_home),
        None,
        extra_models=[str(tiny_chat_dir)],
        backend="transformers",
        no_auth=True,
        max_pending=2,
    )
    engine_generate, release = service.engine.generate, threading.Event()

    def held(*args, **kwargs):  # the engine is held until the test lets it go: the queue fills up
        release.wait(60)
        return engine_generate(*args, **kwargs)

    service.engine.generate = held  # the engine is shared by the data home: put back at the end
    try:
        assert_a_full_queue_is_a_429(service, str(tiny_chat_dir), release)
    finally:
        del service.engine.generate
        release.set()


def assert_a_full_queue_is_a_429(service, model: str, release: threading.Event) -> None:
    body = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with RunningServer(service) as running, ThreadPoolExecutor(2) as pool:
        chat = running.url + "/v1/chat/completions"
        waiting = [pool.submit(httpx.post, chat, json=body, timeout=60) for _ in range(2)]
        deadline = time.time() + 30
        while service.batcher.pending < 2 and time.time() < deadline:
            time.sleep(0.02)
        busy = httpx.post(chat, json=body, timeout=30)
        streamed = httpx.post(chat, json={**body, "stream": True}, timeout=30)  # refused before it starts
        release.set()
        assert [w.result().status_code for w in waiting] == [200, 200]
        for refused in (busy, streamed):
            assert refused.status_code == 429, refused.text
            assert int(refused.headers["retry-after"]) >= 1
            assert "busy" in refused.json()["error"]["message"]
        assert httpx.post(chat, json=body, timeout=30).status_code == 200  # answered again once drained
        assert service.batcher.pending == 0


def test_a_non_streamed_answer_whose_client_left_stops_early(tunelab_home, tiny_gguf):
    # llama.cpp stops a sequence nobody waits for; the engine is held until the client has gone,
    # so the answer starts only after it left (a client's own timeout, as the openai SDK's)
    service = Service(Settings(home=tunelab_home), None, extra_models=[str(tiny_gguf)], backend="llama_cpp")
    service.no_auth = True
    engine_generate, release, answers = service.engine.generate, threading.Event(), []

    def held(*args, **kwargs):
        release.wait(60)
        answers.extend(engine_generate(*args, **kwargs))
        return answers[-len(args[1]) :]

    service.engine.generate = held
    try:
        with RunningServer(service) as running:
            # greedy: sampled, the tiny random model may end its answer early by chance
            body = {
                "model": str(tiny_gguf),
                "prompt": "Once upon a time",
                "max_tokens": 200,
                "temperature": 0,
            }
            with pytest.raises(httpx.ReadTimeout):
                httpx.post(running.url + "/v1/completions", json=body, timeout=0.5)
            time.sleep(1.0)  # the server notices the closed connection (it looks every 0.25 s)
            release.set()
            deadline = time.time() + 30
            while service.batcher.pending and time.time() < deadline:
                time.sleep(0.05)
            assert answers and answers[0].completion_tokens <= 1, answers
            served = httpx.post(running.url + "/v1/completions", json={**body, "max_tokens": 20}, timeout=30)
            assert served.status_code == 200, served.text
            assert served.json()["choices"][0]["finish_reason"] == "length"
            assert served.json()["usage"]["completion_tokens"] == 20
    finally:
        del service.engine.generate
        release.set()


def test_usage_counts_the_prompt_tokens_taken_from_the_prompt_cache(tunelab_home, tiny_gguf):
    # llama.cpp keeps a finished request's tokens; the next request with the same system prompt
    # decodes only what differs, and its usage says how many prompt tokens it took from the cache
    service = Service(Settings(home=tunelab_home), None, extra_models=[str(tiny_gguf)], backend="llama_cpp")
    service.no_auth = True
    system = "You answer questions about the weather, briefly and politely, in plain words. "
    with RunningServer(service) as running:
        sdk = openai.OpenAI(base_url=running.url + "/v1", api_key="unused")

        def ask(question: str):
            messages = [{"role": "system", "content": system}, {"role": "user", "content": question}]
            return sdk.chat.completions.create(model=str(tiny_gguf), messages=messages, max_tokens=4).usage

        first, second = ask("Is it raining?"), ask("Will it snow tomorrow?")
        assert first.prompt_tokens_details.cached_tokens == 0
        assert 20 <= second.prompt_tokens_details.cached_tokens < second.prompt_tokens
        response = sdk.responses.create(
            model=str(tiny_gguf), instructions=system, input="Is it windy?", max_output_tokens=4
        )
        assert 20 <= response.usage.input_tokens_details.cached_tokens < response.usage.input_tokens
