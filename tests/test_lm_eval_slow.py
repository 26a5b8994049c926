"""lm-eval's `local-completions` against a real `tunelab serve`: a multiple-choice task and a
generate_until task, each from a YAML and a JSONL the test writes (no dataset hub), with lm-eval's remote
tokenizer (/tokenize, /tokenizer_info), so it needs no tokenizer files of its own. Marked slow (the
embedded SmolLM2 on llama.cpp)."""

import json
import string

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


GENERATE = [
    ("The capital of France is", "Paris"),
    ("The first month of the year is", "January"),
    ("Two plus two equals", "four"),
    ("The opposite of hot is", "cold"),
    ("The colour of grass is", "green"),
    ("A dog says", "woof"),
]

GENERATE_TASK = """task: tunelab_gen
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "Q: Complete the sentence: {{{{start}}}}\\nA:"
doc_to_target: "{{{{end}}}}"
generation_kwargs:
  until: ["\\n"]
  max_gen_toks: 16
  do_sample: false
  temperature: 0
metric_list:
  - metric: exact_match
    ignore_case: true
    ignore_punctuation: true
    regexes_to_ignore: ["^\\\\s+", "\\\\s+$"]
"""


def run_lm_eval(tmp_path, tunelab_home, monkeypatch, task: str, yaml: str, rows: list[dict]) -> dict:
    """lm-eval's `simple_evaluate` of one task (its YAML and rows written here) against `tunelab serve`."""
    from lm_eval import simple_evaluate
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    data = tmp_path / f"{task}.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    tasks = tmp_path / "tasks"
    tasks.mkdir(exist_ok=True)
    (tasks / f"{task}.yaml").write_text(yaml.format(data=data))

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
            tasks=[task],
            task_manager=TaskManager(include_path=str(tasks)),
            batch_size=4,
        )
    return results["results"][task]


def test_lm_eval_multiple_choice_through_local_completions(tmp_path, tunelab_home, monkeypatch):
    rows = [{"question": q, "choices": c, "answer": a} for q, c, a in QUESTIONS]
    acc = run_lm_eval(tmp_path, tunelab_home, monkeypatch, "tunelab_mc", TASK, rows)["acc,none"]
    print(f"lm-eval local-completions on tunelab serve (smollm2-135m-instruct, llama_cpp): acc {acc}")
    assert 0.0 <= acc <= 1.0
    # lm-eval's accuracy is the one runner.score gives: each question's likeliest choice (its " " + choice)
    runner = BasicModelRunner("smollm2-135m-instruct", backend="llama_cpp")
    right = 0
    for question, choices, answer in QUESTIONS:
        scores = runner.score([question] * len(choices), [" " + c for c in choices])
        right += max(range(len(choices)), key=lambda i: scores[i].logprob) == answer
    assert acc == pytest.approx(right / len(QUESTIONS))


def test_lm_eval_generate_until_through_local_completions(tmp_path, tunelab_home, monkeypatch):
    rows = [{"start": start, "end": end} for start, end in GENERATE]
    result = run_lm_eval(tmp_path, tunelab_home, monkeypatch, "tunelab_gen", GENERATE_TASK, rows)
    exact = result["exact_match,none"]
    print(f"lm-eval generate_until on tunelab serve (smollm2-135m-instruct, llama_cpp): exact_match {exact}")
    # lm-eval's score is the one the runner's own greedy answers give (the same prompt, cut at a line
    # break, 16 tokens; compared as lm-eval does: case, punctuation and outer spaces ignored)
    runner = BasicModelRunner("smollm2-135m-instruct", backend="llama_cpp")

    def plain(text: str) -> str:
        return "".join(ch for ch in text.strip().lower() if ch not in string.punctuation)

    answers = [
        runner(
            f"Q: Complete the sentence: {start}\nA:",
            template="raw",
            stop=["\n"],
            max_new_tokens=16,
            temperature=0,
        )
        for start, _ in GENERATE
    ]
    right = sum(plain(answer) == plain(end) for answer, (_, end) in zip(answers, GENERATE, strict=True))
    assert right >= 1, answers  # the check below is not only "both found nothing"
    assert exact == pytest.approx(right / len(GENERATE))
