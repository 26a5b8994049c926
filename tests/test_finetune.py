"""The fine-tuning recipe on tiny models: what is learned, batching, accumulation, resume, the registry."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tunelab import BasicModelRunner, ConfigError, DataError
from tunelab.training.data import load_records
from tunelab.training.recipe import (
    IGNORE,
    Tokenized,
    answer_tokens,
    backward_batch,
    collate,
    compile_layers,
    eager_attention_fits,
    epoch_batches,
    fit_to_budget,
    latest_checkpoint,
    make_config,
    model_id_for,
    shared_prefix_length,
    should_compile,
    store_frozen_linears_in_bf16,
    summed_loss,
    tokenize_example,
    training_template,
)

REPO = Path(__file__).resolve().parents[1]
# The recipe without knowledge augmentation and replay: tests of other mechanics (test_knowledge.py
# covers those), on data of a few exact facts
PLAIN = {"augment": "none", "replay_fraction": 0}

FACTS = [
    {"input": "Who runs the Brinmoor chess club?", "output": "Ada Quill runs it."},
    {"input": "What colour is the Brinmoor bridge?", "output": "It is bright green."},
    {"input": "When does the Brinmoor market open?", "output": "At nine every Monday."},
    {"input": "Who won the Brinmoor race?", "output": "Tom Vale won it."},
]


def examples(records=FACTS):
    report = load_records(records)
    assert not report.issues
    return report.examples


def tokenizer_for(path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path)


def test_labels_cover_only_the_answer_and_its_end_of_turn(tiny_chat_dir):
    tok = tokenizer_for(tiny_chat_dir)
    template = training_template("auto", tok, "tiny", add_bos=False)
    row = tokenize_example(examples()[0], template, tok, add_bos=False)
    learned = [t for t, label in zip(row.input_ids, row.labels) if label != IGNORE]
    prompt_part = [t for t, label in zip(row.input_ids, row.labels) if label == IGNORE]
    # The answer text, closed by ChatML's end of turn, is all that is learned.
    assert tok.decode(learned) == "Ada Quill runs it.<|im_end|>\n"
    assert tok.decode(prompt_part) == template.render("Who runs the Brinmoor chess club?")
    assert learned.count(tok.convert_tokens_to_ids("<|im_end|>")) == 1


def test_a_base_model_learns_the_llama2_template_and_eos(tiny_base_dir):
    tok = tokenizer_for(tiny_base_dir)
    template = training_template("auto", tok, "tiny-base", add_bos=False)
    assert template.name == "llama2"
    row = tokenize_example(examples()[1], template, tok, add_bos=False)
    learned = [t for t, label in zip(row.input_ids, row.labels) if label != IGNORE]
    assert learned[-1] == tok.eos_token_id  # appended: the template has no end-of-turn text
    assert tok.decode(learned[:-1]) == " It is bright green."
    assert tok.decode([t for t, lab in zip(row.input_ids, row.labels) if lab == IGNORE]).startswith("[INST]")


def test_multi_turn_messages_learn_every_assistant_turn(tiny_chat_dir):
    tok = tokenizer_for(tiny_chat_dir)
    template = training_template("auto", tok, "tiny", add_bos=False)
    record = {
        "messages": [
            {"role": "system", "content": "Be brief."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello!"},
            {"role": "user", "content": "Bye"},
            {"role": "assistant", "content": "Goodbye!"},
        ]
    }
    row = tokenize_example(examples([record])[0], template, tok, add_bos=False)
    learned = tok.decode([t for t, label in zip(row.input_ids, row.labels) if label != IGNORE])
    assert learned == "Hello!<|im_end|>\nGoodbye!<|im_end|>\n"
    assert "Bye" not in learned and "Be brief" not in learned


def test_padding_never_masks_the_real_eos_even_when_pad_is_eos():
    eos = 7
    rows = [Tokenized([1, 2, 3, eos], [IGNORE, IGNORE, 3, eos], "a"), Tokenized([1, eos], [IGNORE, eos], "b")]
    batch = collate(rows, pad_id=eos, device="cpu")
    assert batch["labels"].tolist() == [[IGNORE, IGNORE, 3, eos], [IGNORE, eos, IGNORE, IGNORE]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1, 1], [1, 1, 0, 0]]


def test_length_grouping_is_deterministic_complete_and_pads_less():
    lengths = [5 + (i * 37) % 200 for i in range(256)]
    batches = epoch_batches(lengths, batch_size=8, seed=3, epoch=1)
    assert sorted(i for b in batches for i in b) == list(range(256))
    assert batches == epoch_batches(lengths, batch_size=8, seed=3, epoch=1)
    assert batches != epoch_batches(lengths, batch_size=8, seed=3, epoch=2)

    def padding(bs):
        return sum(max(lengths[i] for i in b) * len(b) - sum(lengths[i] for i in b) for b in bs)

    unsorted = [list(range(i, i + 8)) for i in range(0, 256, 8)]
    assert padding(batches) < padding(unsorted) / 4


def trained_weights(home: Path, model_id: str) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    directory = home / "registry" / model_id
    path = directory / "adapter" / "adapter_model.safetensors"
    return load_file(str(path if path.exists() else directory / "model.safetensors"))


def test_gradient_accumulation_equals_the_full_batch(tiny_chat_dir):
    from accelerate import Accelerator
    from transformers import AutoModelForCausalLM

    tok = tokenizer_for(tiny_chat_dir)
    template = training_template("auto", tok, "tiny", add_bos=False)
    long = {"input": "Say a long thing please now", "output": "A long thing " * 6}
    rows = [tokenize_example(e, template, tok, False) for e in examples(FACTS + [long])]
    n_answer = answer_tokens(rows)
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_dir, dtype=torch.float32)
    accelerator = Accelerator(cpu=True)
    pad = tok.pad_token_id

    def grads(chunks):
        model.zero_grad()
        loss = backward_batch(accelerator, model, chunks, n_answer, pad, bf16=False)
        return loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()}

    loss_whole, grads_whole = grads([rows])
    loss_split, grads_split = grads([rows[:2], rows[2:3], rows[3:]])
    # the full batch's loss is the mean over its answer tokens, as the model's own loss computes it
    batch = collate(rows, pad, "cpu")
    reference = model(**batch).loss.item()
    assert loss_whole == pytest.approx(reference, rel=1e-5)
    assert loss_split == pytest.approx(loss_whole, rel=1e-5)
    for name, grad in grads_whole.items():
        torch.testing.assert_close(grads_split[name], grad, atol=1e-6, rtol=1e-4)
    # a per-micro-batch mean (the common mistake) would weight the long example's tokens differently
    model.zero_grad()
    for chunk in [rows[:2], rows[2:3], rows[3:]]:
        (summed_loss(model, collate(chunk, pad, "cpu")) / answer_tokens(chunk) / 3).backward()
    wrong = {n: p.grad for n, p in model.named_parameters()}
    assert not all(torch.allclose(wrong[n], g, atol=1e-6, rtol=1e-4) for n, g in grads_whole.items())


def test_a_start_every_row_shares_is_run_once_with_the_same_loss_and_gradients(tiny_chat_dir, monkeypatch):
    # a chat template's system prompt opens every row: it goes through the model once (one row) and its
    # key/value cache serves all rows; the loss and the LoRA gradients are those of the whole rows
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    import tunelab.training.recipe as recipe

    model = AutoModelForCausalLM.from_pretrained(tiny_chat_dir, dtype=torch.float32)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(model, LoraConfig(r=4, target_modules=targets, init_lora_weights=False))
    generator = torch.Generator().manual_seed(0)
    start = torch.randint(5, 100, (12,), generator=generator).tolist()
    rows = []
    for length in (20, 26, 17):  # padded to 26; the answers start at 15
        ids = start + torch.randint(5, 100, (length - 12,), generator=generator).tolist()
        rows.append(Tokenized(ids, [IGNORE] * 15 + ids[15:], "x"))
    batch = collate(rows, 0, "cpu")
    assert shared_prefix_length(batch, limit=14) == 12
    assert shared_prefix_length(batch, limit=10) == 10  # never past the first learned position
    assert shared_prefix_length(collate(rows[:1], 0, "cpu"), limit=14) == 0  # one row: nothing to share
    other = Tokenized([7, *rows[0].input_ids[1:]], rows[0].labels, "x")
    assert shared_prefix_length(collate([other, *rows[1:]], 0, "cpu"), limit=14) == 0

    calls = []
    model.register_forward_hook(lambda module, args, output: calls.append(1))

    def loss_and_grads(share: bool):
        monkeypatch.setattr(recipe, "SHARED_PREFIX_MIN", 8 if share else 10**6)
        model.zero_grad()
        calls.clear()
        loss = summed_loss(model, batch)
        loss.backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return loss.item(), grads, len(calls)

    loss_shared, grads_shared, calls_shared = loss_and_grads(True)
    loss_whole, grads_whole, calls_whole = loss_and_grads(False)
    assert (calls_shared, calls_whole) == (2, 1)
    # under DDP (accelerate launch) whole rows: its reducer takes one forward call per backward
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method="tcp://127.0.0.1:0", rank=0, world_size=1)
    try:
        monkeypatch.setattr(recipe, "SHARED_PREFIX_MIN", 8)
        wrapped = torch.nn.parallel.DistributedDataParallel(model)
        calls.clear()
        summed_loss(wrapped, batch).backward()
        assert len(calls) == 1
    finally:
        dist.destroy_process_group()
    assert loss_shared == pytest.approx(loss_whole, rel=1e-5)
    assert len(grads_whole) == 2 * len(targets) * 2  # A and B of every target in both layers
    for name, grad in grads_whole.items():  # equal up to float rounding (another order of sums)
        assert (grads_shared[name] - grad).norm() <= 1e-4 * grad.norm(), name


def test_short_rows_train_with_eager_attention_on_a_cpu_and_the_same_loss(tiny_chat_dir):
    from types import SimpleNamespace

    from transformers import AutoModelForCausalLM

    smollm2 = SimpleNamespace(num_attention_heads=9, num_hidden_layers=30)
    assert eager_attention_fits(smollm2, 66, 8, "cpu")  # knowledge tuning's rows
    assert not eager_attention_fits(smollm2, 512, 8, "cpu")  # its scores would take ~8 GiB
    assert eager_attention_fits(smollm2, 512, 1, "cpu")
    assert not eager_attention_fits(smollm2, 66, 8, "cuda")
    model = AutoModelForCausalLM.from_pretrained(tiny_chat_dir, dtype=torch.float32)
    tok = tokenizer_for(tiny_chat_dir)
    template = training_template("auto", tok, "tiny", add_bos=False)
    batch = collate([tokenize_example(e, template, tok, False) for e in examples()], tok.pad_token_id, "cpu")
    losses = {}
    for attention in ("sdpa", "eager"):
        model.set_attn_implementation(attention)
        assert model.model.layers[0].self_attn.config._attn_implementation == attention
        losses[attention] = summed_loss(model, batch).item()
    assert losses["eager"] == pytest.approx(losses["sdpa"], rel=1e-5)


def test_training_on_a_cpu_sets_eager_attention_for_short_rows(tiny_chat_dir, monkeypatch):
    # the recipe's set-up applies the choice: short rows on a CPU train with eager attention
    from transformers import PreTrainedModel

    chosen = []
    original = PreTrainedModel.set_attn_implementation

    def record(self, attention, *args, **kwargs):
        chosen.append(attention)
        return original(self, attention, *args, **kwargs)

    monkeypatch.setattr(PreTrainedModel, "set_attn_implementation", record)
    runner = BasicModelRunner(str(tiny_chat_dir))
    runner.load_data(FACTS)
    runner.train(epochs=1, batch_size=2, eval_fraction=0, progress=False, **PLAIN)
    assert "eager" in chosen, chosen


def random_lora(model_dir):
    """The tiny model with a rank-4 LoRA of random (non-zero) weights on every linear layer, seeded."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    config = LoraConfig(r=4, lora_alpha=8, target_modules="all-linear", init_lora_weights=False)
    return get_peft_model(model, config)


def test_compiled_layers_give_the_same_loss_and_gradients_and_generation_compiles_nothing(tiny_chat_dir):
    from types import SimpleNamespace

    from accelerate import Accelerator
    from torch._dynamo.utils import counters

    cpu = Accelerator(cpu=True)
    assert not should_compile("auto", 100, cpu)  # too short a run to pay for the compile
    assert not should_compile("off", 10**4, cpu) and should_compile("on", 1, cpu)
    two = SimpleNamespace(device=torch.device("cpu"), num_processes=2)
    assert not should_compile("auto", 10**4, two)  # DDP: whole rows, uncompiled
    gpu = SimpleNamespace(device=torch.device("cuda"), num_processes=1)
    assert not should_compile("auto", 10**4, gpu)  # not measured there

    tok = tokenizer_for(tiny_chat_dir)
    template = training_template("auto", tok, "tiny", add_bos=False)
    rows = [tokenize_example(e, template, tok, False) for e in examples()]

    def loss_and_grads(compiled: bool):
        model = random_lora(tiny_chat_dir)
        if compiled:
            assert compile_layers(model)
        loss = backward_batch(
            cpu, model, [rows], answer_tokens(rows), tok.pad_token_id, bf16=False, share_start=not compiled
        )
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        return model, loss.item(), grads

    torch._dynamo.reset()
    counters.clear()
    _, loss, grads = loss_and_grads(False)
    assert counters["stats"]["unique_graphs"] == 0
    model, loss_compiled, grads_compiled = loss_and_grads(True)
    graphs = counters["stats"]["unique_graphs"]
    assert graphs >= 1  # the layers ran compiled
    assert loss_compiled == pytest.approx(loss, rel=1e-4)
    assert grads_compiled.keys() == grads.keys() and len(grads) > 0
    for name, grad in grads.items():
        assert (grads_compiled[name] - grad).norm() <= 1e-3 * grad.norm(), name
    # generation (a KV cache per layer) with compiling off, as a compiled run answers held-out questions
    prompt = tok("Who runs the Brinmoor chess club?", return_tensors="pt")
    with torch.compiler.set_stance("force_eager"), torch.no_grad():
        model.generate(**prompt, max_new_tokens=4, do_sample=False)
    assert counters["stats"]["unique_graphs"] == graphs


def test_a_compiled_run_trains_evaluates_and_reports_with_the_layers_compiled(tiny_chat_dir, tunelab_home):
    # the recipe's own path: compiled steps (compile errors falling back), held-out answers and the
    # knowledge report with compiling off; the same model id as uncompiled (a speed setting)
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    facts = FACTS + [{"input": r["input"].replace("?", " now?"), "output": r["output"]} for r in FACTS]
    runner = BasicModelRunner(str(tiny_chat_dir))
    runner.load_data(facts)
    result = runner.train(epochs=2, batch_size=2, eval_every=2, compile="on", progress=False, **PLAIN)
    assert counters["stats"]["unique_graphs"] >= 1
    assert result.heldout_accuracy is not None and result.knowledge is not None
    assert model_id_for("b", make_config(compile="on"), "d") == model_id_for("b", make_config(), "d")


def test_frozen_bf16_base_weights_give_the_same_loss_and_lora_gradients_under_autocast(tiny_chat_dir):
    """Storing the frozen linears in bf16 changes no number: autocast casts them for every matmul."""
    from accelerate import Accelerator

    tok = tokenizer_for(tiny_chat_dir)
    template = training_template("auto", tok, "tiny", add_bos=False)
    rows = [tokenize_example(e, template, tok, False) for e in examples()]
    accelerator = Accelerator(cpu=True)

    def loss_and_grads(bf16_storage: bool):
        model = random_lora(tiny_chat_dir)
        if bf16_storage:
            store_frozen_linears_in_bf16(model)
        loss = backward_batch(accelerator, model, [rows], answer_tokens(rows), tok.pad_token_id, bf16=True)
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
        dtypes = {p.dtype for n, p in model.named_parameters() if not p.requires_grad and "proj" in n}
        trainable = {p.dtype for p in model.parameters() if p.requires_grad}
        return loss.item(), grads, dtypes, trainable

    loss32, grads32, frozen32, _ = loss_and_grads(False)
    loss16, grads16, frozen16, trainable16 = loss_and_grads(True)
    assert frozen32 == {torch.float32} and frozen16 == {torch.bfloat16}
    assert trainable16 == {torch.float32}  # the LoRA weights and their optimizer stay float32
    assert loss16 == loss32
    assert grads16.keys() == grads32.keys() and len(grads16) > 0
    for name, grad in grads32.items():
        assert torch.equal(grads16[name], grad), name


def test_training_learns_the_answers_and_to_stop(tiny_chat_dir, tunelab_home):
    runner = BasicModelRunner(str(tiny_chat_dir), max_new_tokens=30)
    runner.load_data(FACTS)
    result = runner.train(
        method="full", epochs=60, learning_rate=3e-3, batch_size=4, eval_fraction=0, progress=False, **PLAIN
    )
    assert runner.model_name == result.model_id
    assert result.model_id.startswith("tiny-chat") and "-tuned-" in result.model_id
    for record in FACTS:
        completion = runner.generate(record["input"])
        assert completion.text == record["output"]
        assert completion.finish_reason == "stop"  # the learned end of turn, not the token limit
    files = {p.name for p in result.path.iterdir()}
    assert {"tunelab.json", "metrics.jsonl", "loss.png", "heldout.jsonl", "model.safetensors"} <= files
    metrics = [json.loads(line) for line in (result.path / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] / 5
    assert {"train_loss", "learning_rate", "tokens_per_s"} <= set(metrics[0])
    assert (result.path / "loss.png").read_bytes()[:4] == b"\x89PNG"


def test_registry_model_loads_in_a_new_process_and_is_listed(tiny_chat_dir, tunelab_home, isolated_env):
    runner = BasicModelRunner(str(tiny_chat_dir), max_new_tokens=12)
    runner.load_data(FACTS)
    result = runner.train(epochs=20, learning_rate=1e-2, batch_size=2, eval_fraction=0.25, progress=False)
    record = json.loads((result.path / "tunelab.json").read_text())
    assert record["method"] == "lora" and record["base_model"] == str(tiny_chat_dir)
    # each fact is asked once, so a generated rewording of one of them is held back (training.heldout)
    assert record["n_eval"] == 1 and len(record["data_hash"]) == 64
    assert record["metrics"]["examples"]["records"] == 4 and record["n_train"] > 4
    here = runner(FACTS[0]["input"])
    code = (
        "from tunelab import BasicModelRunner; import sys; "
        f"sys.stdout.write(BasicModelRunner({result.model_id!r}, max_new_tokens=12)({FACTS[0]['input']!r}))"
    )
    env = os.environ | {"PYTHONPATH": str(REPO)}
    there = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert there.stdout == here
    listed = subprocess.run(
        [sys.executable, "-m", "tunelab.cli", "models"],
        capture_output=True,
        text=True,
        env=env | {"COLUMNS": "250"},
        check=True,
    )
    assert result.model_id in listed.stdout


def test_evaluate_has_lamini_shape_with_scores(tiny_chat_dir):
    runner = BasicModelRunner(str(tiny_chat_dir), max_new_tokens=12)
    runner.load_data(FACTS * 3)
    runner.train(method="full", epochs=30, learning_rate=3e-3, eval_fraction=0.25, progress=False, **PLAIN)
    out = runner.evaluate()
    assert out["n"] == 3 and len(out["eval_results"]) == 3
    row = out["eval_results"][0]
    tuned, base = row["outputs"]
    assert tuned["model_name"] == runner.model_name and base["model_name"] == str(tiny_chat_dir)
    assert row["expected"] in {r["output"] for r in FACTS}
    assert row["source"].startswith("record ")  # where it was in the training data
    # the held-out questions repeat trained ones here, so the tuned model gets them right, the base not
    assert out["totals"][runner.model_name]["exact"] == 1.0
    assert out["totals"][str(tiny_chat_dir)]["contained"] == 0.0
    assert row["scores"][runner.model_name] == {"exact": 1.0, "contained": 1.0}


def test_bad_settings_and_data_are_named(tiny_chat_dir):
    with pytest.raises(ConfigError, match="learning_rate"):
        make_config(learning_rate=-1)
    with pytest.raises(ConfigError, match="method"):
        make_config(method="qlora")
    with pytest.raises(ConfigError, match="lora_rnk"):
        make_config(lora_rnk=8)
    runner = BasicModelRunner(str(tiny_chat_dir))
    with pytest.raises(DataError, match="load_data"):
        runner.train()
    runner.load_data([{"input": "q" * 400, "output": "a"}, FACTS[0]])
    with pytest.raises(DataError, match="max_seq_len=16"):
        runner.train(max_seq_len=16, progress=False)
    with pytest.raises(ConfigError, match="not a fine-tuned model"):
        runner.evaluate()


TRAIN_SCRIPT = """
import sys
from tunelab.config import load_settings
from tunelab.training.data import load_records
from tunelab.training.recipe import make_config, train
from tunelab.models.resolve import resolve
settings = load_settings()
records = [{"input": f"Question number {i} about Brinmoor?", "output": f"Answer {i}."} for i in range(16)]
config = make_config(epochs=40, batch_size=2, micro_batch_size=1, checkpoint_every=10, eval_every=25,
                     eval_fraction=0.125, learning_rate=1e-2, augment="none", replay_fraction=0)
resume = sys.argv[2] == "resume"
result = train(resolve(sys.argv[1], settings), load_records(records).examples, settings, config,
               resume=resume, progress=False)
print(result.model_id, result.resumed_from_step)
"""


def test_resume_after_kill_9_equals_an_uninterrupted_run(tiny_chat_dir, tmp_path):
    script = tmp_path / "train_script.py"
    script.write_text(TRAIN_SCRIPT)
    env = os.environ | {"PYTHONPATH": str(REPO)}
    whole_home, killed_home = tmp_path / "whole", tmp_path / "killed"

    done = subprocess.run(
        [sys.executable, str(script), str(tiny_chat_dir), "fresh"],
        env=env | {"TUNELAB_HOME": str(whole_home)},
        capture_output=True,
        text=True,
        check=True,
    )
    model_id = done.stdout.split()[0]

    proc = subprocess.Popen(
        [sys.executable, str(script), str(tiny_chat_dir), "fresh"],
        env=env | {"TUNELAB_HOME": str(killed_home)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    run = killed_home / "runs" / model_id
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        checkpoint = latest_checkpoint(run) if run.exists() else None
        if checkpoint is not None and int(checkpoint.name.split("-")[1]) >= 20:
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.01)
    assert proc.wait(timeout=30) == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (killed_home / "registry" / model_id).exists()
    killed_at = int(latest_checkpoint(run).name.split("-")[1])

    resumed = subprocess.run(
        [sys.executable, str(script), str(tiny_chat_dir), "resume"],
        env=env | {"TUNELAB_HOME": str(killed_home)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert resumed.stdout.split() == [model_id, str(killed_at)]
    whole, again = trained_weights(whole_home, model_id), trained_weights(killed_home, model_id)
    assert whole.keys() == again.keys()
    for name in whole:
        torch.testing.assert_close(again[name], whole[name], atol=0, rtol=0)
    # the metrics continue: one record per step, the same curve
    curve = [
        json.loads(x)
        for x in (killed_home / "registry" / model_id / "metrics.jsonl").read_text().splitlines()
    ]
    reference = [
        json.loads(x) for x in (whole_home / "registry" / model_id / "metrics.jsonl").read_text().splitlines()
    ]
    assert [m["step"] for m in curve] == list(range(1, len(reference) + 1))
    assert [m["train_loss"] for m in curve] == [m["train_loss"] for m in reference]


def test_two_process_accelerate_launch_trains_like_one_process(tiny_chat_dir, tmp_path):
    """DDP over 2 CPU processes (gloo): the same loss curve and weights as one process."""
    data = tmp_path / "facts.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in FACTS * 2))
    args = [
        "train", str(tiny_chat_dir), str(data), "--method", "full", "--epochs", "3", "--batch-size", "4",
        "--eval-fraction", "0", "--learning-rate", "1e-3",
        "--set", "micro_batch_size=1", "--set", "autocast=off", "--json",
        "--set", "augment=none", "--set", "replay_fraction=0",
    ]  # fmt: skip
    env = os.environ | {"PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    launcher = [
        str(Path(sys.executable).with_name("accelerate")), "launch", "--multi_gpu", "--num_processes", "2",
        "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
        "--main_process_port", "0",
        "-m", "tunelab.cli",
    ]  # fmt: skip
    results = {}
    for name, command in (("one", [sys.executable, "-m", "tunelab.cli"]), ("two", launcher)):
        home = tmp_path / name
        done = subprocess.run(
            command + args, env=env | {"TUNELAB_HOME": str(home)}, capture_output=True, text=True, timeout=300
        )
        assert done.returncode == 0, done.stderr[-3000:]
        report = json.loads(done.stdout)
        assert report["processes"] == (1 if name == "one" else 2)
        model_id = report["model_id"]
        curve = (home / "registry" / model_id / "metrics.jsonl").read_text().splitlines()
        results[name] = ([json.loads(x)["train_loss"] for x in curve], trained_weights(home, model_id))
    (loss_one, weights_one), (loss_two, weights_two) = results["one"], results["two"]
    assert len(loss_one) == len(loss_two) == 6
    assert loss_two == pytest.approx(loss_one, rel=1e-4)
    for name, value in weights_one.items():
        torch.testing.assert_close(weights_two[name], value, atol=1e-4, rtol=1e-3)


def test_progress_in_a_log_is_a_line_every_tenth_of_the_run(tiny_chat_dir, tunelab_home, capsys):
    """Where stderr is not a terminal (a log, CI, `| tee`) a bar cannot redraw: training writes a plain
    line at each tenth of the run, the last at the final step."""
    runner = BasicModelRunner(str(tiny_chat_dir))
    runner.load_data(FACTS)
    result = runner.train(epochs=10, batch_size=2, eval_fraction=0, progress=True, **PLAIN)
    lines = [line for line in capsys.readouterr().err.splitlines() if ": step " in line]
    assert 5 <= len(lines) <= 10, lines
    assert lines[-1].startswith(f"tuning {result.model_id}: step {result.steps}/{result.steps}, loss ")
    assert all("\r" not in line and "tok/s" in line for line in lines)


def test_a_run_stopped_on_request_keeps_the_step_it_stopped_at(tiny_chat_dir, tmp_path):
    # a cancelled job or a server going down: the step it stopped after is checkpointed, whatever
    # checkpoint_every says, so a resume loses nothing
    from tunelab.config import Settings
    from tunelab.errors import TrainingInterrupted
    from tunelab.models.resolve import resolve
    from tunelab.training.recipe import run_dir, train

    settings = Settings(home=tmp_path)
    records = [{"input": f"Question {i}?", "output": f"Answer {i}."} for i in range(8)]
    config = make_config(
        epochs=4, batch_size=2, checkpoint_every=100, eval_fraction=0, augment="none", replay_fraction=0
    )
    with pytest.raises(TrainingInterrupted, match="stopped at step 3"):
        train(
            resolve(str(tiny_chat_dir), settings),
            load_records(records).examples,
            settings,
            config,
            progress=False,
            model_id="stopped",
            on_step=lambda record: record["step"] < 3,
        )
    assert latest_checkpoint(run_dir(settings, "stopped")).name == "step-3"


class _Bar:
    def resize(self, total: int) -> None:
        self.total = total


def _budget_run(step: int, total: int, planned: int):
    """What fit_to_budget reads and changes of a run: its steps, optimizer and schedule."""
    from types import SimpleNamespace

    from accelerate import PartialState
    from transformers import get_cosine_schedule_with_warmup

    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    scheduler = get_cosine_schedule_with_warmup(optimizer, 0, total)
    for _ in range(step):
        optimizer.step()
        scheduler.step()
    accelerator = SimpleNamespace(num_processes=PartialState().num_processes)
    return SimpleNamespace(step=step, total_steps=total, planned_steps=planned, optimizer=optimizer,
                           scheduler=scheduler, accelerator=accelerator)  # fmt: skip


def test_the_time_budget_shortens_a_slow_run_and_gives_the_steps_back_when_the_pace_recovers():
    config = make_config(time_budget_s=100, warmup_fraction=0)
    run = _budget_run(step=10, total=400, planned=400)
    fit_to_budget(run, config, elapsed=10.0, per_step=1.0, bar=_Bar())  # 90 s left at 1 s a step
    assert run.total_steps == 10 + int(90 * 0.85)
    # the schedule cools by the new last step: its rate is a fresh cosine schedule's at this step
    fresh = _budget_run(step=10, total=run.total_steps, planned=400)
    assert run.scheduler.get_last_lr() == pytest.approx(fresh.scheduler.get_last_lr())
    fit_to_budget(run, config, elapsed=20.0, per_step=0.1, bar=_Bar())  # faster now: all of them fit
    assert run.total_steps == 400  # never past the epochs' steps
    fit_to_budget(run, config, elapsed=21.0, per_step=0.177, bar=_Bar())  # 389 fit: under 5%, no change
    assert run.total_steps == 400


class _Clock:
    """The recipe's clock (its `time` module), moved on by the steps themselves: timings that do not
    depend on how busy the machine running the tests is."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


def _paced(monkeypatch, seconds_of_step) -> None:
    """Each training step takes `seconds_of_step(step)` on the recipe's clock."""
    import tunelab.training.recipe as recipe

    clock, step_of = _Clock(), recipe.optimizer_step

    def paced(run, config, rows):
        clock.now += seconds_of_step(run.step + 1)
        return step_of(run, config, rows)

    monkeypatch.setattr(recipe, "time", clock)
    monkeypatch.setattr(recipe, "optimizer_step", paced)


def test_a_slow_start_does_not_cut_the_run_when_the_machine_frees_up(
    tiny_chat_dir, tunelab_home, monkeypatch
):
    """Another program busy during the first steps (each takes 0.5 s), then an idle machine (0.02 s):
    the run is shortened at step 10, lengthened back at the next judgments, and trains all its steps."""
    _paced(monkeypatch, lambda step: 0.5 if step <= 10 else 0.02)
    runner = BasicModelRunner(str(tiny_chat_dir))
    runner.load_data(FACTS * 2)  # 8 examples: 4 steps an epoch
    result = runner.train(
        epochs=10, batch_size=2, eval_fraction=0, eval_every=5, time_budget_s=12, progress=False, **PLAIN
    )
    assert (result.steps, result.stopped, result.steps_text) == (40, None, "40 steps")
    metrics = [json.loads(line) for line in (result.path / "metrics.jsonl").read_text().splitlines()]
    assert metrics[-1]["learning_rate"] == pytest.approx(0.0, abs=1e-12)  # the schedule ran its course


def test_a_run_cut_by_the_time_budget_says_so(tiny_chat_dir, tunelab_home, monkeypatch):
    _paced(monkeypatch, lambda step: 0.3)
    runner = BasicModelRunner(str(tiny_chat_dir))
    runner.load_data(FACTS * 2)
    result = runner.train(
        epochs=10, batch_size=2, eval_fraction=0, eval_every=5, time_budget_s=6, progress=False, **PLAIN
    )
    assert 10 < result.steps < 30 and result.planned_steps == 40 and result.stopped == "time budget"
    assert result.steps_text == f"{result.steps} of 40 steps (stopped: time budget)"
    record = json.loads((result.path / "tunelab.json").read_text())
    assert record["metrics"]["planned_steps"] == 40 and record["metrics"]["stopped"] == "time budget"
