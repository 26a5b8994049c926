"""compare(): cells, batching, template_mismatch, the limit that fits, findings, JSON schema, bad input."""

import json
from pathlib import Path

import pytest

from tests.remote_server import API_KEY, configure_chat_gpt, serve_smollm2
from tunelab import BasicModelRunner, compare
from tunelab.errors import PromptError, PromptFileError
from tunelab.evaluation.compare.findings import findings, summarize
from tunelab.evaluation.compare.prompts import load_expected, load_prompts
from tunelab.evaluation.compare.run import _flag_template_mismatch
from tunelab.evaluation.compare.schema import Cell, Comparison

PROMPTS = ["Tell me how to train my dog to sit", "Who is the boss of Twitter?"]
SCHEMA_FILE = Path(__file__).parent.parent / "docs" / "compare-schema.json"


@pytest.fixture(scope="module")
def tiny_comparison(tiny_chat_dir, tiny_base_dir, tmp_path_factory):
    return compare(
        [str(tiny_chat_dir), str(tiny_base_dir), "no-such-model"],
        PROMPTS,
        templates=["auto", "raw", "llama2"],
        expected=[None, "Elon Musk"],
        backend="transformers",
        max_new_tokens=6,
    )


def test_every_model_template_and_prompt_gets_a_cell_with_its_completion(tiny_comparison, tiny_chat_dir):
    chat = str(tiny_chat_dir)
    cells = [c for c in tiny_comparison.cells if c.model == chat]
    assert len(cells) == 3 * len(PROMPTS)
    for cell in cells:
        assert cell.finish_reason in ("stop", "length") and cell.error is None
        assert cell.completion_tokens > 0 and cell.latency_s > 0 and cell.backend == "transformers"
        assert {"echo", "ramble", "truncated", "self_dialogue"} <= set(cell.scores)
    # the same answer the runner gives on its own
    alone = BasicModelRunner(chat, backend="transformers").generate(
        PROMPTS[1], template="raw", max_new_tokens=6
    )
    assert tiny_comparison.cell(chat, "raw", 1).text == alone.text
    assert tiny_comparison.cell(chat, "auto", 0).template_name.startswith("chatml")
    # an expected answer is scored; a prompt without one is not judged
    assert "contained" in tiny_comparison.cell(chat, "raw", 1).scores
    assert "contained" not in tiny_comparison.cell(chat, "raw", 0).scores


def test_an_unknown_model_fails_in_its_own_column_and_the_others_still_run(tiny_comparison, tiny_base_dir):
    failed = [c for c in tiny_comparison.cells if c.model == "no-such-model"]
    assert len(failed) == 3 * len(PROMPTS)
    assert all(c.finish_reason == "error" and c.flags == ["error"] for c in failed)
    assert "no model named 'no-such-model'" in failed[0].error
    assert any(f.startswith("no-such-model could not run") for f in tiny_comparison.findings)
    assert all(c.error is None for c in tiny_comparison.cells if c.model == str(tiny_base_dir))
    assert tiny_comparison.summary["no-such-model"].errors == len(failed)


def test_a_template_that_renders_like_another_is_run_once_and_noted(tiny_comparison, tiny_base_dir):
    base = str(tiny_base_dir)  # no chat template: "auto" is "raw"
    assert [t for m, t in tiny_comparison.runs() if m == base] == ["auto", "llama2"]
    assert any(base in note and "'raw'" in note and "'auto'" in note for note in tiny_comparison.notes)


def test_prompts_are_answered_as_one_batch_per_model_and_template(tiny_chat_dir, monkeypatch):
    runner = BasicModelRunner(str(tiny_chat_dir), backend="transformers")
    backend = runner.engine.load(runner.resolved, "transformers")
    sizes = []
    original = backend.generate
    monkeypatch.setattr(
        backend,
        "generate",
        lambda prompts, options, **kw: sizes.append(len(prompts)) or original(prompts, options, **kw),
    )
    compare(
        [str(tiny_chat_dir)],
        PROMPTS * 2,
        templates=["auto", "raw"],
        backend="transformers",
        max_new_tokens=4,
        fit_limit=0,
    )
    assert sizes == [4, 4]


def test_a_cut_answer_is_rerun_to_find_the_limit_that_would_have_fit(tiny_chat_dir):
    chat = BasicModelRunner(str(tiny_chat_dir), backend="transformers")
    long = chat.generate(PROMPTS[0], max_new_tokens=30)
    stop_text = long.text[len(long.text) // 2 :][:4]  # a stop string met about half way through
    assert stop_text.strip()
    full = chat.generate(PROMPTS[0], max_new_tokens=30, stop=[stop_text])
    assert full.finish_reason == "stop" and full.completion_tokens > 3
    result = compare(
        [str(tiny_chat_dir)],
        [PROMPTS[0]],
        backend="transformers",
        max_new_tokens=3,
        stop=[stop_text],
        fit_limit=30,
    )
    cell = result.cells[0]
    assert cell.finish_reason == "length" and "truncated" in cell.flags
    assert cell.fit_checked_to == 30 and cell.fits_in_tokens == full.completion_tokens
    assert any(f"needed: {full.completion_tokens}" in f for f in result.findings)


def _cell(model, template, index, flags, **extra):
    return Cell(
        model=model,
        template=template,
        prompt_index=index,
        prompt=f"prompt {index}",
        finish_reason=extra.pop("finish_reason", "stop"),
        flags=list(flags),
        completion_tokens=10,
        latency_s=1.0,
        max_new_tokens=128,
        **extra,
    )


def test_template_mismatch_marks_the_template_that_answered_worse_than_another():
    cells = [
        _cell("chat", "raw", 0, ["empty"]),
        _cell("chat", "auto", 0, []),
        _cell("chat", "raw", 1, ["ramble"]),
        _cell("chat", "auto", 1, ["ramble"]),  # equally good: neither is blamed
        _cell("base", "raw", 0, ["echo", "ramble"]),
        _cell("base", "llama2", 0, ["echo", "ramble", "self_dialogue"]),
        _cell("solo", "auto", 0, ["echo"]),  # one template only: nothing to compare with
    ]
    _flag_template_mismatch(cells)
    flagged = {(c.model, c.template, c.prompt_index) for c in cells if "template_mismatch" in c.flags}
    assert flagged == {("chat", "raw", 0), ("base", "llama2", 0)}
    assert cells[0].scores["template_gap"] == 2 and cells[1].scores["template_gap"] == 0


def _comparison(cells) -> Comparison:
    """A comparison of these cells: their models, templates and prompts, summarized."""
    models = list(dict.fromkeys(c.model for c in cells))
    comparison = Comparison(
        models=models,
        templates={m: list(dict.fromkeys(c.template for c in cells if c.model == m)) for m in models},
        prompts=[f"prompt {i}" for i in range(max(c.prompt_index for c in cells) + 1)],
        cells=cells,
    )
    comparison.summary = summarize(cells)
    return comparison


def test_findings_are_computed_from_the_cells_not_canned():
    cells = [
        _cell("base", "raw", i, ["echo", "ramble", "truncated"], finish_reason="length", fit_checked_to=512)
        for i in range(4)
    ]
    cells += [_cell("chat", "auto", i, []) for i in range(3)]
    cells += [
        _cell(
            "chat", "auto", 3, ["truncated"], finish_reason="length", fit_checked_to=512, fits_in_tokens=140
        )
    ]
    comparison = _comparison(cells)
    text = " ".join(findings(comparison))
    assert "base (raw) repeated or continued the prompt instead of answering in all 4" in text
    assert "chat (auto) answered all 4 prompts without echo" in text
    assert "5 of 8 answers were cut at 128 tokens" in text
    assert "1 ends within 140 tokens" in text and "4 still did not end within 512 (4 of them looping)" in text
    cells[4].flags = ["empty"]
    comparison.summary = summarize(cells)
    assert "chat (auto) answered 3 of 4 prompts cleanly; said nothing at all in 1 of 4" in " ".join(
        findings(comparison)
    )


def test_accuracy_findings_show_one_answer_it_got_and_one_it_missed():
    said = {0: "Elon Musk runs it.", 1: "Twitter is a platform.", 2: "Musk."}
    cells = [
        _cell("tuned", "auto", i, [] if i != 1 else ["incorrect"], expected="Elon Musk", text=said[i])
        for i in range(3)
    ]
    missed = {"expected": "Elon Musk", "text": "No idea."}
    cells += [_cell("base", "auto", i, ["incorrect"], **missed) for i in range(3)]
    text = " ".join(findings(_comparison(cells)))
    assert "tuned (auto) gave the expected answer 2 of 3 times" in text
    assert "; e.g. to 'prompt 0' it said 'Elon Musk runs it.'; missed:" in text
    assert "missed: expected 'Elon Musk' to 'prompt 1', it said 'Twitter is a platform.'" in text
    # nothing right: only the miss, as an example
    assert "base (auto) gave the expected answer 0 of 3 times; e.g. expected 'Elon Musk'" in text


def test_the_json_report_has_the_documented_schema(tiny_comparison, tmp_path, tiny_chat_dir):
    path = tiny_comparison.save_json(tmp_path / "out" / "report.json")
    data = json.loads(path.read_text())
    assert {"cells", "summary", "findings", "schema_version", "prompts", "models"} <= set(data)
    for cell in data["cells"]:
        assert {
            "model",
            "template",
            "prompt",
            "text",
            "finish_reason",
            "completion_tokens",
            "latency_s",
            "scores",
            "flags",
        } <= set(cell)
        assert all(isinstance(v, int | float) for v in cell["scores"].values())
        assert set(cell["flags"]) <= {
            "echo",
            "ramble",
            "truncated",
            "self_dialogue",
            "empty",
            "template_mismatch",
            "incorrect",
            "error",
        }
    summary = data["summary"][str(tiny_chat_dir)]
    assert summary["accuracy"] == 0.0 and summary["n_expected"] == 3
    assert set(summary["flag_rates"]) >= {"echo", "truncated"} and summary["tokens_per_s"] > 0
    assert Comparison.load_json(path) == tiny_comparison  # it reads back whole
    # the schema is documented in docs/compare-schema.json; a change to it must update the docs
    assert json.loads(SCHEMA_FILE.read_text()) == Comparison.model_json_schema()


def test_bad_arguments_fail_before_anything_runs(tiny_chat_dir):
    with pytest.raises(PromptError, match="empty"):
        compare([str(tiny_chat_dir)], ["fine", "  "])
    with pytest.raises(PromptError, match="2 expected answers for 1 prompts"):
        compare([str(tiny_chat_dir)], ["fine"], expected=["a", "b"])
    with pytest.raises(ValueError, match="unknown generation option"):
        compare([str(tiny_chat_dir)], ["fine"], max_new_tokenz=3)


def test_prompts_files_plain_text_and_jsonl(tmp_path):
    text = tmp_path / "prompts.txt"
    text.write_text("Tell me how to train my dog to sit\n\nWho is the boss of Twitter?\n")
    assert load_prompts(text) == (PROMPTS, [None, None])
    jsonl = tmp_path / "prompts.jsonl"
    jsonl.write_text(
        '{"prompt": "Agent: hi\\nCustomer: where is it?\\nAgent:"}\n'
        '{"prompt": "Who is the boss of Twitter?", "expected": "Elon Musk"}\n'
    )
    prompts, expected = load_prompts(jsonl)
    assert prompts[0].count("\n") == 2 and expected == [None, "Elon Musk"]
    answers = tmp_path / "expected.txt"
    answers.write_text("\nElon Musk\n")
    assert load_expected(answers, 2) == [None, "Elon Musk"]
    with pytest.raises(PromptFileError, match="1 expected answers for 2 prompts"):
        (tmp_path / "short.txt").write_text("Elon Musk")
        load_expected(tmp_path / "short.txt", 2)


def test_bad_prompts_files_name_the_file_and_line(tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n")
    with pytest.raises(PromptFileError, match=r"empty.txt has no prompts"):
        load_prompts(empty)
    broken = tmp_path / "broken.jsonl"
    broken.write_text(
        '{"prompt": "ok"}\n{"prompt": "cut off\n{"text": "no prompt field"}\n{"prompt": "ok 2"}\n'
    )
    with pytest.raises(PromptFileError) as info:
        load_prompts(broken)
    message = str(info.value)
    assert "2 bad line(s)" in message
    assert f"{broken}:2: not valid JSON" in message and f"{broken}:3: field 'prompt' is missing" in message
    with pytest.raises(PromptFileError, match="no such prompts file"):
        load_prompts(tmp_path / "missing.txt")


@pytest.fixture(scope="module")
def server_url(tunelab_home, tmp_path_factory):
    yield from serve_smollm2(tunelab_home, tmp_path_factory)


def test_a_configured_hosted_model_joins_the_comparison(isolated_env, server_url, monkeypatch, tiny_chat_dir):
    configure_chat_gpt(isolated_env, server_url)
    monkeypatch.setenv("REMOTE_KEY", API_KEY)
    result = compare(
        ["chat-gpt", str(tiny_chat_dir)],
        PROMPTS,
        templates={"chat-gpt": ["auto"], str(tiny_chat_dir): ["auto", "raw"]},
        expected=[None, "Elon Musk"],
        max_new_tokens=24,
        fit_limit=0,
    )
    hosted = [c for c in result.cells if c.model == "chat-gpt"]
    assert len(hosted) == 2 and all(c.backend == "remote" and c.text.strip() for c in hosted)
    assert all("echo" in c.scores for c in hosted) and "contained" in hosted[1].scores
    assert result.templates["chat-gpt"] == ["auto"] and result.summary["chat-gpt"].tokens_per_s > 0
