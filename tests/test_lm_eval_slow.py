"""lm-eval's `local-completions` against a real `tunelab serve`: a multiple-choice task from a YAML and a
JSONL the test writes (no dataset hub), with lm-eval's remote tokenizer (/tokenize, /tokenizer_info), so
it needs no tokenizer files of its own. Marked slow (the embedded SmolLM2 on llama.cpp)."""

import json

import pytest

from tests.remote_server import RunningServer
from tunelab import BasicModelRunner
from tunelab.config import Settings
from tunelab.server.service import Service

pytestmark = pytest.mark.slow

QUESTIONS = [
    ("The capital of France is", ["Paris", "a banana", "purple"], 0),
    ("Two plus two equals", ["seven", "four", "the sky"], 1),
    ("The opposite of hot is", ["cold", "Tuesday", "a chair"], 0),
    ("A dog says", ["meow", "moo", "woof"], 2),
    ("Water is made of hydrogen and", ["gold", "oxygen", "sand"], 1),
    ("The sun rises in the", ["east", "fridge", "piano"], 0),
]

TASK = """task: tunelab_mc
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: multiple_choice
doc_to_text: "{{{{question}}}}"
doc_to_choice: "{{{{choices}}}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""


def test_lm_eval_multiple_choice_through_local_completions(tmp_path, tunelab_home, monkeypatch):
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = tmp_path / "mc.jsonl"
    data.write_text(
        "".join(json.dumps({"question": q, "choices": c, "answer": a}) + "\n" for q, c, a in QUESTIONS)
    )
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "tunelab_mc.yaml").write_text(TASK.format(data=data))

    service = Service(
        Settings(home=tunelab_home),
        None,
        extra_models=["smollm2-135m-instruct"],
        backend="llama_cpp",
        no_auth=True,
    )
    with RunningServer(service) as running:
        results = simple_evaluate(
            model="local-completions",
            model_args={
                "base_url": running.url + "/v1/completions",
                "model": "smollm2-135m-instruct",
                "tokenizer_backend": "remote",
                "num_concurrent": 1,
                "max_retries": 1,
            },
            tasks=["tunelab_mc"],
            task_manager=TaskManager(include_path=str(tasks)),
            batch_size=4,
        )
    acc = results["results"]["tunelab_mc"]["acc,none"]
    print(f"lm-eval local-completions on tunelab serve (smollm2-135m-instruct, llama_cpp): acc {acc}")
    assert 0.0 <= acc <= 1.0
    # lm-eval's accuracy is the one runner.score gives: each question's likeliest choice (its " " + choice)
    runner = BasicModelRunner("smollm2-135m-instruct", backend="llama_cpp")
    right = 0
    for question, choices, answer in QUESTIONS:
        scores = runner.score([question] * len(choices), [" " + c for c in choices])
        right += max(range(len(choices)), key=lambda i: scores[i].logprob) == answer
    assert acc == pytest.approx(right / len(QUESTIONS))
