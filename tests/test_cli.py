"""The `tunelab` command, run as a user would (typer's runner, real models)."""

import json

from typer.testing import CliRunner

from tunelab.cli.main import app

cli = CliRunner()


def test_ask_prints_the_answer_and_says_when_it_was_cut(tiny_chat_dir):
    result = cli.invoke(app, ["ask", str(tiny_chat_dir), "Hi there", "-n", "4", "--backend", "transformers"])
    assert result.exit_code == 0, result.output
    assert "cut off" in result.output and "finish_reason=length" in result.output
    assert "4 answer tokens" in result.output


def test_ask_json_gives_completion_records(tiny_chat_dir):
    result = cli.invoke(
        app, ["ask", str(tiny_chat_dir), "Hi", "Tell me", "-n", "3", "--json", "--template", "raw"]
    )
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert [r["prompt"] for r in records] == ["Hi", "Tell me"]
    assert all(r["finish_reason"] == "length" and r["template"] == "raw" for r in records)


def test_unknown_model_is_one_clear_line_not_a_traceback():
    result = cli.invoke(app, ["ask", "no-such-model", "Hi"])
    assert result.exit_code == 1
    assert "error: no model named 'no-such-model'" in result.output
    assert "Traceback" not in result.output


def test_models_lists_embedded_aliases_and_remotes(isolated_env):
    isolated_env.write_text(
        "aliases:\n  meta-llama/Llama-2-7b-hf: gemma-3-270m\n"
        "remote:\n  chat-gpt:\n    base_url: http://127.0.0.1:9/v1\n    model: gpt-3.5-turbo\n"
        "    api_key_env: NO_SUCH_KEY_VAR\n"
    )
    result = cli.invoke(app, ["models"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    for text in (
        "gemma-3-270m",
        "smollm2-135m-instruct",
        "embedded",
        "meta-llama/Llama-2-7b-hf",
        "alias",
        "chat-gpt",
        "no key (NO_SUCH_KEY_VAR)",
    ):
        assert text in result.output


def test_bad_config_file_is_reported_with_its_path(isolated_env):
    isolated_env.write_text("backend: [\n")
    result = cli.invoke(app, ["models"])
    assert result.exit_code == 1 and str(isolated_env) in result.output and "not valid YAML" in result.output


def test_ask_takes_every_generation_option_and_the_config_backend(isolated_env, tiny_chat_dir):
    isolated_env.write_text("backend: transformers\n")
    args = ["ask", str(tiny_chat_dir), "Hi", "-n", "6", "--json", "--template", "raw"]
    full = json.loads(cli.invoke(app, args).stdout)[0]
    assert full["backend"] == "transformers"  # from the config file: the CLI default does not override it
    stop = full["text"].strip()[-2:]
    options = ["--top-k", "5", "--top-p", "0.9", "--repetition-penalty", "1.1", "--temperature", "0.7"]
    sampled = cli.invoke(app, [*args, *options, "--seed", "3"])
    assert sampled.exit_code == 0, sampled.output
    assert json.loads(sampled.stdout)[0]["completion_tokens"] > 0
    stopped = json.loads(cli.invoke(app, [*args, "--stop", stop]).stdout)[0]
    assert stopped["finish_reason"] == "stop" and stop not in stopped["text"]
    bad = cli.invoke(app, [*args, "--top-p", "2"])
    assert bad.exit_code == 1 and "top_p must be in [0, 1]" in bad.output


def test_train_eval_export_from_the_command_line(tiny_chat_dir, tmp_path):
    data = tmp_path / "facts.jsonl"
    rows = [
        {"input": f"Where is shop {i}{end}", "output": f"Shop {i} is on Mill Lane.", "answer": "Mill Lane"}
        for i in range(2)
        for end in ("?", "??", "? ", " ?")
    ]
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    trained = cli.invoke(
        app,
        ["train", str(tiny_chat_dir), str(data), "--method", "full", "--epochs", "40",
         "--learning-rate", "3e-3", "--eval-fraction", "0.25", "--set", "batch_size=3"],
    )  # fmt: skip
    assert trained.exit_code == 0, trained.output
    model_id = trained.stdout.strip().splitlines()[-1]
    assert "-tuned-" in model_id

    evaluated = cli.invoke(app, ["eval", model_id, "--json", "-n", "30"])
    assert evaluated.exit_code == 0, evaluated.output
    out = json.loads(evaluated.stdout)
    assert out["n"] == 2 and out["eval_results"][0]["expected"] == "Mill Lane"
    base = out["models"]["base"]
    assert out["totals"][model_id]["contained"] >= 0.5 > out["totals"][base]["contained"], out["eval_results"]

    target = tmp_path / "merged"
    exported = cli.invoke(app, ["export", model_id, "--merged", str(target), "--gguf"])
    assert exported.exit_code == 0, exported.output
    assert (target / "model.safetensors").exists() and (tmp_path / "merged.gguf").exists()
    again = cli.invoke(app, ["export", model_id, "--merged", str(target)])
    assert again.exit_code == 1 and "overwrite" in again.output

    asked = cli.invoke(app, ["ask", str(tmp_path / "merged.gguf"), "Where is shop 0?", "-n", "30"])
    assert asked.exit_code == 0, asked.output
    assert asked.stdout.strip() == "Shop 0 is on Mill Lane."


def test_compare_writes_json_and_html_and_reports_a_failed_model_in_its_column(tiny_chat_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text(
        '{"prompt": "Tell me how to train my dog to sit"}\n{"prompt": "Hi", "expected": "Hello"}\n'
    )
    out_json, out_html = tmp_path / "r.json", tmp_path / "r.html"
    args = [
        "compare",
        str(tiny_chat_dir),
        "no-such-model",
        "--prompts",
        str(prompts),
        "-t",
        "auto",
        "-t",
        "raw",
    ]
    result = cli.invoke(
        app, [*args, "-n", "4", "--backend", "transformers", "--json", str(out_json), "--html", str(out_html)]
    )
    assert result.exit_code == 0, result.output
    assert "no model named 'no-such-model'" in result.output and "findings" in result.output
    data = json.loads(out_json.read_text())
    assert len(data["cells"]) == 2 * 2 * 2 and data["expected"] == [None, "Hello"]
    assert sum(c["error"] is None for c in data["cells"]) == 4
    assert "<svg" in out_html.read_text()


def test_compare_takes_prompts_on_the_command_line_with_expected_answers_from_a_file(tiny_chat_dir, tmp_path):
    expected = tmp_path / "expected.txt"
    expected.write_text("\nElon Musk\n")
    out_json = tmp_path / "r.json"
    result = cli.invoke(
        app,
        [
            "compare",
            str(tiny_chat_dir),
            "-p",
            "Tell me a joke",
            "-p",
            "Who is the boss?",
            "--expected",
            str(expected),
            "-n",
            "3",
            "--json",
            str(out_json),
        ],
    )
    assert result.exit_code == 0, result.output
    cells = json.loads(out_json.read_text())["cells"]
    assert [c["expected"] for c in cells] == [None, "Elon Musk"] and "incorrect" in cells[1]["flags"]


def test_compare_bad_prompts_files_are_one_clear_message(tiny_chat_dir, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    result = cli.invoke(app, ["compare", str(tiny_chat_dir), "--prompts", str(empty)])
    assert result.exit_code == 1 and "has no prompts" in result.output and "Traceback" not in result.output
    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"prompt": "fine"}\n{"prompt": "oops"\n')
    result = cli.invoke(app, ["compare", str(tiny_chat_dir), "--prompts", str(broken)])
    assert result.exit_code == 1 and f"{broken}:2: not valid JSON" in result.output
    result = cli.invoke(app, ["compare", str(tiny_chat_dir)])
    assert result.exit_code != 0 and "--prompts FILE or one or more -p PROMPT" in result.output


def test_demo_ends_with_the_time_each_part_took(monkeypatch):
    import tunelab.demo.lesson as lesson

    # the parts themselves run on the embedded models in tests/test_lesson_slow.py; here only the split
    monkeypatch.setattr(lesson, "run_lesson", lambda console, **kw: console.print("part 1"))
    monkeypatch.setattr(lesson, "run_tuning", lambda console, **kw: console.print("part 2"))
    result = cli.invoke(app, ["demo"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[:2] == ["part 1", "part 2"]
    assert lines[-1].startswith("time: the lesson 0.0 min; the fine-tune (training, then the questions) 0.0")
    no_tune = cli.invoke(app, ["demo", "--no-tune"])
    assert no_tune.output.splitlines() == ["part 1", "time: the lesson 0.0 min"]
