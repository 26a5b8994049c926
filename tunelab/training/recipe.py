"""The fine-tuning recipe: LoRA or full, read top to bottom.

    config  -> TrainConfig (validated; defaults measured, see docs/finetuning.md)
    model   -> the base's torch weights (a GGUF is dequantized once), + a LoRA adapter (peft)
    data    -> each conversation rendered with the *inference* template; loss only on answer tokens,
               each answer closed by the token that ends a turn (learned, so the model stops)
    batches -> length-grouped (little padding), in a seeded order that a resume replays
    loop    -> micro-batches accumulated to the loss of the full batch (the start all rows share run
               once); AdamW, warmup + cosine
    save    -> checkpoints every N steps (trainable weights, optimizer, scheduler, RNG, step);
               at the end the registry entry: weights, tokenizer, template, record, metrics, loss.png

It runs as one process, or under ``accelerate launch`` (DDP over GPUs, or CPU processes with gloo):
each process takes its share of every batch's micro-batches and gradients are averaged.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import math
import random
import re
import shutil
import time
import warnings
from collections.abc import Callable
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tunelab.config import Settings
from tunelab.errors import ConfigError, DataError, TrainingInterrupted
from tunelab.export.atomic import atomic_write
from tunelab.inference.templates import Template, resolve_template
from tunelab.models.registry import Entry, ModelRecord, model_dir, save_record
from tunelab.models.registry import entry as registry_entry
from tunelab.models.resolve import ResolvedModel
from tunelab.training.augment import augment, teacher_paraphraser
from tunelab.training.data import DataReport, Example
from tunelab.training.definitions import model_definer
from tunelab.training.heldout import HeldoutSet, hold_out_rewordings, kept_evaluation, split_by_fact
from tunelab.training.replay import replay_examples

log = logging.getLogger("tunelab")

IGNORE = -100  # label of a token that is not learned (prompt, padding)
FIT_AFTER_STEPS = 10  # steps timed before a run is fitted to its time budget
EVALUATIONS = 8  # held-out evaluations in a run when eval_every is None
BEST_FILE = "best.safetensors"  # in a run directory: the trainable weights of the best step so far


class TrainConfig(BaseModel):
    """Hyperparameters. Defaults were chosen by measurement on 2 CPU cores (docs/finetuning.md)."""

    model_config = ConfigDict(extra="forbid")

    method: Literal["lora", "full"] = "lora"
    epochs: float = Field(2, gt=0, le=1000)
    learning_rate: float | None = Field(None, gt=0, lt=1)  # None: 2e-3 for LoRA, 5e-5 for full
    batch_size: int = Field(8, ge=1, le=4096)  # examples per optimizer step
    micro_batch_size: int = Field(8, ge=1, le=4096)  # examples per forward pass (memory)
    max_seq_len: int = Field(512, ge=8, le=131072)
    eval_fraction: float = Field(0.1, ge=0, lt=1)
    seed: int = 0
    lora_rank: int = Field(16, ge=1, le=1024)
    lora_alpha: float = Field(32, gt=0)
    lora_dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: str | list[str] = "all-linear"
    warmup_fraction: float = Field(0.1, ge=0, lt=1)
    weight_decay: float = Field(0.0, ge=0)
    max_grad_norm: float = Field(1.0, gt=0)
    checkpoint_every: int = Field(20, ge=1)  # optimizer steps
    # held-out answers are generated every `eval_every` steps; None: about EVALUATIONS times a run (at
    # least 20 steps apart), so a long run does not spend a sixth of its time answering them
    eval_every: int | None = Field(None, ge=1)
    template: str = "auto"  # the model's own chat template; llama2 [INST] for a base model
    autocast: Literal["auto", "bf16", "off"] = "auto"
    # knowledge: more wordings of each question (training.augment), the base's own answers mixed in
    # (training.replay), the step with the best held-out answers kept (training.heldout)
    augment: str = "rules"  # rules | none | teacher:MODEL
    augment_per_fact: int = Field(12, ge=0, le=200)  # rewordings of a fact, shared among its questions
    augment_contrast: int = Field(0, ge=0, le=20)  # a fact's questions with a neighbour's answer as a guess
    # generated questions about an answer longer than this (words) are answered up to its key sentence
    augment_focus_over: int | None = Field(None, ge=1)
    # rewordings of each question with one of its nouns said as the base model defines it (0: none)
    augment_defined: int = Field(4, ge=0, le=20)
    replay_fraction: float = Field(0.25, ge=0, lt=1)  # replay examples per training example
    keep_best: bool = True  # restore the step whose held-out answers were best
    patience: int | None = Field(None, ge=1)  # stop after this many evaluations without a kept step
    # a guard on the loop's time (None: none): after 10 steps and at every evaluation, a run that would
    # not fit is shortened (its schedule too), and given its steps back when the pace recovers. Wide,
    # so that a run of 30 facts trains its epochs on a slower machine as here, and ends with the same
    # weights
    time_budget_s: float | None = Field(1200, gt=0)
    answer_tokens: int = Field(48, ge=1)  # tokens of each held-out answer generated at an evaluation
    knowledge_report: bool = True  # per fact: trained / held-out / reverse answered; probes before/after
    # a LoRA tuned from a GGUF is also written as its base file with the merged weights in this type,
    # which backend "auto" runs on llama.cpp: Q8_0 runs at 1.1x its base with the held-out accuracy of
    # F16 (85.8% vs 85.0% over four fact sets), F16 at 0.84-0.92x (benchmarks/tuned_formats.py)
    fast_gguf: Literal["q8_0", "f16"] = "q8_0"
    # torch.compile of the decoder layers for the training steps (compile_layers): "auto" where it pays
    # in time (a CPU, one process, COMPILE_MIN_STEPS steps or more, a C++ compiler). Off by default: at
    # 120 facts it trained 1.09x faster but kept fewer general probes in both seeds tried (57% and 65%
    # after, against 75% and 75%; RESULTS.md). Not part of the model's id.
    compile: Literal["auto", "on", "off"] = "off"

    @property
    def lr(self) -> float:
        return self.learning_rate or (2e-3 if self.method == "lora" else 5e-5)


def make_config(**kwargs: Any) -> TrainConfig:
    """TrainConfig from keyword arguments, with a ConfigError naming each bad field. None means "the
    default", except for a field that may be None (`time_budget_s=None`: no budget)."""
    nullable = {k for k, f in TrainConfig.model_fields.items() if type(None) in get_args(f.annotation)}
    try:
        return TrainConfig(**{k: v for k, v in kwargs.items() if v is not None or k in nullable})
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"bad training settings: {problems}") from None


@dataclass
class TrainResult:
    """What `train()` made: the new model's id (usable as a model name at once) and its numbers."""

    model_id: str
    path: Path
    method: str
    steps: int
    epochs: float
    train_loss: float
    eval_loss: float | None
    tokens_per_s: float
    seconds: float
    resumed_from_step: int | None = None
    processes: int = 1  # training processes (more under `accelerate launch`)
    heldout_accuracy: float | None = None  # of the saved step, on the questions kept back
    knowledge: dict | None = None  # the knowledge report (evaluation.knowledge), also in the entry
    planned_steps: int | None = None  # the epochs' steps
    stopped: str | None = None  # why fewer steps than planned were trained (the time budget, patience)

    @property
    def model_name(self) -> str:
        return self.model_id

    @property
    def steps_text(self) -> str:
        """ "202 steps", or "104 of 548 steps (stopped: time budget)" for a run that ended early."""
        if not self.stopped:
            return f"{self.steps} steps"
        return f"{self.steps} of {self.planned_steps} steps (stopped: {self.stopped})"


@dataclass
class Tokenized:
    input_ids: list[int]
    labels: list[int]
    source: str


# -- data -------------------------------------------------------------------------------------


def tokenize_example(example: Example, template: Template, tokenizer, add_bos: bool) -> Tokenized:
    """Token ids and labels: prompts and template markup are IGNORE, answers (+ end of turn) learned.

    Each segment is tokenized on its own, as at inference (the prompt is encoded alone, then the
    model writes the answer). An answer the template does not close with an end-of-turn token gets
    the model's EOS, so the tuned model learns to stop.
    """
    # a dict lookup per stop (get_vocab() would copy a 262k-entry vocabulary for every example)
    stop_ids = (tokenizer.convert_tokens_to_ids(s) for s in template.stop)
    end_ids = {tokenizer.eos_token_id} | {
        i for i in stop_ids if isinstance(i, int) and i != tokenizer.unk_token_id
    }
    ids: list[int] = [tokenizer.bos_token_id] if add_bos else []
    labels: list[int] = [IGNORE] * len(ids)
    for text, is_answer in template.render_conversation(example.messages):
        piece = tokenizer(text, add_special_tokens=False)["input_ids"]
        if is_answer and not end_ids.intersection(piece):
            piece = [*piece, tokenizer.eos_token_id]
        ids += piece
        labels += piece if is_answer else [IGNORE] * len(piece)
    return Tokenized(ids, labels, example.source)


def tokenize_all(
    examples: list[Example], template: Template, tokenizer, add_bos: bool, max_seq_len: int
) -> list[Tokenized]:
    rows, cut = [], []
    for example in examples:
        row = tokenize_example(example, template, tokenizer, add_bos)
        if len(row.input_ids) > max_seq_len:
            cut.append(f"{row.source} ({len(row.input_ids)} tokens)")
            row = Tokenized(row.input_ids[:max_seq_len], row.labels[:max_seq_len], row.source)
        if all(label == IGNORE for label in row.labels[1:]):
            raise DataError(
                f"{row.source}: no answer token is left within max_seq_len={max_seq_len}; "
                "raise max_seq_len or shorten the prompt",
                DataReport(),
            )
        rows.append(row)
    if cut:
        log.warning(
            "%d of %d examples are longer than max_seq_len=%d and were cut (their answers lose the end): %s",
            len(cut),
            len(rows),
            max_seq_len,
            ", ".join(cut[:10]) + (" ..." if len(cut) > 10 else ""),
        )
    return rows


def epoch_batches(lengths: list[int], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """One epoch's batches: shuffled, grouped by length within windows, batch order shuffled again.

    Depends only on (lengths, batch_size, seed, epoch), so a resumed run replays the same order.
    """
    rng = random.Random(seed * 100_003 + epoch)
    order = list(range(len(lengths)))
    rng.shuffle(order)
    window = batch_size * 16
    grouped: list[int] = []
    for start in range(0, len(order), window):
        grouped += sorted(order[start : start + window], key=lambda i: lengths[i])
    batches = [grouped[i : i + batch_size] for i in range(0, len(grouped), batch_size)]
    rng.shuffle(batches)
    return batches


def collate(rows: list[Tokenized], pad_id: int, device) -> dict[str, torch.Tensor]:
    """Right-pad to the longest row. Padding is found by length, never by token id, so a pad id that
    equals EOS (SmolLM2's) cannot mask the real EOS label."""
    width = max(len(r.input_ids) for r in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    attention = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        n = len(row.input_ids)
        input_ids[i, :n] = torch.tensor(row.input_ids)
        labels[i, :n] = torch.tensor(row.labels)
        attention[i, :n] = 1
    return {
        "input_ids": input_ids.to(device),
        "labels": labels.to(device),
        "attention_mask": attention.to(device),
    }


def answer_tokens(rows: list[Tokenized]) -> int:
    """Tokens that carry loss (a label predicted from the token before it)."""
    return sum(sum(1 for label in r.labels[1:] if label != IGNORE) for r in rows)


# A start shared by every row of a micro-batch (a chat template's system prompt and turn opening: 24
# tokens on SmolLM2, ~40% of a knowledge row) is run once and its keys and values given to every row;
# shorter ones are not worth the second forward call.
SHARED_PREFIX_MIN = 8


def shared_prefix_length(batch: dict[str, torch.Tensor], limit: int) -> int:
    """How many leading tokens every row of the batch has in common (real tokens, not padding), at most
    `limit` and leaving each row at least one token of its own."""
    ids, mask = batch["input_ids"], batch["attention_mask"]
    if ids.shape[0] < 2:
        return 0
    same = (ids == ids[:1]).all(dim=0) & mask.bool().all(dim=0)
    differs = (~same).nonzero()
    n = int(differs[0]) if len(differs) else ids.shape[1]
    shortest = int(mask.sum(dim=1).min())
    n = min(n, limit, shortest - 1)
    return n if n >= SHARED_PREFIX_MIN else 0


def _cache_keyword(model) -> str:
    """transformers 5.25 renamed forward's `past_key_values` to `cache` (the old name warns, then goes)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return _forward_cache_keyword(type(base))


@functools.cache
def _forward_cache_keyword(model_class: type) -> str:  # read once per class, not every micro-batch
    import inspect

    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def summed_loss(model, batch: dict[str, torch.Tensor], *, share_start: bool = True) -> torch.Tensor:
    """Sum of token losses over the answer tokens of a micro-batch (the caller divides once).

    Logits are computed only from the first position whose next token is learned: the prompts before
    it carry no loss, and over a 49k-262k vocabulary the logits are the largest tensors of the step.
    The start all rows share (`shared_prefix_length`, e.g. the system prompt) is run once, for one row,
    and its key/value cache repeated for the others: the same loss and gradients (every row's prefix
    computes the same values), for a third fewer tokens through the model on SmolLM2's template.
    `share_start=False` gives whole rows (compiled layers: a cache would compile a graph per layer).
    """
    labels, ids, mask = batch["labels"], batch["input_ids"], batch["attention_mask"]
    learned = (labels[:, 1:] != IGNORE).any(dim=0).nonzero()
    first = int(learned[0]) if len(learned) else labels.shape[1] - 2
    keep = labels.shape[1] - first  # logits for positions first .. T-1
    # under DDP (`accelerate launch`) whole rows: its reducer expects one forward call per backward
    ddp = isinstance(model, torch.nn.parallel.DistributedDataParallel)
    shared = 0 if ddp or not share_start else shared_prefix_length(batch, first)
    if shared:
        from transformers import DynamicCache

        cache = DynamicCache(config=model.config)
        given = {_cache_keyword(model): cache}
        model(input_ids=ids[:1, :shared], use_cache=True, logits_to_keep=1, **given)
        cache.batch_repeat_interleave(ids.shape[0])
        rest = ids[:, shared:]
        logits = model(
            input_ids=rest, attention_mask=mask, use_cache=True, logits_to_keep=keep, **given
        ).logits
    else:
        logits = model(input_ids=ids, attention_mask=mask, logits_to_keep=keep).logits
    return torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]).float(),
        labels[:, first + 1 :].reshape(-1),
        ignore_index=IGNORE,
        reduction="sum",
    )


def backward_batch(
    accelerator, model, chunks, n_answer: int, pad_id: int, bf16: bool, *, idle=False, share_start=True
):
    """Backward over this process's micro-batches; returns its part of the batch's mean answer loss.

    Each micro-batch's summed loss is divided by the token count of the *whole* batch, so the
    gradients add up to the gradient of the full batch's mean loss however the batch is split. DDP
    averages gradients over processes, which the factor `world` undoes. A process with no share of a
    small batch runs one zero-weight pass (`idle`) so that DDP's collective calls stay in step.
    """
    world = accelerator.num_processes
    weight = 0.0 if idle else world / n_answer
    total = torch.zeros((), device=accelerator.device)
    for k, chunk in enumerate(chunks):
        with accelerator.no_sync(model) if k < len(chunks) - 1 else nullcontext():
            with torch.autocast(accelerator.device.type, torch.bfloat16, enabled=bf16):
                batch = collate(chunk, pad_id, accelerator.device)
                loss = summed_loss(model, batch, share_start=share_start) * weight
            accelerator.backward(loss)
        total += loss.detach() / world
    return total


# -- identity and files -------------------------------------------------------------------------


def data_hash(examples: list[Example]) -> str:
    digest = hashlib.sha256()
    for example in examples:
        digest.update(json.dumps(example.messages, sort_keys=True, ensure_ascii=False).encode())
    return digest.hexdigest()


def model_id_for(base_name: str, config: TrainConfig, digest: str) -> str:
    """`<base>-tuned-<8 hex>`; the same base, data and settings give the same id (a resume finds its run)."""
    stem = re.sub(r"[^a-z0-9.-]+", "-", Path(base_name).name.lower().removesuffix(".gguf")).strip("-")
    settings = config.model_dump_json(exclude={"compile"})
    ident = hashlib.sha256(f"{base_name}|{digest}|{settings}".encode()).hexdigest()[:8]
    return f"{stem or 'model'}-tuned-{ident}"


def run_dir(settings: Settings, model_id: str) -> Path:
    return settings.home / "runs" / model_id


def checkpoints(run: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a `step-N.tmp` left by a kill mid-save is not one)."""
    found = [p for p in run.glob("checkpoints/step-*") if re.fullmatch(r"step-\d+", p.name)]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def latest_checkpoint(run: Path) -> Path | None:
    found = checkpoints(run)
    return found[-1] if found else None


def trainable_state(model) -> dict[str, torch.Tensor]:
    return {name: p.detach().cpu().contiguous() for name, p in model.named_parameters() if p.requires_grad}


def save_checkpoint(run: Path, step: int, model, optimizer, scheduler, metrics: list[dict]) -> None:
    """Written to a temporary directory and renamed, so a kill -9 mid-save leaves the last good one."""
    from safetensors.torch import save_file

    with atomic_write(run / "checkpoints" / f"step-{step}") as tmp:
        tmp.mkdir()
        save_file(trainable_state(model), tmp / "trainable.safetensors")
        optim = {"optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}
        torch.save(optim, tmp / "optim.pt")
        rng = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng["cuda"] = torch.cuda.get_rng_state_all()
        torch.save(rng, tmp / "rng.pt")
        (tmp / "state.json").write_text(json.dumps({"step": step, "metrics": metrics}))
    for old in checkpoints(run)[:-2]:
        shutil.rmtree(old, ignore_errors=True)  # keep the last two


def load_checkpoint(path: Path, model, optimizer, scheduler) -> tuple[int, list[dict]]:
    from safetensors.torch import load_file

    weights = load_file(str(path / "trainable.safetensors"))
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value.to(params[name].device))
    optim = torch.load(path / "optim.pt", weights_only=False)
    optimizer.load_state_dict(optim["optimizer"])
    scheduler.load_state_dict(optim["scheduler"])
    rng = torch.load(path / "rng.pt", weights_only=False)
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    torch.set_rng_state(rng["torch"])
    if "cuda" in rng and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(rng["cuda"])
    state = json.loads((path / "state.json").read_text())
    return state["step"], state["metrics"]


def plot_losses(metrics: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    steps = [m["step"] for m in metrics if "train_loss" in m]
    ax.plot(steps, [m["train_loss"] for m in metrics if "train_loss" in m], label="train loss")
    evals = [m for m in metrics if m.get("eval_loss") is not None]
    if evals:
        ax.plot([m["step"] for m in evals], [m["eval_loss"] for m in evals], "o-", label="eval loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (answer tokens)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# -- the recipe --------------------------------------------------------------------------------


def load_base(base: ResolvedModel, settings: Settings):
    """(model, tokenizer, HF directory) of the base weights, in float32 (the optimizer's precision)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # tunelab's own bar is the one to watch

    if base.remote is not None:
        raise ConfigError(f"{base.name!r} is a remote model; tunelab can only fine-tune local weights")
    if base.adapter_path is not None:
        raise ConfigError(
            f"{base.name!r} is itself a LoRA fine-tune; export it merged first "
            f"(`tunelab export {base.name} --merged DIR`) and tune that directory"
        )
    path = base_dir(base, settings)
    local_only = base.source != "hub"
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=local_only)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, local_files_only=local_only)
    return model, tokenizer, path


def base_dir(base: ResolvedModel, settings: Settings) -> str:
    """The base's HF directory: a GGUF's dequantized copy (made once, cached), or its own."""
    from tunelab.models.gguf_cache import dequantized_dir

    return str(dequantized_dir(base.gguf_path, settings.home)) if base.gguf_path else base.hf_path


def base_template(base: ResolvedModel, settings: Settings, spec: str = "auto") -> Template:
    """The template training uses for `base`, from its tokenizer alone (no weights loaded)."""
    from transformers import AutoTokenizer

    from tunelab.inference.backends.transformers_backend import tokenizer_adds_bos

    tokenizer = AutoTokenizer.from_pretrained(base_dir(base, settings), local_files_only=base.source != "hub")
    return training_template(spec, tokenizer, base.alias_of or base.name, tokenizer_adds_bos(tokenizer))


def training_template(spec: str, tokenizer, base_name: str, add_bos: bool) -> Template:
    """The model's own chat template (or the one named); a base model without one learns llama2's [INST]."""
    chat_template = tokenizer.chat_template if isinstance(tokenizer.chat_template, str) else None
    if spec == "auto" and chat_template is None:
        spec = "llama2"
    return resolve_template(
        spec,
        model_chat_template=chat_template,
        model_name=base_name,
        bos_token=tokenizer.bos_token or "",
        eos_token=tokenizer.eos_token or "",
        add_bos=add_bos,
    )


def use_bf16_autocast(config: TrainConfig, device: str) -> bool:
    if config.autocast != "auto":
        return config.autocast == "bf16"
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    # A CPU with native bf16 (AVX512-BF16 / AMX) trains faster under bf16 autocast at the same held-out
    # accuracy (benchmarks/RESULTS.md); without it bf16 is emulated and slower.
    from tunelab.inference.device import cpu_has_native_bf16

    return device == "cpu" and cpu_has_native_bf16()


@dataclass
class Run:
    """Everything the loop works on, built by the setup steps of `train`."""

    accelerator: Any
    model: Any
    tokenizer: Any
    template: Template
    base_path: str
    pad_id: int
    bf16: bool
    train_examples: list[Example]
    eval_examples: list[Example]
    train_rows: list[Tokenized]
    eval_rows: list[Tokenized]
    steps_per_epoch: int
    total_steps: int  # the steps the run will train: its epochs', or fewer to fit the time budget
    trainable: list
    optimizer: Any
    scheduler: Any
    model_id: str
    digest: str
    path: Path  # where checkpoints go: run_dir(settings, model_id)
    heldout: HeldoutSet
    add_bos: bool
    augmented: dict[str, int] = field(default_factory=dict)  # examples by origin (data, reworded, ...)
    step: int = 0
    metrics: list[dict] = field(default_factory=list)
    resumed_from: int | None = None
    best_step: int | None = None  # the step with the best held-out accuracy so far
    best_accuracy: float = -1.0
    eval_every: int = 20  # steps between evaluations (TrainConfig.eval_every, or chosen for the run)
    compiled: bool = False  # the decoder layers run compiled in training steps (compile_layers)
    planned_steps: int = 0  # the epochs' steps (total_steps before any fit to the time budget)

    def __post_init__(self) -> None:
        self.planned_steps = self.planned_steps or self.total_steps

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process


def train(
    base: ResolvedModel,
    examples: list[Example],
    settings: Settings,
    config: TrainConfig,
    *,
    resume: bool = False,
    is_public: bool = False,
    progress: bool = True,
    stop_after_steps: int | None = None,
    model_id: str | None = None,
    on_step: Callable[[dict[str, Any]], bool | None] | None = None,
) -> TrainResult:
    """Fine-tune `base` on `examples`; save the result in the registry and return its id.

    `stop_after_steps` ends the run early after that many optimizer steps, leaving checkpoints (as an
    interrupted run would): for tests and for training in slices. `model_id` replaces the id derived
    from the inputs (a server job names its own model). `on_step(record)` gets each step's metrics
    (with `total_steps`, and `checkpoint` when one was saved); returning False stops the run after that
    step (TrainingInterrupted) with its checkpoints kept.
    """
    from accelerate.utils import set_seed

    if len(examples) < 2:
        raise DataError(
            f"training needs at least 2 examples, got {len(examples)}; add data with load_data()",
            DataReport(examples=list(examples)),
        )
    started = time.perf_counter()
    set_seed(config.seed)
    # peft asks transformers a deprecated question on every wrap; the warning is not the user's to act on
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)

    run = setup(base, examples, settings, config, model_id)  # 1-3. model, data, optimizer
    resume_or_start(run, resume)  # 4. where this run lives; resume from its last checkpoint
    train_loop(run, config, progress=progress, stop_after_steps=stop_after_steps, on_step=on_step)  # 5.
    with eager_calls(run):
        knowledge = report_knowledge(run, config) if run.main and config.knowledge_report else None
    result = TrainResult(  # 6. the registry entry
        model_id=run.model_id,
        path=model_dir(settings, run.model_id),
        method=config.method,
        steps=run.step,
        epochs=config.epochs,
        train_loss=run.metrics[-1]["train_loss"],
        eval_loss=next(
            (m["eval_loss"] for m in reversed(run.metrics) if m.get("eval_loss") is not None), None
        ),
        tokens_per_s=run.metrics[-1]["tokens_per_s"],
        seconds=round(time.perf_counter() - started, 1),
        resumed_from_step=run.resumed_from,
        processes=run.accelerator.num_processes,
        heldout_accuracy=kept_accuracy(run, config),
        knowledge=knowledge.to_dict() if knowledge else None,
        planned_steps=run.planned_steps,
        stopped=stop_reason(run),
    )
    if knowledge and progress:
        from rich.console import Console

        Console(stderr=True).print(knowledge.summary(), highlight=False, markup=False)
    if run.main:
        save_model(
            run.accelerator.unwrap_model(run.model),
            run.tokenizer,
            result,
            model_record(run, result, base, config, is_public),
            run.metrics,
            run.eval_examples,
            knowledge,
        )
    if run.main and config.method == "lora" and base.gguf_path is not None:
        # The export loads the base again: the training model, its gradients and the optimizer go first
        # (accelerate holds them too).
        run.accelerator.free_memory()
        run.model = run.optimizer = run.scheduler = run.trainable = None
        release_memory()
        write_fast_gguf(run.model_id, settings, config.fast_gguf)
    run.accelerator.wait_for_everyone()
    return result


def setup(
    base: ResolvedModel,
    examples: list[Example],
    settings: Settings,
    config: TrainConfig,
    model_id: str | None,
) -> Run:
    """The model with its adapter, the data tokenized with the inference template, the optimizer."""
    from accelerate import Accelerator
    from transformers import get_cosine_schedule_with_warmup

    from tunelab.inference.backends.transformers_backend import tokenizer_adds_bos

    # 1. model + tokenizer + template
    model, tokenizer, base_path = load_base(base, settings)
    add_bos = tokenizer_adds_bos(tokenizer)
    template = training_template(config.template, tokenizer, base.alias_of or base.name, add_bos)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if config.method == "lora":
        from peft import LoraConfig, get_peft_model

        model = get_peft_model(
            model,
            LoraConfig(
                r=config.lora_rank,
                lora_alpha=config.lora_alpha,
                lora_dropout=config.lora_dropout,
                target_modules=config.target_modules,
                task_type="CAUSAL_LM",
            ),
        )
    model.config.use_cache = False
    accelerator = Accelerator(cpu=not torch.cuda.is_available())
    bf16 = use_bf16_autocast(config, accelerator.device.type)
    if bf16 and config.method == "lora":
        store_frozen_linears_in_bf16(model)

    # 2. data: questions held out by fact; rewordings and the base's own answers added; tokenized
    train_examples, eval_examples = split_by_fact(examples, config.eval_fraction, config.seed)
    heldout = HeldoutSet.of(eval_examples, train_examples)
    augmented = augment(
        train_examples,
        config.augment,
        per_fact=config.augment_per_fact,
        contrast=config.augment_contrast,
        focus_over=config.augment_focus_over,
        seed=config.seed,
        avoid=[e.prompt for e in heldout.examples],
        paraphraser=teacher_paraphraser(config.augment, settings),
        definer=model_definer(base, template, settings),
        defined=config.augment_defined,
    )
    if not eval_examples:  # no fact asked twice: a rewording of some facts is held back instead
        eval_examples = hold_out_rewordings(augmented.added, config.eval_fraction, config.seed)
        heldout = HeldoutSet.of(eval_examples, train_examples)
        augmented.drop(eval_examples)
    n_replay = round(config.replay_fraction * len(augmented.examples))
    replay = replay_examples(base, template, settings, n_replay, config.seed)
    counts = augmented.counts() | ({"replay": len(replay)} if replay else {})
    log.info("training examples: %s", ", ".join(f"{k} {v}" for k, v in counts.items()))
    train_examples = augmented.examples + replay
    train_rows = tokenize_all(train_examples, template, tokenizer, add_bos, config.max_seq_len)
    eval_rows = tokenize_all(eval_examples, template, tokenizer, add_bos, config.max_seq_len)
    steps_per_epoch = math.ceil(len(train_rows) / config.batch_size)
    total_steps = max(1, math.ceil(steps_per_epoch * config.epochs))
    longest = max(len(r.input_ids) for r in train_rows + eval_rows)
    if eager_attention_fits(model.config, longest, config.micro_batch_size, accelerator.device.type):
        model.set_attn_implementation("eager")  # else the attention the model loaded with (sdpa)

    compiled = should_compile(config.compile, total_steps, accelerator) and compile_layers(model)

    # 3. optimizer + schedule
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(trainable, lr=config.lr, weight_decay=config.weight_decay)
    scheduler = get_cosine_schedule_with_warmup(
        optimizer, int(total_steps * config.warmup_fraction), total_steps
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    digest = data_hash(examples)
    model_id = model_id or model_id_for(base.alias_of or base.name, config, digest)
    return Run(
        accelerator, model, tokenizer, template, base_path, pad_id, bf16,
        train_examples, eval_examples, train_rows, eval_rows, steps_per_epoch, total_steps,
        trainable, optimizer, scheduler, model_id, digest, run_dir(settings, model_id), heldout, add_bos,
        counts, eval_every=eval_interval(config, total_steps), compiled=compiled,
    )  # fmt: skip


# What the eager attention of one micro-batch may keep for its backward pass (its scores and
# probabilities, every layer): below it, eager attention is the faster one on a CPU.
EAGER_ATTENTION_BYTES = 1 << 30


def eager_attention_fits(model_config, longest: int, micro_batch_size: int, device: str) -> bool:
    """Whether to train with eager attention (plain matmul + softmax): on a CPU, when a micro-batch's
    attention scores fit in EAGER_ATTENTION_BYTES. For the short rows of knowledge tuning, PyTorch's
    CPU flash-attention kernel (sdpa) made a step 1.07-1.15x slower (benchmarks/RESULTS.md); eager
    keeps every (rows x heads x length x length) score for the backward, so long rows, and GPUs (where
    sdpa's kernels win), keep the attention the model loaded with. The same loss either way, up to
    float rounding."""
    if device != "cpu":
        return False
    heads = getattr(model_config, "num_attention_heads", 1)
    layers = getattr(model_config, "num_hidden_layers", 1)
    # fp32 scores, fp32 softmax, and the probabilities cast back: ~12 bytes a score
    return micro_batch_size * heads * longest * longest * layers * 12 <= EAGER_ATTENTION_BYTES


# torch.compile of the decoder layers pays from about this many steps: on the 2-core CPU compiling
# took ~30 s and a step went from 1.50 to 1.30 s (benchmarks/train_step.py --compile)
COMPILE_MIN_STEPS = 250


def should_compile(mode: str, total_steps: int, accelerator) -> bool:
    """Whether to compile the decoder layers (TrainConfig.compile): "auto" only on a CPU, in one
    process, for COMPILE_MIN_STEPS steps or more and where inductor finds a C++ compiler."""
    if mode != "auto":
        return mode == "on"
    if accelerator.device.type != "cpu" or accelerator.num_processes != 1 or total_steps < COMPILE_MIN_STEPS:
        return False
    import shutil

    try:
        from torch._inductor.cpp_builder import get_cpp_compiler

        return shutil.which(get_cpp_compiler()) is not None
    except Exception:  # no compiler found (it raises), or an inductor without this helper
        return False


def compile_layers(model) -> bool:
    """torch.compile (inductor, `dynamic=True`) each decoder layer for the training steps; returns
    whether it did. The layers share one graph (one compile for all); their calls with a KV cache
    (generation, the shared start) would compile a graph per layer, so a compiled run gives whole rows
    and answers held-out questions with compiling off (`eager_calls`)."""
    layers = [m for m in model.modules() if type(m).__name__.endswith("DecoderLayer")]
    for layer in layers:
        layer.compile(dynamic=True)
    if layers:
        log.info("decoder layers compiled for training (torch.compile); the first step compiles them")
    return bool(layers)


def eager_calls(run: Run):
    """Compiling off for calls outside the training steps (generation, eval loss) of a compiled run."""
    return torch.compiler.set_stance("force_eager") if run.compiled else nullcontext()


def compile_errors_fall_back(run: Run):
    """A layer inductor cannot compile here runs as written (with a warning), not a failed run."""
    return torch._dynamo.config.patch(suppress_errors=True) if run.compiled else nullcontext()


def eval_interval(config: TrainConfig, total_steps: int) -> int:
    """Steps between held-out evaluations: `eval_every`, or about EVALUATIONS a run, 20 steps apart at
    least. Each generates an answer to every held-out question (on 120 facts, 10 s of a 2 s step);
    the best step is late in a run, so evaluating every 20 steps mostly measured steps never kept."""
    return config.eval_every or max(20, math.ceil(total_steps / EVALUATIONS))


def resume_or_start(run: Run, resume: bool) -> None:
    """Continue from the run's last checkpoint (resume=True), or start it afresh."""
    checkpoint = latest_checkpoint(run.path) if resume else None
    if resume and checkpoint is None:
        log.warning("resume=True but %s has no checkpoint: starting from the beginning", run.path)
    if checkpoint is not None:
        model = run.accelerator.unwrap_model(run.model)
        run.step, run.metrics = load_checkpoint(checkpoint, model, run.optimizer, run.scheduler)
        run.resumed_from = run.step
        evals = [(m["step"], m["heldout_accuracy"]) for m in run.metrics if "heldout_accuracy" in m]
        if evals:  # the kept step, as the loop chose it
            run.best_step, run.best_accuracy = kept_evaluation(evals, len(run.heldout.examples))
        log.info("resuming %s from step %d (%s)", run.model_id, run.step, checkpoint)
    elif run.main:
        shutil.rmtree(run.path, ignore_errors=True)
    run.accelerator.wait_for_everyone()


def eval_loss(run: Run, micro_batch_size: int) -> float | None:
    """Mean loss per answer token on the held-out rows (None without any)."""
    if not run.eval_rows:
        return None
    run.model.eval()
    total, count = 0.0, 0
    device = run.accelerator.device
    with torch.no_grad(), torch.autocast(device.type, torch.bfloat16, enabled=run.bf16):
        for start in range(0, len(run.eval_rows), micro_batch_size):
            chunk = run.eval_rows[start : start + micro_batch_size]
            total += summed_loss(run.model, collate(chunk, run.pad_id, device)).item()
            count += answer_tokens(chunk)
    run.model.train()
    return total / max(count, 1)


def _checkpoint(run: Run, accelerator, model) -> None:
    unwrapped = accelerator.unwrap_model(model)
    save_checkpoint(run.path, run.step, unwrapped, run.optimizer, run.scheduler, run.metrics)


def train_loop(
    run: Run,
    config: TrainConfig,
    *,
    progress: bool,
    stop_after_steps: int | None,
    on_step: Callable[[dict[str, Any]], bool | None] | None,
) -> None:
    """Optimizer steps from `run.step` to `run.total_steps`: each batch in the epoch's seeded order,
    its micro-batches shared among the processes; metrics, checkpoints and the stop requests."""
    accelerator, model = run.accelerator, run.model
    bar = _progress(run.total_steps, run.model_id, enabled=progress and run.main)
    bar.update(run.step)
    model.train()
    trained_tokens, loop_started, first_step_ended = 0, time.perf_counter(), None
    lengths = [len(r.input_ids) for r in run.train_rows]
    batches_of: dict[int, list[list[int]]] = {}  # one epoch's order, computed once per epoch
    while run.step < run.total_steps:
        epoch, index = divmod(run.step, run.steps_per_epoch)
        if epoch not in batches_of:
            batches_of = {epoch: epoch_batches(lengths, config.batch_size, config.seed, epoch)}
        rows = [run.train_rows[i] for i in batches_of[epoch][index]]
        step_loss = optimizer_step(run, config, rows)
        run.step += 1
        step = run.step
        if first_step_ended is None:  # the first step of a process compiles and warms up
            first_step_ended = time.perf_counter()
        trained_tokens += sum(len(r.input_ids) for r in rows)
        train_loss = accelerator.reduce(step_loss, reduction="sum").item()
        record: dict[str, Any] = {
            "step": step,
            "epoch": round(step / run.steps_per_epoch, 3),
            "train_loss": round(train_loss, 5),
            "learning_rate": run.scheduler.get_last_lr()[0],
            "tokens_per_s": round(trained_tokens / (time.perf_counter() - loop_started), 1),
        }
        evaluate_step(run, config, record, over_time=time.perf_counter() - loop_started)
        run.metrics.append(record)
        timed = step - (run.resumed_from or 0) - 1  # steps since the first (which compiles, warms up)
        judged = timed + 1 == FIT_AFTER_STEPS or (timed >= FIT_AFTER_STEPS and step % run.eval_every == 0)
        if judged and config.time_budget_s is not None and step < run.total_steps:
            now = time.perf_counter()  # the pace so far, evaluations included
            fit_to_budget(run, config, now - loop_started, (now - first_step_ended) / timed, bar)
        bar.update(1, loss=train_loss, tps=record["tokens_per_s"])
        saved = run.main and (step % config.checkpoint_every == 0 or step == run.total_steps)
        if saved:
            _checkpoint(run, accelerator, model)
        accelerator.wait_for_everyone()
        if on_step is not None and run.main:
            update = (
                record | {"total_steps": run.total_steps} | ({"checkpoint": str(run.path)} if saved else {})
            )
            if on_step(update) is False and step < run.total_steps:
                bar.close()
                if not saved:  # a stop (cancel, server shutdown) keeps this step: a resume loses nothing
                    _checkpoint(run, accelerator, model)
                raise TrainingInterrupted(f"stopped at step {step} of {run.total_steps} on request")
        sliced = stop_after_steps is not None and step - (run.resumed_from or 0) >= stop_after_steps
        if sliced and step < run.total_steps:
            bar.close()
            raise TrainingInterrupted(
                f"stopped after step {step} of {run.total_steps}; resume=True continues"
            )
    bar.close()
    if config.keep_best and run.best_step is not None and run.best_step != run.step:
        restore_best(run)


def optimizer_step(run: Run, config: TrainConfig, rows: list[Tokenized]) -> torch.Tensor:
    """One optimizer step on a batch: its micro-batches shared among the processes, backward, gradient
    clipping, the optimizer and schedule; returns this process's part of the batch's mean loss."""
    accelerator, world, rank = run.accelerator, run.accelerator.num_processes, run.accelerator.process_index
    n_answer = answer_tokens(rows)  # the full batch's count, on every process
    micro = [rows[i : i + config.micro_batch_size] for i in range(0, len(rows), config.micro_batch_size)]
    mine = micro[rank::world]
    with compile_errors_fall_back(run):
        step_loss = backward_batch(
            accelerator, run.model, mine or [rows[:1]], n_answer, run.pad_id, run.bf16,
            idle=not mine, share_start=not run.compiled,
        )  # fmt: skip
    accelerator.clip_grad_norm_(run.trainable, config.max_grad_norm)
    run.optimizer.step()
    run.scheduler.step()
    run.optimizer.zero_grad(set_to_none=True)
    return step_loss


def fit_to_budget(run: Run, config: TrainConfig, elapsed: float, per_step: float, bar) -> None:
    """Fit the run (and its learning-rate schedule) to the time budget, at the pace so far: judged after
    FIT_AFTER_STEPS steps and again at every evaluation step (the pace then includes evaluations), so
    a slow start (another program busy for a minute) shortens a run only until the pace recovers, and
    a machine that slows later cools the schedule before the budget ends the run. A run shortens
    when its steps do not fit (with a 15% margin) and lengthens back, never past its epochs, when
    more fit; changes under 5% are not made. Every process takes the main process's decision."""
    from transformers import get_cosine_schedule_with_warmup

    fits = run.step + int((config.time_budget_s - elapsed) / per_step * 0.85)
    fits = agreed(run.accelerator, min(max(fits, run.step + 1), run.planned_steps))
    if abs(fits - run.total_steps) <= 0.05 * run.total_steps and fits != run.planned_steps:
        return
    if fits == run.total_steps:
        return
    if fits < run.total_steps:
        log.warning(
            "%d steps do not fit the time budget of %.0f s (%.1f s a step so far): the run ends at step "
            "%d; time_budget_s=None trains them all",
            run.total_steps, config.time_budget_s, per_step, fits,
        )  # fmt: skip
    else:
        log.warning("the pace recovered (%.1f s a step): the run trains %d steps of %d", per_step, fits,
                    run.planned_steps)  # fmt: skip
    run.total_steps = fits
    warmup = min(int(fits * config.warmup_fraction), run.step)
    run.scheduler = get_cosine_schedule_with_warmup(run.optimizer, warmup, fits, last_epoch=run.step - 1)
    bar.resize(fits)


def agreed(accelerator, value: int) -> int:
    """The main process's `value`, on every process (each times its own steps; under DDP they must
    stop at the same step)."""
    if accelerator.num_processes == 1:
        return value
    from accelerate.utils import broadcast

    return int(broadcast(torch.tensor([value], device=accelerator.device), from_process=0).item())


def evaluate_step(run: Run, config: TrainConfig, record: dict[str, Any], *, over_time: float) -> None:
    """At every `eval_every` steps, the last, and when the time budget is spent: eval loss and held-out
    answers into `record`; a reason to stop ends the run at this step (`record["stopped"]`)."""
    out_of_time = config.time_budget_s is not None and bool(
        agreed(run.accelerator, int(over_time > config.time_budget_s))
    )
    if not (run.step % run.eval_every == 0 or run.step == run.total_steps or out_of_time):
        return
    with eager_calls(run):
        record["eval_loss"] = eval_loss(run, config.micro_batch_size)
        stop = evaluate_answers(run, config, record)
    if out_of_time or stop:
        record["stopped"] = "time budget" if out_of_time else stop
        run.total_steps = run.step  # the run ends here, complete


def evaluate_answers(run: Run, config: TrainConfig, record: dict[str, Any]) -> str | None:
    """Held-out accuracy by generation into `record`; the best step's weights kept aside. Returns why
    training should stop now (None: go on)."""
    if not run.heldout.examples:
        return None
    model = run.accelerator.unwrap_model(run.model)
    accuracy, _ = run.heldout.accuracy(
        model, run.tokenizer, run.template, add_bos=run.add_bos, max_new_tokens=config.answer_tokens
    )
    accuracy = record["heldout_accuracy"] = round(accuracy, 4)
    evals = [(m["step"], m["heldout_accuracy"]) for m in run.metrics if "heldout_accuracy" in m]
    run.best_step, run.best_accuracy = kept_evaluation(
        [*evals, (run.step, accuracy)], len(run.heldout.examples)
    )
    if run.best_step == run.step and run.main and config.keep_best:
        from safetensors.torch import save_file

        run.path.mkdir(parents=True, exist_ok=True)
        with atomic_write(run.path / BEST_FILE) as tmp:
            save_file(trainable_state(model), tmp, metadata={"step": str(run.step)})
    steps = [m["step"] for m in run.metrics if "heldout_accuracy" in m] + [run.step]
    if config.patience and len(steps) - 1 - steps.index(run.best_step) >= config.patience:
        return f"no step kept in {config.patience} evaluations"
    return None


def report_knowledge(run: Run, config: TrainConfig):
    """The knowledge report of the saved weights (evaluation.knowledge), on the single-turn data."""
    from tunelab.evaluation.knowledge import knowledge_report
    from tunelab.training.datasets import load_dataset

    if not any(e.origin == "data" for e in run.train_examples):
        return None
    return knowledge_report(
        run.accelerator.unwrap_model(run.model),
        run.tokenizer,
        run.template,
        add_bos=run.add_bos,
        train=run.train_examples,
        heldout=run.heldout.examples,
        probes=load_dataset("general_probes", "all"),
        max_new_tokens=config.answer_tokens,
    )


def stop_reason(run: Run) -> str | None:
    """Why the run trained fewer steps than its epochs' (None: it trained them all)."""
    if run.step >= run.planned_steps:
        return None
    said = [m["stopped"] for m in run.metrics if "stopped" in m]
    return said[-1] if said else "time budget"


def kept_accuracy(run: Run, config: TrainConfig) -> float | None:
    """The held-out accuracy of the weights that are saved: the best step's, or the last evaluation's."""
    evals = [m["heldout_accuracy"] for m in run.metrics if "heldout_accuracy" in m]
    if not evals:
        return None
    return run.best_accuracy if config.keep_best else evals[-1]


def restore_best(run: Run) -> None:
    """Load the best step's trainable weights back into the model (from the run's best file)."""
    from safetensors.torch import load_file

    run.accelerator.wait_for_everyone()
    state = load_file(str(run.path / BEST_FILE))
    model = run.accelerator.unwrap_model(run.model)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, value in state.items():
            params[name].copy_(value.to(params[name].device, params[name].dtype))
    log.info("kept step %d (held-out accuracy %.0f%%), not the last", run.best_step, 100 * run.best_accuracy)


def model_record(run: Run, result: TrainResult, base: ResolvedModel, config: TrainConfig, is_public: bool):
    """The registry's record of what was trained, from what, how, and how it went."""
    return ModelRecord(
        model_id=run.model_id,
        base_model=base.alias_of or base.requested,
        method=config.method,
        template_name=run.template.name,
        template_source=run.template.source,
        data_hash=run.digest,
        n_train=len(run.train_rows),
        n_eval=len(run.eval_rows),
        hyperparameters=config.model_dump() | {"learning_rate": config.lr},
        metrics={
            "train_loss": result.train_loss,
            "eval_loss": result.eval_loss,
            "steps": result.steps,
            "planned_steps": result.planned_steps,
            "stopped": result.stopped,
            "tokens_per_s": result.tokens_per_s,
            "seconds": result.seconds,
            "base_path": run.base_path,
            "examples": run.augmented,  # by origin: data, reworded, reverse, teacher, replay
            "heldout_accuracy": kept_accuracy(run, config),  # of the step saved
            "best_step": run.best_step,
            "heldout_questions": len(run.heldout.examples),
        },
        is_public=is_public,
    )


def store_frozen_linears_in_bf16(model) -> None:
    """Under bf16 autocast, keep the frozen base weights of the LoRA-adapted linear layers in bf16.

    Autocast casts them to bf16 for every matmul anyway, so the forward pass and the gradients are the
    same, bit for bit; what goes is their float32 copy (most of the model's size) and each step's bf16
    casts, which autocast keeps alive for the backward pass. The LoRA weights stay float32 (peft keeps
    adapters in float32 beside a bf16 base), as do the norms and the embeddings, which autocast leaves
    in float32.
    """
    from peft.tuners.lora import LoraLayer

    for module in model.modules():
        if isinstance(module, LoraLayer):
            base_layer = module.get_base_layer()
            if isinstance(base_layer, torch.nn.Linear):
                base_layer.to(torch.bfloat16)


def release_memory() -> None:
    """Collect freed tensors and hand the freed heap back to the OS (glibc keeps it otherwise, so the
    process's resident size would stay at its training peak while the next stage allocates more)."""
    import ctypes
    import gc

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc: nothing to trim
        pass


def write_fast_gguf(model_id: str, settings: Settings, outtype: str = "q8_0") -> Path | None:
    """Write the LoRA merged into its GGUF base into the registry entry (`export_gguf_over_base`: the
    base's quantized tensors kept, the changed weights in `outtype`), so `backend="auto"` runs the
    tuned model on llama.cpp, as fast as its base (benchmarks/tuned_formats.py measures it).
    Where that cannot be done the tuned model keeps the transformers path, said in one log line."""
    from tunelab.export.gguf_over_base import export_gguf_over_base

    target = registry_entry(settings, model_id).fast_gguf
    try:
        return export_gguf_over_base(model_id, target, settings, outtype=outtype, overwrite=True)
    except ConfigError as exc:
        log.info("%s runs on transformers only: no GGUF for it (%s)", model_id, exc)
        return None


def save_model(
    model, tokenizer, result: TrainResult, record: ModelRecord, metrics, eval_examples, knowledge=None
) -> None:
    """Write the registry entry in a staging directory, then swap it in whole."""
    with atomic_write(result.path) as tmp:
        staged = Entry(tmp)
        tmp.mkdir()
        if record.method == "lora":
            model.save_pretrained(staged.adapter_dir)
        else:
            model.config.use_cache = True
            model.save_pretrained(staged.path)
        tokenizer.save_pretrained(staged.path)
        with open(staged.metrics_file, "w", encoding="utf-8") as f:
            f.writelines(json.dumps(m) + "\n" for m in metrics)
        staged.write_heldout(eval_examples)
        plot_losses(metrics, staged.loss_plot)
        if knowledge is not None:
            knowledge.save(staged.path)
        save_record(staged.path, record)


class _progress:
    """A rich progress bar with loss, tokens/s and time left (a no-op when disabled). Where stderr is not
    a terminal (a log, CI) a bar cannot redraw: a plain line every tenth of the run instead."""

    def __init__(self, total: int, name: str, *, enabled: bool):
        self.enabled = enabled
        self.logged = 0  # tenths of the run written as lines (not a terminal)
        if not enabled:
            return
        from rich.console import Console
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("loss {task.fields[loss]:.3f}"),
            TextColumn("{task.fields[tps]:.0f} tok/s"),
            TimeRemainingColumn(),
            console=Console(stderr=True),  # stdout stays clean for --json
        )
        self.bar.start()
        self.task = self.bar.add_task(f"tuning {name}", total=total, loss=float("nan"), tps=0.0)

    def resize(self, total: int) -> None:
        if self.enabled:
            self.bar.update(self.task, total=total)

    def update(self, advance: int, **fields: float) -> None:
        if not self.enabled:
            return
        self.bar.update(self.task, advance=advance, **fields)
        if self.bar.console.is_terminal:
            return
        task = self.bar.tasks[0]
        tenths = int(10 * task.completed / task.total) if task.total else 0
        if tenths > self.logged:
            self.logged = tenths
            left = f", about {task.time_remaining / 60:.0f} min left" if task.time_remaining else ""
            loss, tps = task.fields["loss"], task.fields["tps"]
            self.bar.console.print(
                f"{task.description}: step {task.completed:.0f}/{task.total:.0f}, loss {loss:.3f}, "
                f"{tps:.0f} tok/s{left}",
                highlight=False, soft_wrap=True,
            )  # fmt: skip

    def close(self) -> None:
        if self.enabled:
            self.bar.stop()
