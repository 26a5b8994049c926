"""Training benchmark: tunelab's LoRA recipe against TRL's `SFTTrainer`, speed, memory and what it learns.

    python benchmarks/train.py [--epochs 8] [--batch 8] [--rank 16] [--lr 1e-3] [--max-seq-len 512]
                               [--only tunelab|trl] [--json out.json]
    python benchmarks/train.py --quick     # smoke run: 8 training examples, 1 epoch, 4 held-out questions

Training tokens/s and peak memory of tunelab's LoRA recipe vs TRL `SFTTrainer` (same model, data,
sequence length, batch, LoRA rank), and the held-out paraphrase accuracy reached, measured in one run.

Model: the embedded chat model smollm2-135m-instruct, as tunelab's dequantized float32 torch copy of its
GGUF. Data: tunelab's `new_facts` set, the `train` split to train on, the `heldout` split (other wordings
of the same facts) to score. Both methods get the same hyperparameters: tunelab's TrainConfig defaults
unless given (epochs, batch = micro-batch, so no gradient accumulation, LoRA rank and alpha on every
linear layer, dropout 0, learning rate, AdamW without weight decay, gradient norm clipped at 1, linear
warmup over the same number of steps then cosine decay, seed), max sequence length 512, and the same
autocast: tunelab's default choice (bf16 on a CPU with AMX / AVX512-BF16 or a CUDA GPU with bf16, else
float32), given to TRL as `bf16=`.

  tunelab  `tunelab.training.recipe.train(...)`: the answer-only loss on the model's own chat template,
           length-grouped batches, the registry entry saved at the end (no evaluation split, no
           checkpoint but the last).
  trl      `trl.SFTTrainer` with a `peft.LoraConfig` on the same float32 weights, the data in TRL's
           conversational prompt-completion form (so the loss is on the completion only and the
           model's own chat template renders it), `packing=False`, and otherwise TRL's defaults
           (random batch order, its fused-AdamW default optimizer, its chunked "nll" loss and per-step
           entropy/accuracy metrics) except `gradient_checkpointing`, which SFTConfig turns on by
           default: it is turned off (as tunelab has none) unless --trl-gradient-checkpointing.
           `warmup_steps` is tunelab's integer count (transformers 5 has no `warmup_ratio`).

Throughput = real (non-padding) training tokens / training time, with one token count for both: the
sum over the epochs of each example's tokenized length (every token of a sequence goes through the
forward and backward passes; prompt tokens count, padding does not). tunelab's `TrainResult.tokens_per_s`
counts exactly that (the `input_ids` lengths of each step's examples) over its training loop, model
loading, tokenization and saving excluded, so it is used as reported; the script replays the recipe's
batches to get the token count and from it the loop time. For TRL the count is the lengths of
`trainer.train_dataset["input_ids"]` times the epochs (checked against TRL's own `num_tokens`), and the
time is `trainer.train()` (the model load and the tokenization happen before, in `SFTTrainer(...)`;
with a fractional --epochs, TRL's own count of the tokens it processed). Padding is not counted, so
padding that a method's batching adds (TRL's random batches pad more than tunelab's length-grouped
ones) shows as lower throughput.
Each method's tokenization is compared with the other's, example by example: the token ids and the
tokens that carry loss should be identical, so both process the same tokens.

Each method runs in its own subprocess, so its peak RSS (`ru_maxrss`, read right after training,
before the evaluation loads the tuned model again) and on CUDA `torch.cuda.max_memory_allocated` are
its own. After training each tuned model answers the held-out questions through tunelab
(`BasicModelRunner(..., backend="transformers")`, greedy, 48 new tokens, one batch; TRL's model merged
and saved with its tokenizer to a temporary directory first), scored with `tunelab.evaluation.scoring.score`
(answer key contained in the normalised answer). The untuned base model is scored once the same way.

Training on all the cores is slowed a lot by any other busy process, so the script waits for the CPUs
to be idle before each method and runs a method again when other processes took more than 5% of the
CPUs meanwhile (the table shows their share). tunelab's tuned model stays in tunelab's registry (its id
is printed; the same settings give the same id, so a rerun replaces it).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from machine import BUSY_THRESHOLD, busy_cpu_seconds, children_cpu_seconds, cores, mem_gib, wait_idle

MODEL = "smollm2-135m-instruct"
DATASET = "new_facts"
METHODS = {"tunelab": "tunelab LoRA recipe", "trl": "TRL SFTTrainer + peft"}
BASE = "base"
MAX_NEW_TOKENS = 48
QUICK_TRAIN, QUICK_HELDOUT = 8, 4


# ---------------------------------------------------------------------------------------------
# Small helpers (the CPU-idle ones are in machine.py, shared with generate.py)
# ---------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for dist in ("tunelab", "torch", "transformers", "trl", "peft", "accelerate", "datasets"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            out[dist] = "not installed"
    return out


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def select_data(quick: bool) -> tuple[list[dict], list[dict]]:
    """(train records, held-out records) of new_facts; --quick: the first 8 training records and 4
    held-out questions, those about the trained facts first."""
    from tunelab.training.datasets import load_dataset

    train, heldout = load_dataset(DATASET, "train"), load_dataset(DATASET, "heldout")
    if quick:
        train = train[:QUICK_TRAIN]
        facts = {r["fact_id"] for r in train}
        same = [r for r in heldout if r["fact_id"] in facts]  # the trained facts first
        heldout = (same + [r for r in heldout if r["fact_id"] not in facts])[:QUICK_HELDOUT]
    return train, heldout


# ---------------------------------------------------------------------------------------------
# Workers: one method each, in a subprocess. `job` holds the data and settings.
# ---------------------------------------------------------------------------------------------


def score_heldout(model: str, heldout: list[dict], max_new_tokens: int) -> dict:
    """Greedy answers to the held-out questions (one batch) through tunelab, scored by answer key."""
    from tunelab import BasicModelRunner
    from tunelab.evaluation.scoring import score

    runner = BasicModelRunner(model, backend="transformers")
    start = time.perf_counter()
    completions = runner.generate([r["input"] for r in heldout], max_new_tokens=max_new_tokens)
    seconds = time.perf_counter() - start
    rows = []
    for record, completion in zip(heldout, completions):
        if completion.error:
            raise RuntimeError(f"{model}: {completion.error}")
        rows.append(
            {
                "input": record["input"],
                "answer": record["answer"],
                "output": completion.text,
                "contained": score(completion.text, record["answer"])["contained"],
            }
        )
    return {
        "accuracy": sum(r["contained"] for r in rows) / max(len(rows), 1),
        "n": len(rows),
        "seconds": seconds,
        "rows": rows,
    }


def tunelab_rows(job: dict, config, tokenizer) -> list:
    """The recipe's own tokenization of the training examples (tunelab.training.recipe), in order."""
    from tunelab.inference.backends.transformers_backend import tokenizer_adds_bos
    from tunelab.training.data import load_records
    from tunelab.training.recipe import tokenize_all, training_template

    examples = load_records(job["train"]).examples
    add_bos = tokenizer_adds_bos(tokenizer)
    template = training_template(config.template, tokenizer, MODEL, add_bos)
    assert config.eval_fraction == 0 and config.augment == "none"  # the examples as given, all trained
    return tokenize_all(examples, template, tokenizer, add_bos, config.max_seq_len)


def recipe_tokens(config, lengths: list[int]) -> int:
    """The tokens tunelab's loop trains on: its batches replayed, as `trained_tokens` counts them."""
    from tunelab.training.recipe import epoch_batches

    steps_per_epoch = math.ceil(len(lengths) / config.batch_size)
    total_steps = max(1, math.ceil(steps_per_epoch * config.epochs))
    tokens = 0
    for step in range(total_steps):
        epoch, index = divmod(step, steps_per_epoch)
        tokens += sum(
            lengths[i] for i in epoch_batches(lengths, config.batch_size, config.seed, epoch)[index]
        )
    return tokens


def cuda_peak_mib(torch) -> float | None:
    return torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() else None


def worker_base(job: dict) -> dict:
    import torch

    torch.set_num_threads(job["threads"])
    return {"eval": score_heldout(MODEL, job["heldout"], job["max_new_tokens"])}


def worker_tunelab(job: dict) -> dict:
    import torch

    torch.set_num_threads(job["threads"])
    from transformers import AutoTokenizer

    from tunelab.config import load_settings
    from tunelab.models.resolve import resolve
    from tunelab.training.data import load_records
    from tunelab.training.recipe import make_config, train, use_bf16_autocast

    settings = load_settings()
    resolved = resolve(MODEL, settings)
    examples = load_records(job["train"]).examples
    config = make_config(**job["config"])
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    result = train(resolved, examples, settings, config, progress=False)
    call_s = time.perf_counter() - start
    rss, cuda_mib = peak_rss_mib(), cuda_peak_mib(torch)

    # The recipe's token count, and from it (and its tokens/s) its loop time.
    lengths = [
        len(r.input_ids) for r in tunelab_rows(job, config, AutoTokenizer.from_pretrained(job["hf_dir"]))
    ]
    tokens = recipe_tokens(config, lengths)
    metrics = [json.loads(line) for line in (result.path / "metrics.jsonl").read_text().splitlines() if line]
    losses = [m["train_loss"] for m in metrics if "train_loss" in m]
    from safetensors.torch import load_file

    adapter = load_file(str(result.path / "adapter" / "adapter_model.safetensors"))
    trainable = sum(t.numel() for t in adapter.values())
    return {
        "model_id": result.model_id,
        "steps": result.steps,
        "train_s": tokens / result.tokens_per_s,
        "train_call_s": call_s,
        "tokens": tokens,
        "tokens_formula": sum(lengths) * config.epochs,
        "tokens_per_s": result.tokens_per_s,
        "lengths": lengths,
        "final_loss": result.train_loss,
        "mean_loss": sum(losses) / len(losses),
        "losses": losses,
        "peak_rss_mib": rss,
        "peak_cuda_mib": cuda_mib,
        "bf16": use_bf16_autocast(config, "cuda" if cuda else "cpu"),
        "trainable_params": trainable,
        "eval": score_heldout(result.model_id, job["heldout"], job["max_new_tokens"]),
    }


def compare_tokenization(tokenizer, trl_rows: list[tuple[int, list[int], list[int]]], tl_rows: list) -> dict:
    """TRL's tokenized examples (idx, input_ids, labels) against tunelab's: the ids, and which tokens
    carry loss."""
    ignore = -100
    same_ids = same_mask = 0
    first_diff = None
    for idx, ids, labels in trl_rows:
        ours = tl_rows[idx]
        ids_equal = ids == ours.input_ids
        mask_equal = [x != ignore for x in labels] == [x != ignore for x in ours.labels]
        same_ids += ids_equal
        same_mask += mask_equal
        if first_diff is None and not (ids_equal and mask_equal):
            first_diff = {
                "example": idx,
                "trl_text": tokenizer.decode(ids),
                "tunelab_text": tokenizer.decode(ours.input_ids),
                "trl_loss_text": tokenizer.decode([t for t, x in zip(ids, labels) if x != ignore]),
                "tunelab_loss_text": tokenizer.decode(
                    [t for t, x in zip(ours.input_ids, ours.labels) if x != ignore]
                ),
            }
    first = trl_rows[0] if trl_rows else None
    return {
        "examples": len(trl_rows),
        "tunelab_examples": len(tl_rows),
        "same_ids": same_ids,
        "same_loss_mask": same_mask,
        "first_diff": first_diff,
        "example_0_loss_text": tokenizer.decode([t for t, x in zip(first[1], first[2]) if x != ignore])
        if first
        else None,
    }


def worker_trl(job: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="tunelab-bench-trl-") as out_dir:
        return train_trl(job, Path(out_dir))


def train_trl(job: dict, out_dir: Path) -> dict:
    import torch

    torch.set_num_threads(job["threads"])
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer, set_seed
    from trl import SFTConfig, SFTTrainer

    from tunelab.training.recipe import make_config, use_bf16_autocast

    config = make_config(**job["config"])
    cuda = torch.cuda.is_available()
    bf16 = use_bf16_autocast(config, "cuda" if cuda else "cpu")  # tunelab's choice, for both
    set_seed(config.seed)
    tokenizer = AutoTokenizer.from_pretrained(job["hf_dir"])
    model = AutoModelForCausalLM.from_pretrained(job["hf_dir"], dtype=torch.float32)
    rows = [
        {
            "idx": i,
            "prompt": [{"role": "user", "content": r["input"]}],
            "completion": [{"role": "assistant", "content": r["output"]}],
        }
        for i, r in enumerate(job["train"])
    ]
    # tunelab's step count and warmup (int(total * fraction)), so both follow the same schedule.
    steps_per_epoch = math.ceil(len(rows) / config.batch_size)
    total_steps = max(1, math.ceil(steps_per_epoch * config.epochs))
    args = SFTConfig(
        output_dir=str(out_dir),
        per_device_train_batch_size=config.batch_size,
        gradient_accumulation_steps=1,
        num_train_epochs=config.epochs,
        learning_rate=config.lr,
        lr_scheduler_type="cosine",
        warmup_steps=int(total_steps * config.warmup_fraction),
        weight_decay=config.weight_decay,
        max_grad_norm=config.max_grad_norm,
        max_length=config.max_seq_len,
        bf16=bf16,
        use_cpu=not cuda,
        # SFTConfig's default gradient_checkpointing=True (transformers 5's new name for it):
        activation_checkpointing=job["trl_gradient_checkpointing"],
        logging_steps=1,
        save_strategy="no",
        report_to=[],
        seed=config.seed,
        packing=False,
        disable_tqdm=True,
    )
    trainer = SFTTrainer(
        model=model,
        args=args,
        train_dataset=Dataset.from_list(rows),
        processing_class=tokenizer,
        peft_config=LoraConfig(
            r=config.lora_rank,
            lora_alpha=config.lora_alpha,
            lora_dropout=config.lora_dropout,
            target_modules=config.target_modules,
            task_type="CAUSAL_LM",
        ),
    )
    dataset = trainer.train_dataset
    lengths = [len(ids) for ids in dataset["input_ids"]]
    check = compare_tokenization(
        tokenizer,
        list(zip(dataset["idx"], dataset["input_ids"], dataset["labels"])),
        tunelab_rows(job, config, tokenizer),
    )
    trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)

    if cuda:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    output = trainer.train()
    train_s = time.perf_counter() - start
    rss, cuda_mib = peak_rss_mib(), cuda_peak_mib(torch)

    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    trl_tokens = getattr(trainer, "_total_train_tokens", None)
    tokens = sum(lengths) * config.epochs
    if trl_tokens is not None and not float(config.epochs).is_integer():
        tokens = trl_tokens  # a partial last epoch: the tokens TRL actually processed
    merged_dir = out_dir / "merged"
    merged = trainer.model.merge_and_unload()
    merged.config.use_cache = True
    merged.save_pretrained(merged_dir)
    tokenizer.save_pretrained(merged_dir)
    return {
        "steps": trainer.state.global_step,
        "train_s": train_s,
        "tokens": tokens,
        "tokens_formula": sum(lengths) * config.epochs,
        "trl_num_tokens": trl_tokens,
        "tokens_per_s": tokens / train_s,
        "lengths": lengths,
        "final_loss": losses[-1] if losses else None,
        "mean_loss": output.training_loss,
        "losses": losses,
        "peak_rss_mib": rss,
        "peak_cuda_mib": cuda_mib,
        "bf16": bf16,
        "trainable_params": trainable,
        "optimizer": getattr(args.optim, "value", str(args.optim)),
        "gradient_checkpointing": args.activation_checkpointing,
        "tokenization_check": check,
        "eval": score_heldout(str(merged_dir), job["heldout"], job["max_new_tokens"]),
    }


def run_worker(method: str, job_path: str) -> None:
    job = json.loads(Path(job_path).read_text())
    workers = {BASE: worker_base, "tunelab": worker_tunelab, "trl": worker_trl}
    result = workers[method](job)
    result["peak_rss_mib_end"] = peak_rss_mib()
    Path(job["out"]).write_text(json.dumps(result))


# ---------------------------------------------------------------------------------------------
# The orchestrating process
# ---------------------------------------------------------------------------------------------


def worker_messages(stderr: str, limit: int = 20) -> list[str]:
    """The distinct lines a worker printed on stderr (warnings, TRL's notes), progress bars left out."""
    seen: list[str] = []
    for line in stderr.replace("\r", "\n").splitlines():
        text = line.strip()
        if not text or text.startswith(("Loading weights", "warnings.warn(")) or text in seen:
            continue
        seen.append(text[:400])
    return seen[:limit]


def run_method(
    m: str, job: dict, tmp: Path, env: dict, args, console, *, timed: bool
) -> tuple[dict | None, str]:
    """Run one worker (again when disturbed); returns (its result or None, a note on failure)."""
    job = dict(job, out=str(tmp / f"{m}.json"))
    job_path = tmp / f"{m}.job.json"
    job_path.write_text(json.dumps(job))
    label = METHODS.get(m, "base model (untuned)")
    attempts = args.retries + 1 if timed else 1
    for attempt in range(attempts):
        if timed:
            waited, share = wait_idle(args.wait_idle)
            if waited >= 1:
                console.print(
                    f"  waited {waited:.0f} s for other processes to finish "
                    f"(they now use {share:.0%} of the CPUs)"
                )
        with console.status(f"running {label} ..."):
            start, busy0, own0 = time.perf_counter(), busy_cpu_seconds(), children_cpu_seconds()
            timed_out = False
            try:
                proc = subprocess.run(
                    [sys.executable, __file__, "--worker", m, "--job", str(job_path)],
                    env=env,
                    capture_output=True,
                    text=True,
                    timeout=args.method_timeout,
                )
            except subprocess.TimeoutExpired as exc:
                timed_out = True
                proc = subprocess.CompletedProcess(exc.cmd, -9, "", f"stopped after {exc.timeout:.0f} s")
                Path(job["out"]).unlink(missing_ok=True)
            wall, busy1 = time.perf_counter() - start, busy_cpu_seconds()
        other = None
        if busy0 is not None and busy1 is not None:
            other = max(0.0, (busy1 - busy0) - (children_cpu_seconds() - own0)) / (wall * cores())
        busy_note = "" if other is None else f"; other processes used {other:.0%} of the CPUs"
        ok = proc.returncode == 0 and Path(job["out"]).exists()
        if not ok:
            if timed_out and attempt < attempts - 1:
                console.print(f"  [yellow]{label} stopped after {wall:.0f} s{busy_note}; running it again[/]")
                continue
            tail = "\n".join(proc.stderr.strip().splitlines()[-8:])
            return None, f"{label} failed (exit {proc.returncode}): {tail}"
        console.print(f"  {label}: done in {wall:.0f} s{busy_note}")
        if not timed or other is None or other <= BUSY_THRESHOLD:
            break
        if attempt < attempts - 1:
            console.print("  [yellow]that disturbs the timing; running it again[/]")
    result = json.loads(Path(job["out"]).read_text())
    result.update(other_cpu_share=other, wall_s=wall, messages=worker_messages(proc.stderr))
    return result, ""


def fmt(value, spec: str, missing: str = "-") -> str:
    return missing if value is None else format(value, spec)


def main(argv: list[str] | None = None) -> int:
    from tunelab.training.recipe import TrainConfig

    defaults = TrainConfig()
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[2])
    parser.add_argument(
        "--epochs", type=float, default=defaults.epochs, help=f"epochs (default {defaults.epochs:g})"
    )
    parser.add_argument(
        "--batch", type=int, default=defaults.batch_size, help=f"batch size (default {defaults.batch_size})"
    )
    parser.add_argument(
        "--rank", type=int, default=defaults.lora_rank, help=f"LoRA rank (default {defaults.lora_rank})"
    )
    parser.add_argument(
        "--alpha", type=float, default=None, help="LoRA alpha (default: 2 x rank, tunelab's 32 at rank 16)"
    )
    parser.add_argument(
        "--lr", type=float, default=defaults.lr, help=f"learning rate (default {defaults.lr:g})"
    )
    parser.add_argument("--max-seq-len", type=int, default=512, help="max sequence length (default 512)")
    parser.add_argument("--seed", type=int, default=defaults.seed, help=f"seed (default {defaults.seed})")
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"smoke run: {QUICK_TRAIN} training examples, 1 epoch, {QUICK_HELDOUT} held-out questions",
    )
    parser.add_argument("--only", choices=list(METHODS), help="run one method only")
    parser.add_argument("--json", type=Path, help="write every number and answer to this file")
    parser.add_argument(
        "--threads",
        type=int,
        default=cores(),
        help="torch threads for every method (default: the cores this process may use)",
    )
    parser.add_argument(
        "--trl-gradient-checkpointing",
        action="store_true",
        help="keep SFTConfig's default gradient_checkpointing=True (off by default: tunelab has none)",
    )
    parser.add_argument(
        "--wait-idle",
        type=float,
        default=120,
        help="seconds to wait for other busy processes before a method (default 120)",
    )
    parser.add_argument(
        "--method-timeout",
        type=float,
        default=3600,
        help="seconds one method (training + evaluation) may take (default 3600)",
    )
    parser.add_argument(
        "--retries",
        type=int,
        default=1,
        help="run a method again when other processes took CPU meanwhile (default 1)",
    )
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.worker:
        run_worker(args.worker, args.job)
        return 0
    if args.quick:
        args.epochs = 1

    from rich.console import Console
    from rich.table import Table

    from tunelab.config import load_settings
    from tunelab.models.gguf_cache import dequantized_dir
    from tunelab.models.resolve import resolve
    from tunelab.training.recipe import make_config

    console = Console(width=None if sys.stdout.isatty() else 150)
    t_total = time.perf_counter()
    env = dict(
        os.environ,
        HF_HUB_OFFLINE="1",
        HF_HUB_DISABLE_PROGRESS_BARS="1",
        HF_DATASETS_DISABLE_PROGRESS_BARS="1",
        TOKENIZERS_PARALLELISM="false",
    )
    os.environ["HF_HUB_OFFLINE"] = "1"
    settings = load_settings()
    resolved = resolve(MODEL, settings)
    hf_dir = dequantized_dir(resolved.gguf_path, settings.home)  # made once, then cached
    train, heldout = select_data(args.quick)
    alpha = args.alpha if args.alpha is not None else 2 * args.rank
    config_kwargs = {
        "epochs": args.epochs,
        "batch_size": args.batch,
        "micro_batch_size": args.batch,
        "max_seq_len": args.max_seq_len,
        "lora_rank": args.rank,
        "lora_alpha": alpha,
        "learning_rate": args.lr,
        "eval_fraction": 0,
        # the same examples as TRL trains on: no augmentation, replay, report or time budget
        "augment": "none",
        "replay_fraction": 0,
        "knowledge_report": False,
        "time_budget_s": None,
        "checkpoint_every": 10**6,
        "eval_every": 10**6,
        "seed": args.seed,
    }
    config = make_config(**config_kwargs)  # validated here, before any worker starts
    steps = max(1, math.ceil(math.ceil(len(train) / config.batch_size) * config.epochs))
    machine = {
        "cpu": cpu_model(),
        "cores": cores(),
        "mem_gib": round(mem_gib(), 1),
        "platform": platform.platform(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "versions": versions(),
    }
    console.print(
        f"[bold]tunelab training benchmark[/] — {MODEL} (float32 torch copy of the GGUF), LoRA rank "
        f"{config.lora_rank} alpha {config.lora_alpha:g} on all linear layers, {len(train)} {DATASET} "
        f"training examples x {config.epochs:g} epochs, batch {config.batch_size} ({steps} steps), lr "
        f"{config.lr:g} (warmup {int(steps * config.warmup_fraction)} steps, cosine), max length "
        f"{config.max_seq_len}, seed {config.seed}; {len(heldout)} held-out questions, greedy, "
        f"{MAX_NEW_TOKENS} new tokens"
    )
    console.print(
        f"machine: {machine['cpu']}, {machine['cores']} cores, {machine['mem_gib']:.0f} GiB; {args.threads} "
        f"threads; versions: {', '.join(f'{k} {v}' for k, v in machine['versions'].items())}"
    )

    job = {
        "train": train,
        "heldout": heldout,
        "config": config_kwargs,
        "hf_dir": str(hf_dir),
        "threads": args.threads,
        "max_new_tokens": MAX_NEW_TOKENS,
        "trl_gradient_checkpointing": args.trl_gradient_checkpointing,
    }
    methods = [args.only] if args.only else list(METHODS)
    results: dict[str, dict] = {}
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        base, why = run_method(BASE, job, Path(tmp), env, args, console, timed=False)
        if base is None:
            notes.append(why)
            console.print(f"[red]{why}[/]")
        for m in methods:
            result, why = run_method(m, job, Path(tmp), env, args, console, timed=True)
            if result is None:
                notes.append(why)
                console.print(f"[red]{why}[/]")
                continue
            results[m] = result
            if result["other_cpu_share"] is not None and result["other_cpu_share"] > BUSY_THRESHOLD:
                notes.append(
                    f"{METHODS[m]} ran while other processes used {result['other_cpu_share']:.0%} of the "
                    "CPUs: its numbers are low; rerun on an idle machine"
                )

    cuda = any(r.get("peak_cuda_mib") is not None for r in results.values())
    table = Table(
        title=f"{MODEL}: LoRA fine-tuning on {len(train)} {DATASET} examples x {config.epochs:g} epochs, "
        f"held-out accuracy on {len(heldout)} paraphrased questions"
    )
    columns = ["method", "steps", "train s", "tokens", "tokens/s", "peak RSS MiB"]
    columns += ["peak CUDA MiB"] if cuda else []
    columns += ["final loss", "mean loss", "held-out contained", "bf16", "others' CPU"]
    for col in columns:
        table.add_column(col, justify="left" if col == "method" else "right")
    for m, r in results.items():
        row = [
            METHODS[m],
            str(r["steps"]),
            f"{r['train_s']:.1f}",
            f"{r['tokens']:.0f}",
            f"{r['tokens_per_s']:.0f}",
            f"{r['peak_rss_mib']:.0f}",
        ]
        row += [fmt(r["peak_cuda_mib"], ".0f")] if cuda else []
        row += [
            fmt(r["final_loss"], ".3f"),
            fmt(r["mean_loss"], ".3f"),
            f"{r['eval']['accuracy']:.0%} ({r['eval']['accuracy'] * r['eval']['n']:.0f}/{r['eval']['n']})",
            "yes" if r["bf16"] else "no",
            fmt(r["other_cpu_share"], ".0%"),
        ]
        table.add_row(*row)
    if base is not None:
        b = base["eval"]
        cells = {c: "" for c in columns}
        cells["method"] = "base model (untuned)"
        cells["held-out contained"] = f"{b['accuracy']:.0%} ({b['accuracy'] * b['n']:.0f}/{b['n']})"
        table.add_row(*(cells[c] for c in columns))
    console.print(table)

    ratios = {}
    if "tunelab" in results and "trl" in results:
        t, r = results["tunelab"], results["trl"]
        ratios = {
            "tokens_per_s": t["tokens_per_s"] / r["tokens_per_s"],
            "peak_rss": t["peak_rss_mib"] / r["peak_rss_mib"],
        }
        console.print(f"tunelab/TRL tokens/s = {ratios['tokens_per_s']:.2f}")
        console.print(f"peak memory tunelab/TRL = {ratios['peak_rss']:.2f} (RSS)")
        if t.get("peak_cuda_mib") and r.get("peak_cuda_mib"):
            ratios["peak_cuda"] = t["peak_cuda_mib"] / r["peak_cuda_mib"]
            console.print(f"peak CUDA memory tunelab/TRL = {ratios['peak_cuda']:.2f}")
        if t["trainable_params"] != r["trainable_params"]:
            notes.append(
                f"trainable parameters differ: tunelab {t['trainable_params']}, TRL {r['trainable_params']}"
            )
        else:
            console.print(f"trainable LoRA parameters (both): {t['trainable_params']:,}")
        if t["tokens"] != r["tokens"]:
            notes.append(f"the token counts differ: tunelab {t['tokens']:.0f}, TRL {r['tokens']:.0f}")
    if "tunelab" in results:
        t = results["tunelab"]
        console.print(
            f"tunelab: recipe's own {t['tokens_per_s']:.0f} tokens/s over its loop ({t['train_s']:.1f} s); "
            f"the whole train() call took {t['train_call_s']:.1f} s (load, tokenize, save included); "
            f"model id {t['model_id']}"
        )
        if abs(t["tokens"] - t["tokens_formula"]) > 0.5:
            console.print(
                f"  (fractional epochs: {t['tokens']} tokens trained, "
                f"{t['tokens_formula']:.0f} by lengths x epochs)"
            )
    if "trl" in results:
        r = results["trl"]
        c = r["tokenization_check"]
        console.print(
            f"TRL: optimizer {r['optimizer']}, gradient checkpointing {r['gradient_checkpointing']}; "
            f"its own num_tokens {r['trl_num_tokens']} vs lengths x epochs {r['tokens']:.0f}"
        )
        console.print(
            f"TRL vs tunelab tokenization: {c['same_ids']}/{c['examples']} examples with identical "
            f"token ids, {c['same_loss_mask']}/{c['examples']} with identical loss tokens "
            f"(tunelab has {c['tunelab_examples']} examples)"
        )
        console.print(f"  loss tokens of TRL's first example: {c['example_0_loss_text']!r}")
        if c["first_diff"]:
            d = c["first_diff"]
            console.print(f"  first difference, example {d['example']}:")
            for key in ("trl_text", "tunelab_text", "trl_loss_text", "tunelab_loss_text"):
                console.print(f"    {key}: {d[key]!r}")
            notes.append("TRL's tokenization differs from tunelab's (see above)")
        if r["trl_num_tokens"] is not None and abs(r["trl_num_tokens"] - r["tokens"]) > 0.5:
            notes.append(
                f"TRL counted {r['trl_num_tokens']} non-padding tokens, "
                f"lengths x epochs gives {r['tokens']:.0f}"
            )
    for m, r in results.items():
        if r["messages"]:
            console.print(f"[dim]{METHODS[m]} printed on stderr:[/]")
            for line in r["messages"]:
                console.print(f"[dim]  {line}[/]", highlight=False)
    console.print("[bold]held-out answers[/] (first 3 questions)")
    for i, record in enumerate(heldout[:3]):
        console.print(f"  Q: {record['input']}  (key: {record['answer']})")
        for name, r in [("base", base)] + [(m, results[m]) for m in results]:
            if r is not None:
                row = r["eval"]["rows"][i]
                console.print(
                    f"    {name}: {'✓' if row['contained'] else '✗'} {row['output']!r}", highlight=False
                )
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")
    console.print(f"total benchmark time {time.perf_counter() - t_total:.0f} s")

    if args.json:
        args.json.write_text(
            json.dumps(
                {
                    "model": MODEL,
                    "hf_dir": str(hf_dir),
                    "dataset": DATASET,
                    "n_train": len(train),
                    "n_heldout": len(heldout),
                    "quick": args.quick,
                    "config": config.model_dump() | {"learning_rate": config.lr},
                    "steps": steps,
                    "threads": args.threads,
                    "max_new_tokens": MAX_NEW_TOKENS,
                    "trl_gradient_checkpointing": args.trl_gradient_checkpointing,
                    "machine": machine,
                    "base": base,
                    "methods": results,
                    "ratios": ratios,
                    "notes": notes,
                },
                indent=1,
            )
        )
        console.print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
