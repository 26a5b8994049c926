"""vLLM, for serving on a CUDA GPU: `tunelab serve --backend vllm` (or `backend: vllm` in the config).

vLLM schedules every prompt of a batch with paged attention and continuous batching on the GPU. It is
optional (`pip install vllm` on a machine with a GPU) and never chosen by "auto". A GGUF model is served
through tunelab's dequantized torch copy (an ordinary Hugging Face folder vLLM loads directly).
vLLM's offline API returns whole answers, so a stream through it arrives in one piece per answer.
"""

from __future__ import annotations

from tunelab.errors import ConfigError, ModelFileError
from tunelab.inference.backends.base import OnText
from tunelab.inference.options import BackendOutput, GenerationOptions


def vllm_available() -> str | None:
    """None when vLLM can run here, else why not."""
    import importlib.util

    if importlib.util.find_spec("vllm") is None:
        return "vLLM is not installed (pip install vllm, on a machine with a CUDA GPU)"
    import torch

    if not torch.cuda.is_available():
        return "vLLM needs a CUDA GPU and none is visible here"
    return None


class VllmBackend:
    name = "vllm"

    def __init__(self, path: str, *, adapter_path=None, gpu_memory_utilization: float = 0.85):
        reason = vllm_available()
        if reason:
            raise ConfigError(f"backend 'vllm': {reason}; use backend 'auto'")
        if adapter_path is not None:
            raise ConfigError(
                "backend 'vllm' runs merged models: `tunelab export ID --merged DIR`, then serve DIR"
            )
        from vllm import LLM

        try:
            self.llm = LLM(model=str(path), gpu_memory_utilization=gpu_memory_utilization)
        except Exception as exc:  # vLLM raises many kinds; the user needs the model and the reason
            raise ModelFileError(f"{path}: vLLM could not load the model ({exc})") from None
        tokenizer = self.llm.get_tokenizer()
        self.tokenizer = tokenizer
        self.chat_template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
        self.bos_token = tokenizer.bos_token or ""
        self.eos_token = tokenizer.eos_token or ""
        self.add_bos = bool(tokenizer("a")["input_ids"][:1] == [tokenizer.bos_token_id])
        self.context_length = int(self.llm.llm_engine.model_config.max_model_len)

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text)["input_ids"])

    def generate(
        self, prompts: list[str], options: GenerationOptions, on_text: OnText | None = None
    ) -> list[BackendOutput]:
        from vllm import SamplingParams

        outputs: list[BackendOutput | None] = [None] * len(prompts)
        runnable = []
        for i, prompt in enumerate(prompts):
            n_prompt = self.count_tokens(prompt)
            if n_prompt + 1 > self.context_length:
                outputs[i] = BackendOutput(
                    "",
                    "error",
                    n_prompt,
                    0,
                    error=f"prompt is {n_prompt} tokens; the context is {self.context_length}",
                )
            else:
                runnable.append(i)
        params = SamplingParams(
            max_tokens=options.max_new_tokens,
            temperature=0.0 if options.greedy else options.temperature,
            top_p=1.0 if options.greedy else options.top_p,  # vLLM refuses top_p 0, which is greedy
            top_k=options.top_k or -1,
            repetition_penalty=options.repetition_penalty,
            presence_penalty=options.presence_penalty,
            frequency_penalty=options.frequency_penalty,
            stop=list(options.stop) or None,
            seed=options.seed,
            **_structured(options.json_schema),
        )
        results = (
            self.llm.generate([prompts[i] for i in runnable], params, use_tqdm=False) if runnable else []
        )
        for i, result in zip(runnable, results):
            answer = result.outputs[0]
            outputs[i] = BackendOutput(
                answer.text,
                "length" if answer.finish_reason == "length" else "stop",
                len(result.prompt_token_ids or []),
                len(answer.token_ids),
            )
            if on_text is not None:
                on_text(i, answer.text)
        return outputs  # type: ignore[return-value]

    def close(self) -> None:
        self.llm = None


def _structured(schema_json: str | None) -> dict:
    """SamplingParams arguments that constrain the answer to a JSON schema (vLLM's own guided
    decoding; the parameter's name changed across vLLM releases)."""
    if schema_json is None:
        return {}
    import json

    try:
        from vllm.sampling_params import StructuredOutputsParams

        return {"structured_outputs": StructuredOutputsParams(json=json.loads(schema_json))}
    except ImportError:
        from vllm.sampling_params import GuidedDecodingParams

        return {"guided_decoding": GuidedDecodingParams(json=json.loads(schema_json))}
