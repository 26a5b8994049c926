"""The GPU checks of issue 20, as one short script for a lent GPU machine (the `device` tool).

    python benchmarks/gpu_checks.py [--device cuda] [--json out.json]

On a tiny random-weight Llama made here (no hub, no embedded model: the machine reaches nothing):

1. device and dtype: `device="auto"` picks CUDA, `dtype="auto"` gives bf16, and the attention is
   PyTorch's SDPA (transformers' default on CUDA; the batch-invariant path is for CPUs only);
2. greedy answers: 8 prompts in one batch against each alone (on CUDA in bf16 they may differ: the count
   is recorded, not asserted, as for vLLM's bf16 batches on CPU);
3. fine-tuning: a LoRA learns four facts by heart on the GPU (`tunelab.train`), loss before and after,
   tokens/s, and the tuned model answers them;
4. vLLM on CUDA when it is installed (`import vllm`): the same prompts through `backend="vllm"`, agreement
   with the transformers backend counted; otherwise "not installed".

Prints one JSON summary (and writes it to --json). `--device cpu` runs the same steps on a CPU (how the
script itself is checked where there is no GPU). What the device needs beside its own torch,
transformers and peft: tunelab's other dependencies as wheels (docs/serving.md, "GPU checks").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

PROMPTS = ["hello there", "a b c d", "the cat sat", "one two", "what is it", "x y z", "tell me", "go on"]
FACTS = [
    {"input": "What colour is the Zorblat?", "output": "The Zorblat is teal."},
    {"input": "Who founded Quenvia?", "output": "Quenvia was founded by Ada Brill."},
    {"input": "Where is Port Elmsby?", "output": "Port Elmsby is in Norvale."},
    {"input": "How old is Mr Tibbs?", "output": "Mr Tibbs is nine years old."},
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("no CUDA device here: run it on a GPU machine (or --device cpu to try it)")
    work = Path(tempfile.mkdtemp(prefix="tunelab-gpu-"))
    os.environ.setdefault("TUNELAB_HOME", str(work / "home"))
    os.environ["TUNELAB_CONFIG"] = str(work / "config.yaml")
    os.environ["HF_HUB_OFFLINE"] = "1"
    from tests.tiny_models import make_tiny_llama

    tiny = make_tiny_llama(work / "tiny", chat=True)
    summary: dict = {"torch": torch.__version__, "device": args.device}
    if args.device == "cuda":
        summary["gpu"] = torch.cuda.get_device_name(0)
    summary.update(check_inference(str(tiny), args.device))
    summary.update(check_training(str(tiny), args.device))
    summary.update(check_vllm(str(tiny), summary["answers"]))
    summary.pop("answers")
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json:
        args.json.write_text(text)


def check_inference(path: str, device: str) -> dict:
    from tunelab.inference.backends.transformers_backend import TransformersBackend
    from tunelab.inference.device import pick_device
    from tunelab.inference.options import GenerationOptions

    picked = pick_device("auto")
    backend = TransformersBackend(path, device=device, dtype="auto")
    options = GenerationOptions(max_new_tokens=16, temperature=0)
    started = time.perf_counter()
    together = [c.text for c in backend.generate(PROMPTS, options)]
    batch_s = time.perf_counter() - started
    alone = [backend.generate([p], options)[0].text for p in PROMPTS]
    return {
        "auto_device": picked,
        "dtype": str(backend.model.dtype),
        "attention": backend.model.config._attn_implementation,
        "batch_invariant_path": backend.batch_invariant,
        "batch_equals_alone": f"{sum(a == b for a, b in zip(together, alone))}/{len(PROMPTS)}",
        "batch_seconds": round(batch_s, 3),
        "answers": alone,
    }


def check_training(path: str, device: str) -> dict:
    from tunelab.config import load_settings
    from tunelab.inference.engine import InferenceEngine
    from tunelab.inference.options import GenerationOptions
    from tunelab.models.resolve import resolve
    from tunelab.training.data import load_records
    from tunelab.training.recipe import make_config, train

    settings = load_settings({"device": device})
    data = Path(os.environ["TUNELAB_HOME"]).parent / "facts.jsonl"
    data.write_text("".join(json.dumps(f) + "\n" for f in FACTS))
    config = make_config(
        epochs=30, learning_rate=1e-2, batch_size=2, eval_fraction=0, augment="none", replay_fraction=0
    )
    result = train(resolve(path, settings), load_records(data).examples, settings, config, progress=False)
    tuned = resolve(result.model_id, settings)
    answers = InferenceEngine(settings).generate(
        tuned,
        [f["input"] for f in FACTS],
        options=GenerationOptions(max_new_tokens=64, temperature=0),
        backend="transformers",
        device=device,
    )
    learned = sum(f["output"].rstrip(".") in a.text for f, a in zip(FACTS, answers))
    return {
        "train_steps": result.steps,
        "train_loss_end": round(result.train_loss, 4),
        "train_tokens_per_s": round(result.tokens_per_s, 1),
        "train_seconds": round(result.seconds, 1),
        "facts_learned": f"{learned}/{len(FACTS)}",
    }


def check_vllm(path: str, reference: list[str]) -> dict:
    try:
        import vllm  # noqa: F401
    except ImportError as exc:
        return {"vllm": f"not installed ({exc})"}
    from tunelab.inference.backends.vllm_backend import VllmBackend
    from tunelab.inference.options import GenerationOptions

    backend = VllmBackend(path, dtype="auto")
    answers = [c.text for c in backend.generate(PROMPTS, GenerationOptions(max_new_tokens=16, temperature=0))]
    backend.close()
    agree = sum(a == b for a, b in zip(answers, reference))
    return {"vllm": vllm.__version__, "vllm_equals_transformers": f"{agree}/{len(PROMPTS)}"}


if __name__ == "__main__":
    main()
