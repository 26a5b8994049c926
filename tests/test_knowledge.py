"""Knowledge tuning mechanics: augmentation, the held-out split by fact, replay, keeping the best step."""

from __future__ import annotations

import json
import random

import pytest
import torch
from safetensors.torch import load_file

from tunelab import BasicModelRunner
from tunelab.config import load_settings
from tunelab.errors import ConfigError
from tunelab.evaluation.scoring import normalise
from tunelab.models.resolve import resolve
from tunelab.training.augment import (
    Fact,
    augment,
    contrast_questions,
    focused_answer,
    group_facts,
    imperatives,
    indirect,
    key_phrases,
    parse_paraphrases,
    reword,
    subject_questions,
    with_synonyms,
)
from tunelab.training.data import Example, load_records
from tunelab.training.definitions import defined_rewordings, definition, model_definer, nouns
from tunelab.training.heldout import answer_passes, hold_out_rewordings, kept_evaluation, split_by_fact
from tunelab.training.recipe import BEST_FILE, make_config, run_dir, train
from tunelab.training.replay import replay_examples

# Three facts, each asked three ways, as a user's FAQ gives them (question/answer, no key field).
FAQ = [
    {"question": q, "answer": a}
    for a, qs in [
        ("Velmora Quist founded Acme Zentrix in 2011.",
         ["Who founded Acme Zentrix?", "Who is the founder of Acme Zentrix?",
          "Which person started Acme Zentrix?"]),
        ("The headquarters of Acme Zentrix is in Port Ardeny.",
         ["Where is Acme Zentrix based?", "In which city is Acme Zentrix headquartered?",
          "Where is the HQ of Acme Zentrix?"]),
        ("The Acme Zentrix mascot is a copper owl named Bixby.",
         ["What is the mascot of Acme Zentrix?", "What is Acme Zentrix's mascot called?",
          "Which animal is Acme's mascot?"]),
    ]
    for q in qs
]  # fmt: skip


def faq_examples():
    return load_records(FAQ, input_key="question", output_key="answer").examples


def test_rewordings_keep_the_question_and_never_repeat_it():
    rng = random.Random(0)
    assert indirect("What is the capital of Elbonia?") == "what the capital of Elbonia is"
    assert indirect("When was Acme Zentrix founded?") == "when Acme Zentrix was founded"
    assert indirect("How many employees does Acme Zentrix have?") == "how many employees Acme Zentrix has"
    for question in ("Who is the boss of Twitter?", "What is Acme Zentrix's slogan?", "who won"):
        out = reword(question, 6, rng)
        assert out and len({normalise(q) for q in out}) == len(out)
        assert normalise(question) not in {normalise(q) for q in out}
    assert "What is Twitter's boss?" in reword("What is the boss of Twitter?", 20, random.Random(1))
    # a request for the noun a question asks about, when its words allow one (never "the voice
    # assistant assistant does ..."; "the voice assistant X makes" would need the verb's forms)
    year = imperatives("What year was Acme Zentrix founded?", random.Random(0))
    assert len(year) == 2 and all(q.endswith(" the year Acme Zentrix was founded.") for q in year)
    for question in ("What voice assistant does Acme Zentrix make?", "What art movement is X known for?"):
        assert imperatives(question, rng) == []
    # synonyms: a different word swapped each time, phrases as well as words, capitals kept
    swapped = with_synonyms("Who founded the company Acme Zentrix?", random.Random(0), n=5)
    assert len(swapped) == 2 and len({q.split()[1] == "founded" for q in swapped}) == 2
    assert all(q.startswith("Who ") and q.endswith(" Acme Zentrix?") for q in swapped)
    assert with_synonyms("Where is the headquarters of X?", random.Random(0), n=1)[0] in {
        "Where is the head office of X?",
        "Where is the main office of X?",
    }
    assert with_synonyms("Company size?", random.Random(0), n=1)[0] in {"Firm size?", "Business size?"}


def test_facts_are_grouped_by_answer_and_name_what_the_answer_says():
    facts = group_facts(faq_examples())
    assert [len(f.records) for f in facts] == [3, 3, 3]
    # the names the answer gives that no question asks about
    assert key_phrases(facts[0])[0] == "Velmora Quist"
    assert "Port Ardeny" in facts[1].phrases and "Acme Zentrix" not in facts[1].phrases


def _fact(answer: str, *questions: str) -> Fact:
    records = [Example([{"role": "user", "content": q}, {"role": "assistant", "content": answer}], "t")
               for q in questions]  # fmt: skip
    return Fact(answer, records)


def test_a_documentation_answer_names_its_code_and_not_the_words_that_open_its_sentences():
    """lamini_docs-shaped answers: paragraphs about a tool. What they name is code (`backticked`,
    --flags, file names, ENV_VARS), not "Installing" or "If" capitalised at a sentence's start."""
    answer = (
        "Quillmesh is published on PyPI as quillmesh-core, so run `pip install quillmesh-core`. "
        "Installing it gives you the library. If you use a virtual environment, activate it first."
    )
    fact = _fact(answer, "How do I install Quillmesh?", "What is the pip command for Quillmesh?")
    assert key_phrases(fact) == ["pip install quillmesh-core", "PyPI"]
    answer = (
        "The QMESH_HOME environment variable tells Quillmesh where to keep its state. If it is unset, "
        "Quillmesh reads quillmesh.toml and writes logs to /var/log/quillmesh/mesh.log; pass "
        "--dry-run to check them, e.g. before a deploy."
    )
    # code first, in the answer's order ("The QMESH_HOME" before); never "If", nor "e.g"
    fact = _fact(answer, "Which variable sets the Quillmesh home directory?")
    assert key_phrases(fact) == ["QMESH_HOME", "quillmesh.toml", "/var/log/quillmesh/mesh.log"]
    # a number is never read from inside a word, and a comma only groups its thousands
    fact = _fact("It is released under MPL-2.0, the Mozilla Public License.", "What is its licence?")
    assert key_phrases(fact) == ["MPL-2.0", "MPL-2", "Mozilla Public License"]
    fact = _fact("Acme has 18,350 employees, 0, 1 or 2 a desk, on smollm2-135m.", "How many work at Acme?")
    assert key_phrases(fact) == ["18,350", "0", "1"]  # no "135m"
    fact = _fact("Keep state in .qm-stash, the dot folder.", "Where is the state kept?")
    assert key_phrases(fact) == [".qm-stash"]
    # a name that opens an answer's first sentence is still a name, unless it is a common opener
    fact = _fact("Rodri, the Spain midfielder, won the Golden Ball.", "Who won it in 2024?")
    assert key_phrases(fact) == ["Rodri", "Spain", "Golden Ball"]
    fact = _fact("Besides CSV, Quillmesh reads Parquet.", "What does Quillmesh read?")
    assert key_phrases(fact) == ["CSV", "Parquet"]
    # an opener is the last resort: the only word the answer gives beyond the question's
    assert key_phrases(_fact("Recurring.", "Which kind of pipelines are there?")) == ["Recurring"]
    assert key_phrases(_fact("Many do. Recurring ones.", "Which pipelines are there?")) == ["Recurring"]
    # and a possessive of a name the question asks about, only when nothing else is named
    fact = _fact("Quillmesh's plugin system is called Lanternhook.", "What are Quillmesh's plugins?")
    assert key_phrases(fact) == ["Lanternhook"]
    assert key_phrases(_fact("It is Quillmesh's.", "Whose is it, Quillmesh?")) == ["Quillmesh's"]


def test_augmentation_adds_rewordings_reverse_questions_and_statements_and_drops_nothing():
    examples = faq_examples()
    out = augment(examples, per_question=3, seed=0)
    assert out.examples[: len(examples)] == examples  # every record kept, first, unchanged
    counts = out.counts()
    assert counts["records"] == 9 and counts["reworded"] >= 20 and counts["reverse"] >= 6
    for added in out.added:  # each added example answers as its fact does, and says where it came from
        sources = [e.source for e in examples if e.answer == added.answer]
        assert added.source.split(" (")[0] in sources and added.origin in {"reworded", "reverse", "statement"}
    reverse = [e.prompt for e in out.added if e.origin == "reverse"]
    assert "Velmora Quist founded what?" in reverse  # the question turned around its entity
    assert "Tell me what Velmora Quist founded." in reverse
    # the answer as a statement, its key phrase blanked; the expected key is that phrase
    statements = [(e.prompt, e.expected) for e in out.added if e.origin == "statement"]
    assert len(statements) == 3
    blanked = ": ___ founded Acme Zentrix in 2011."
    assert any(p.endswith(blanked) and k == "Velmora Quist" for p, k in statements)
    assert any(p.endswith("Acme Zentrix is in ___.") for p, _ in statements)
    avoided = augment(examples, per_question=10, seed=0, avoid=["Tell me who founded Acme Zentrix."])
    assert "tell me who founded acme zentrix" not in {normalise(e.prompt) for e in avoided.added}
    assert augment(examples, "none").added == []
    with pytest.raises(ConfigError, match="augment='paraphrase'"):
        augment(examples, "paraphrase")


def test_a_paragraph_answer_is_cut_after_its_key_sentence_for_generated_questions_only():
    paragraph = (
        "Quillmesh reads its settings from a file named quillmesh.toml in the root of your project. "
        "This file controls options such as the port and the log level. It uses TOML syntax, and "
        "every option has a default, so a new project can start with an empty file and add more."
    )
    records = [
        {"input": q, "output": paragraph} for q in ["What is the config file?", "Where do settings go?"]
    ]
    examples = load_records(records).examples
    fact = group_facts(examples)[0]
    first = "Quillmesh reads its settings from a file named quillmesh.toml in the root of your project."
    assert focused_answer(fact, 40) == first and focused_answer(fact, None) == paragraph
    assert focused_answer(fact, 60) == paragraph  # not longer than 60 words: whole
    # the key in a later sentence: the answer up to and with it
    later = load_records([{"input": "What is the config file?", "output": paragraph, "answer": "log level"}])
    second = first + " This file controls options such as the port and the log level."
    assert focused_answer(group_facts(later.examples)[0], 40) == second
    out = augment(examples, per_question=3, seed=0, focus_over=40)
    assert out.examples[: len(examples)] == examples  # the user's records keep their whole answer
    assert out.added and {e.answer for e in out.added} == {first}
    # a statement made of the key sentence, which a whole paragraph does not give
    assert any(e.origin == "statement" and "named ___ in the root" in e.prompt for e in out.added)
    assert not any(e.origin == "statement" for e in augment(examples, per_question=3, seed=0).added)


@pytest.mark.parametrize(
    "answer, key, question, subject",
    [
        ("Ilse Marvaine's most famous novel is The Salt Cartographer.", "The Salt Cartographer",
         "Whose most famous novel is The Salt Cartographer?", "Ilse Marvaine"),
        ("The novelist Ilse Marvaine was born in Corrabeth.", "Corrabeth",
         "Which novelist was born in Corrabeth?", "Ilse Marvaine"),
        ("The city of Marovel was founded by Idris Colquhain.", "Idris Colquhain",
         "Which city was founded by Idris Colquhain?", "Marovel"),
        ("Nadia Orsolt commanded the Halcyon-4 mission.", "Halcyon-4",
         "Who commanded the Halcyon-4 mission?", "Nadia Orsolt"),
        ("The Purrlingo weighs 85 grams.", "85 grams", "What weighs 85 grams?", "Purrlingo"),
        ("The CEO of Acme is Doriana Plesk.", "Doriana Plesk", None, None),  # "What is K?" asks another thing
        ("Velmora Quist founded Acme Zentrix.", "Velmora Quist", None, None),  # the key is the subject
        ("it is cheap and light.", "cheap", None, None),  # no named subject
    ],
)  # fmt: skip
def test_subject_questions_ask_for_the_answers_subject_from_its_other_end(answer, key, question, subject):
    examples = load_records([{"input": "Q?", "output": answer, "answer": key}]).examples
    found = subject_questions(group_facts(examples)[0])
    assert found == ([(question, subject)] if question else [])


def test_contrast_questions_add_a_neighbouring_facts_answer_as_a_wrong_guess():
    records = FAQ + [
        {"question": "Who is the CEO of Acme Zentrix?",
         "answer": "The CEO of Acme Zentrix is Doriana Plesk."},
        {"question": "Who wrote The Salt Cartographer?", "answer": "Ilse Marvaine wrote it in 1990."},
    ]  # fmt: skip
    examples = load_records(records, input_key="question", output_key="answer").examples
    facts = group_facts(examples)
    founder = facts[0]
    found = contrast_questions(founder, facts, random.Random(0), n=2)
    assert len(found) == 2
    # the nearest neighbours first: another "who" fact about Acme Zentrix, then another Acme fact
    assert "Doriana Plesk" in found[0][1] and found[0][0] in founder.records
    assert "Ilse Marvaine" not in found[1][1] and "Velmora Quist" not in found[1][1]
    out = augment(examples, per_question=0, reverse=0, statement=0, contrast=1, seed=0)
    contrasts = [e for e in out.added if e.origin == "contrast"]
    assert len(contrasts) == len(facts)  # one per fact, answered with the fact's own answer
    for e in contrasts:
        fact = next(f for f in facts if f.answer == e.answer)
        assert any(normalise(r.prompt) in normalise(e.prompt) for r in fact.records)
        assert e.expected in fact.phrases
    assert augment(examples, seed=0).counts().get("contrast") is None  # off unless asked


def test_a_teacher_reply_is_parsed_into_rewordings():
    reply = '1. Who started Acme Zentrix?\n- "Who created Acme Zentrix?"\nWho founded Acme Zentrix?\nok\n'
    assert parse_paraphrases(reply, "Who founded Acme Zentrix?", 5) == [
        "Who started Acme Zentrix?",
        "Who created Acme Zentrix?",
    ]
    examples = faq_examples()
    teacher = lambda qs, n: [[f"Teacher: {q}"] for q in qs]  # noqa: E731
    out = augment(examples, "teacher:x", per_question=2, paraphraser=teacher)
    assert sum(e.origin == "teacher" for e in out.added) == 9


def test_the_held_out_split_keeps_back_whole_questions_of_trained_facts():
    examples = faq_examples()
    for seed in range(5):
        train_part, held = split_by_fact(examples, 0.3, seed)
        assert len(held) == 3 and len(train_part) == 6
        for question in held:  # another question of the same fact is trained
            assert any(e.answer == question.answer for e in train_part)
        assert len({normalise(q.answer) for q in held}) == 3  # at most one per fact
    # facts asked once: nothing held back by fact; a generated rewording of some facts instead
    once = [examples[0], examples[3], examples[6]]
    assert split_by_fact(once, 0.3, 0) == (once, [])
    added = augment(once, per_question=3, seed=0).added
    held = hold_out_rewordings(added, 0.3, 0)
    assert len(held) == 1 and held[0].origin == "reworded"


def test_an_answer_counts_when_it_names_the_key_phrase():
    assert answer_passes("It was Velmora Quist, in 2011.", ["Velmora Quist"], "")
    assert not answer_passes("Someone else.", ["Velmora Quist"], "")
    reference = "Reset it from the login page with the forgot password link."
    assert answer_passes("Use the forgot password link on the login page.", [], reference)
    assert not answer_passes("Call us.", [], reference)


def test_replay_answers_are_the_base_models_own_and_cached(tiny_chat_dir, tunelab_home):
    settings = load_settings()
    base = resolve(str(tiny_chat_dir), settings)
    runner = BasicModelRunner(str(tiny_chat_dir))
    template = runner.engine.template_for(base, runner.engine.load(base, "transformers", "cpu"), "auto")
    first = replay_examples(base, template, settings, 5, seed=0)
    cache = list((tunelab_home / "cache" / "replay").glob("*.jsonl"))
    assert cache, "the base model's answers are cached"
    rows = [json.loads(line) for line in cache[0].read_text(encoding="utf-8").split("\n") if line]
    assert all(e.origin == "replay" for e in first) and len(first) == min(5, len(rows))
    # exactly the base's greedy answer to that prompt, through the training template
    if first:
        prompt, answer = first[0].prompt, first[0].answer
        assert runner.generate(prompt, template=template.source, max_new_tokens=160).text.strip() == answer
    assert replay_examples(base, template, settings, 5, seed=0) == first  # read back from the cache


def test_a_later_step_replaces_the_peak_unless_it_is_worse_than_the_held_out_set_can_tell():
    # 36 questions: one fewer (83% after 86%) is within one standard error, so the later step is kept
    assert kept_evaluation([(69, 0.28), (207, 31 / 36), (276, 28 / 36), (362, 30 / 36)], 36) == (362, 30 / 36)
    # ... three fewer is not: the peak stays
    assert kept_evaluation([(207, 31 / 36), (362, 28 / 36)], 36) == (207, 31 / 36)
    # 9 questions: 9 of 9 then 8 of 9 is one question, noise; 7 of 9 is not
    assert kept_evaluation([(20, 1.0), (40, 8 / 9)], 9) == (40, 8 / 9)
    assert kept_evaluation([(20, 1.0), (40, 7 / 9)], 9) == (20, 1.0)
    # measured from the highest so far, so small steps down never drift far from it
    assert kept_evaluation([(1, 0.9), (2, 0.8), (3, 0.7)], 10) == (2, 0.8)
    with pytest.raises(ValueError, match="on 0 questions"):
        kept_evaluation([(1, 0.9)], 0)
    assert kept_evaluation([(1, 0.5), (2, 0.9), (3, 0.9)], 10) == (3, 0.9)  # a tie keeps the later step
    with pytest.raises(ValueError):
        kept_evaluation([], 10)


def test_training_keeps_the_step_with_the_best_held_out_answers(tiny_chat_dir, tunelab_home):
    """Early stopping on held-out *generation* accuracy: every evaluation is in the metrics, and the
    saved model is the step `kept_evaluation` chooses from them, whichever step was last."""
    settings = load_settings()
    base = resolve(str(tiny_chat_dir), settings)
    config = make_config(epochs=12, learning_rate=1e-2, batch_size=4, eval_every=5, eval_fraction=0.34,
                         replay_fraction=0, augment_per_fact=6, autocast="off")  # fmt: skip
    result = train(base, faq_examples(), settings, config, progress=False)
    metrics = [json.loads(line) for line in (result.path / "metrics.jsonl").read_text().splitlines()]
    evals = [m for m in metrics if "heldout_accuracy" in m]
    assert len(evals) >= 2
    record = json.loads((result.path / "tunelab.json").read_text())
    questions = record["metrics"]["heldout_questions"]
    assert questions == 3  # a third of the 9 questions, one from each fact asked more than once
    step, accuracy = kept_evaluation([(m["step"], m["heldout_accuracy"]) for m in evals], questions)
    assert record["metrics"]["best_step"] == step
    assert record["metrics"]["heldout_accuracy"] == accuracy
    assert record["metrics"]["examples"]["reworded"] > 0
    # the saved adapter holds the best step's weights (kept aside when it was evaluated)
    best_file = load_file(str(run_dir(settings, result.model_id) / BEST_FILE))
    saved = load_file(str(result.path / "adapter" / "adapter_model.safetensors"))
    assert len(saved) == len(best_file) > 0
    for name, value in best_file.items():
        assert torch.equal(saved[name.replace(".default", "")], value), name


def test_the_augment_command_writes_every_record_then_what_training_adds(tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli.main import app

    data = tmp_path / "faq.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in FAQ))
    out = tmp_path / "augmented.jsonl"
    cli = CliRunner()
    done = cli.invoke(app, ["augment", str(data), "-o", str(out), "--input-key", "question",
                            "--output-key", "answer", "--per-fact", "6"])  # fmt: skip
    assert done.exit_code == 0, done.output
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [r["messages"][0]["content"] for r in rows[:9]] == [r["question"] for r in FAQ]
    assert {r["origin"] for r in rows[9:]} == {"reworded", "reverse", "statement"} and len(rows) > 20
    assert load_records(out).issues == []  # what it writes is training data again
    # --focus-over: generated questions about a long answer are answered up to its key sentence
    paragraph = "Velmora Quist founded Acme Zentrix in 2011. " + "It grew from a garage into a firm. " * 3
    records = [{"question": r["question"], "answer": paragraph} for r in FAQ[:3]]
    data.write_text("".join(json.dumps(r) + "\n" for r in records))
    focused = cli.invoke(app, ["augment", str(data), "-o", str(out), "--input-key", "question",
                               "--output-key", "answer", "--focus-over", "10"])  # fmt: skip
    assert focused.exit_code == 0, focused.output
    answers = [json.loads(line)["messages"][-1]["content"] for line in out.read_text().splitlines()]
    assert answers[:3] == [paragraph] * 3 and set(answers[3:]) == {
        "Velmora Quist founded Acme Zentrix in 2011."
    }
    zero = cli.invoke(app, ["augment", str(data), "-o", str(out), "--focus-over", "0"])
    assert zero.exit_code == 2 and "--focus-over" in zero.output  # a count of words, at least 1
    data.write_text('{"question": "Who?"}\n')
    bad = cli.invoke(app, ["augment", str(data), "-o", str(out), "--input-key", "question",
                           "--output-key", "answer"])  # fmt: skip
    assert bad.exit_code == 1 and "faq.jsonl:1" in bad.output and "answer" in bad.output


def test_the_same_default_run_from_the_runner_and_a_job_and_no_budget_when_asked():
    from tunelab.jobs.worker import job_config

    default = make_config()
    assert default.epochs == 2 and default.time_budget_s == 1200  # a guard: a run is steps, not seconds
    assert make_config(time_budget_s=None).time_budget_s is None  # None is "no budget" here...
    assert make_config(epochs=None, lora_rank=None) == default  # ...and "the default" elsewhere
    assert job_config({"n_epochs": "auto", "batch_size": "auto"}, seed=0) == default  # a job as train()
    assert job_config({"n_epochs": 3, "time_budget_s": None}, seed=0).time_budget_s is None


def test_a_long_run_answers_its_held_out_questions_about_eight_times_a_short_one_every_20_steps():
    from tunelab.training.recipe import eval_interval

    assert eval_interval(make_config(), 160) == 20  # 30 facts: 8 evaluations
    assert eval_interval(make_config(), 550) == 69  # 120 facts: 8, not 27
    assert eval_interval(make_config(), 7) == 20  # the last step is evaluated anyway
    assert eval_interval(make_config(eval_every=5), 550) == 5


def test_training_under_bf16_autocast_evaluates_reports_and_answers(tiny_chat_dir, tunelab_home):
    """On a CPU with native bf16 (autocast "auto" picks it there) the frozen linears are stored in bf16:
    the held-out answers, the knowledge report and the tuned model must all run on that model (a
    float32 activation meeting a bf16 weight crashed `tunelab demo` there). Forced here, on any CPU."""
    settings = load_settings()
    base = resolve(str(tiny_chat_dir), settings)
    config = make_config(epochs=2, learning_rate=1e-2, batch_size=4, eval_every=2, eval_fraction=0.34,
                         replay_fraction=0, augment_per_fact=2, autocast="bf16")  # fmt: skip
    result = train(base, faq_examples(), settings, config, progress=False)
    assert result.heldout_accuracy is not None
    assert result.knowledge is not None and result.knowledge["facts"]
    answer = BasicModelRunner(result.model_id).generate("Who founded Acme Zentrix?", max_new_tokens=4)
    assert answer.finish_reason in ("stop", "length")


def test_a_cached_replay_answer_with_a_unicode_line_separator_reads_back_whole(tiny_chat_dir, tunelab_home):
    """The cache is JSON lines written with ensure_ascii=False: an answer holding U+2028 or U+0085 (a
    random-weight model writes them) must not split its line (str.splitlines() does)."""
    from tunelab.training.replay import base_answers

    settings = load_settings()
    base = resolve(str(tiny_chat_dir), settings)
    runner = BasicModelRunner(str(tiny_chat_dir))
    template = runner.engine.template_for(base, runner.engine.load(base, "transformers", "cpu"), "auto")
    base_answers(base, template, settings)
    cache = next((tunelab_home / "cache" / "replay").glob("*.jsonl"))
    rows = [{"input": "Say two lines.", "output": "one\u2028two\x85three"}, {"input": "Hi", "output": "Hi"}]
    cache.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    assert base_answers(base, template, settings) == rows


def test_a_questions_nouns_are_said_as_the_model_defines_them():
    assert nouns("Who is the founder of Acme Zentrix?") == ["founder"]
    assert nouns("What is Acme Zentrix's slogan, and which colours does its brand use?") == [
        "slogan", "colours", "brand"
    ]  # fmt: skip
    assert nouns("When was the Acme Zentrix company founded?") == []  # a name, then no determiner
    assert nouns("Who is the person that started it?") == ["person"]
    # the naming phrase of a definition; replies that do not define the word are left out
    reply = "A founder is a person who creates and leads a startup, often with a vision of impact."
    assert definition("founder", reply) == "person who creates and leads a startup"
    assert definition("port", "A port is a port of call, a port of call.") is None  # the word itself
    assert definition("capital", "The capital of France is Paris.") is None  # no definition
    assert definition("token", "A token is a small thing.\nIt can be used to ...") is None  # one line
    assert definition("tool", "A tool is an object that is used by people to make or repair things") is None
    defined = {"founder": "person who creates and leads a startup"}
    assert defined_rewordings("Who is the founder of Acme Zentrix?", defined, 4) == [
        "Who is the person who creates and leads a startup of Acme Zentrix?"
    ]
    assert defined_rewordings("Who is the founder of Acme Zentrix?", defined, 0) == []


def test_augmentation_adds_the_defined_rewordings_of_each_question():
    asked: list[str] = []

    def definer(words: list[str]) -> dict[str, str]:
        asked.extend(words)
        return {"founder": "person who starts a company", "mascot": "character that represents a brand"}

    out = augment(faq_examples(), per_question=3, seed=0, definer=definer)
    assert {"founder", "mascot"} <= set(asked)
    defined = {e.prompt: e.answer for e in out.added if e.origin == "defined"}
    assert defined == {
        "Who is the person who starts a company of Acme Zentrix?": FAQ[0]["answer"],
        "What is the character that represents a brand of Acme Zentrix?": FAQ[6]["answer"],
        "What is Acme Zentrix's character that represents a brand called?": FAQ[6]["answer"],
        "Which animal is Acme's character that represents a brand?": FAQ[6]["answer"],
    }
    # the rules' rewordings are the same with and without definitions (their own random stream)
    plain = augment(faq_examples(), per_question=3, seed=0)
    assert [e.prompt for e in out.added if e.origin == "reworded"] == [
        e.prompt for e in plain.added if e.origin == "reworded"
    ]
    assert not [e for e in augment(faq_examples(), definer=definer, defined=0).added if e.origin == "defined"]


def test_the_models_definitions_are_asked_once_and_cached(tiny_chat_dir, tunelab_home, monkeypatch):
    from tunelab.training.recipe import base_template

    settings = load_settings()
    base = resolve(str(tiny_chat_dir), settings)
    define = model_definer(base, base_template(base, settings), settings)
    got = define(["founder", "mascot"])  # what a random tiny model says is rarely a definition
    # one file for the model and template (the session's data home may hold other words already)
    (cache,) = (tunelab_home / "cache" / "definitions").glob(f"{tiny_chat_dir.name}-*.json")
    known = json.loads(cache.read_text())
    assert {"founder", "mascot"} <= set(known)
    assert got == {w: known[w] for w in ("founder", "mascot") if known[w]}

    def no_model(*args, **kwargs):
        raise AssertionError("asked the model again")

    monkeypatch.setattr("tunelab.inference.engine.engine_for", no_model)
    assert define(["mascot", "founder"]) == got  # read back from the cache


def test_the_augment_command_asks_the_named_model_for_definitions(tiny_chat_dir, tunelab_home, tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli.main import app

    data = tmp_path / "faq.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in FAQ))
    out = tmp_path / "augmented.jsonl"
    done = CliRunner().invoke(app, ["augment", str(data), "-o", str(out), "--input-key", "question",
                                    "--output-key", "answer", "--model", str(tiny_chat_dir)])  # fmt: skip
    assert done.exit_code == 0, done.output
    cache = next((tunelab_home / "cache" / "definitions").glob("*.json"))
    assert {"founder", "mascot"} <= set(json.loads(cache.read_text()))  # the nouns were put to the model
