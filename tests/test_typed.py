"""Typed output on tiny random-weight models: the answer is JSON of the schema by construction (llguidance
on transformers, llama.cpp's grammar on llama_cpp), validated into an object; bad schemas and answers the
token limit cuts short are clear errors, never half objects."""

from __future__ import annotations

import json

import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.remote_server import RunningServer
from tests.tiny_gguf import make_tiny_gguf
from tunelab import BasicModelRunner, BatchError, LLMEngine, TypedOutputError
from tunelab.config import Settings
from tunelab.errors import GenerationOptionError
from tunelab.inference.typed import output_spec
from tunelab.server.service import Service
from tunelab.store.db import Store

# Short by construction (a boolean and an enum), so even a random model completes it in a few tokens.
SMALL = {
    "type": "object",
    "properties": {"ok": {"type": "boolean"}, "colour": {"enum": ["red", "green", "blue"]}},
    "required": ["ok", "colour"],
    "additionalProperties": False,
}
PROMPTS = ["Tell me how to train my dog to sit", "What do you think of Mars?", "Hi"]


class Verdict(BaseModel):
    ok: bool = Field(description="whether it holds")
    level: int = Field(ge=0, le=9, description="how much, 0 to 9")


@pytest.fixture(scope="module")
def tiny_gguf(tiny_chat_dir, tmp_path_factory):
    return make_tiny_gguf(tmp_path_factory.mktemp("typed-gguf") / "tiny.gguf", hf_dir=tiny_chat_dir)


@pytest.fixture(params=["transformers", "llama_cpp"])
def runner(request, tiny_chat_dir, tiny_gguf):
    name = str(tiny_chat_dir) if request.param == "transformers" else str(tiny_gguf)
    return BasicModelRunner(name, backend=request.param, max_new_tokens=40)


def test_the_spellings_of_output_type():
    lamini = output_spec({"answer": "str", "confidence": "float", "tags": "list[str]"})
    assert lamini.schema["properties"]["confidence"]["type"] == "number"
    assert lamini.schema["properties"]["tags"] == {
        "items": {"type": "string"},
        "title": "Tags",
        "type": "array",
    }
    assert lamini.schema["required"] == ["answer", "confidence", "tags"]
    assert lamini.schema["additionalProperties"] is False
    older = output_spec({"Answer#bool": "is it true", "Score#int": "how sure"})
    assert older.schema["properties"]["Answer"]["type"] == "boolean"
    assert '"Answer" (bool: is it true)' in older.instruction()
    assert output_spec(Verdict).returns_instance and "how much, 0 to 9" in output_spec(Verdict).instruction()
    assert output_spec(SMALL).schema == SMALL and output_spec(SMALL).model is None


@pytest.mark.parametrize(
    "bad, says",
    [
        ({"when": "date"}, "field 'when': unsupported type 'date'"),
        ({"Answer#decimal": "x"}, "field 'Answer': unsupported type 'decimal'"),
        ({}, "output_type must be"),
        ("str", "output_type must be"),
        ({"type": "objekt"}, "not a valid JSON schema"),
        (
            {
                "type": "object",
                "properties": {"a": {"type": "string", "minLength": 5, "maxLength": 2}},
                "required": ["a"],
            },
            "unsatisfiable",
        ),
    ],
)
def test_bad_output_types_are_refused_before_anything_runs(bad, says):
    with pytest.raises(TypedOutputError, match=says):
        output_spec(bad)


def test_answers_are_valid_objects_on_both_backends(runner):
    one = runner("Is the sky blue?", output_type=SMALL)
    jsonschema.validate(one, SMALL)
    many = runner(PROMPTS, output_type=SMALL)
    assert len(many) == len(PROMPTS)
    for value in many:
        jsonschema.validate(value, SMALL)
    # the records keep the raw JSON text beside the object
    record = runner.generate("Hi", output_type=SMALL)
    assert json.loads(record.text) == record.parsed and record.finish_reason == "stop"


def test_a_pydantic_output_type_gives_instances(runner):
    value = runner("Is Mars red?", output_type=Verdict)
    assert isinstance(value, Verdict) and 0 <= value.level <= 9


def test_an_answer_the_token_limit_cuts_is_an_error_not_half_an_object(runner):
    # a free string: a random model never closes it within 6 tokens
    with pytest.raises(TypedOutputError, match="max_new_tokens=6"):
        runner("Hi", output_type={"answer": "str"}, max_new_tokens=6)
    with pytest.raises(BatchError) as caught:
        runner(PROMPTS, output_type={"answer": "str"}, max_new_tokens=6)
    assert all(c.parsed is None and "token limit" in c.error for c in caught.value.completions)


def test_a_schema_that_can_never_end_stops_at_the_limit_with_an_error(runner):
    endless = {
        "type": "object",
        "properties": {"child": {"$ref": "#/$defs/node"}},
        "required": ["child"],
        "$defs": {
            "node": {
                "type": "object",
                "properties": {"child": {"$ref": "#/$defs/node"}},
                "required": ["child"],
            }
        },
    }
    records = runner.generate(["Hi"], output_type=endless, max_new_tokens=30)
    assert records[0].parsed is None and records[0].error  # a limit or a parser limit, said plainly


def test_llm_engine_takes_typed_input_and_output(tiny_chat_dir):
    class Question(BaseModel):
        question: str = Field(description="what the customer asks")

    engine = LLMEngine(id="typed", model_name=str(tiny_chat_dir), backend="transformers", max_new_tokens=40)
    value = engine(input=Question(question="Where is my blanket?"), output_type=Verdict)
    assert isinstance(value, Verdict)
    record = engine.generate(
        "question (what the customer asks): Where is my blanket?", output_type=Verdict, max_new_tokens=40
    )
    assert record.parsed == value  # the input's fields and descriptions made that prompt
    values = engine(input=[{"question": "a"}, {"question": "b"}], output_type={"ok": "bool"})
    assert [set(v) for v in values] == [{"ok"}, {"ok"}]


def test_response_format_on_the_server(tunelab_home, tiny_chat_dir, tmp_path):
    # float32: the random tiny model's free json_object answer closes within its 256-token context
    # there (in bf16 its keys run on); the schema cases hold in either.
    settings = Settings(home=tunelab_home, dtype="float32")
    store = Store.open(settings, f"sqlite:///{tmp_path / 'db.sqlite'}")
    key = store.create_key("tess")[1]
    service = Service(settings, store, extra_models=[str(tiny_chat_dir)], backend="transformers")
    with RunningServer(service) as running:
        sdk = openai.OpenAI(base_url=running.url + "/v1", api_key=key, max_retries=0)
        messages = [{"role": "user", "content": "Is the sky blue? Answer in JSON."}]
        out = sdk.chat.completions.create(
            model=str(tiny_chat_dir),
            messages=messages,
            max_tokens=40,
            temperature=0,
            response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": SMALL}},
        )
        assert out.choices[0].finish_reason == "stop"
        jsonschema.validate(json.loads(out.choices[0].message.content), SMALL)
        streamed = sdk.chat.completions.create(
            model=str(tiny_chat_dir),
            messages=messages,
            max_tokens=40,
            temperature=0,
            stream=True,
            response_format={"type": "json_schema", "json_schema": {"name": "verdict", "schema": SMALL}},
        )
        text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
        assert text == out.choices[0].message.content
        for bad, says in (
            ({"type": "xml"}, "response_format.type"),
            ({"type": "json_schema", "json_schema": {"name": "x"}}, "schema must be"),
            (
                {"type": "json_schema", "json_schema": {"name": "x", "schema": {"type": "objekt"}}},
                "JSON schema",
            ),
        ):
            with pytest.raises(openai.BadRequestError, match=says):
                sdk.chat.completions.create(
                    model=str(tiny_chat_dir), messages=messages, max_tokens=5, response_format=bad
                )
        # json_object: any one object (its keys are free text, so give it room to close them)
        loose = sdk.chat.completions.create(
            model=str(tiny_chat_dir),
            messages=messages,
            max_tokens=150,
            temperature=0,
            response_format={"type": "json_object"},
        )
        assert loose.choices[0].finish_reason == "stop"
        assert isinstance(json.loads(loose.choices[0].message.content), dict)


def test_both_backends_allow_the_same_tokens_at_every_point_of_an_answer(tiny_gguf, tiny_chat_dir):
    """One llguidance grammar on both: over the GGUF's vocabulary (llama_cpp) and over the HF
    tokenizer (transformers) the masks are the same, so constrained answers differ only by logits."""
    import llguidance
    import llguidance.numpy
    import numpy as np
    from transformers import AutoTokenizer

    from tunelab.inference.backends.json_constraint import LlgGrammar, llg_grammar, llg_tokenizer
    from tunelab.inference.backends.llama_cpp_backend import LlamaCppBackend

    grammar_text = llg_grammar(json.dumps(SMALL))
    hf = AutoTokenizer.from_pretrained(tiny_chat_dir)
    with LlamaCppBackend(tiny_gguf) as backend:
        n = backend.n_vocab
        on_llama = LlgGrammar(backend._llg_tokenizer(), grammar_text, n)
        on_hf = llguidance.LLMatcher(llg_tokenizer(hf, n, [hf.eos_token_id]), grammar_text)
        bitmask = llguidance.numpy.allocate_token_bitmask(1, n)
        for token in backend.tokenize('{"ok": true, "colour": "red"}', add_bos=False):
            llama_allowed = np.isfinite(on_llama.mask(np.zeros(n, dtype=np.float32)))
            hf_logits = np.zeros((1, n), dtype=np.float32)
            llguidance.numpy.fill_next_token_bitmask(on_hf, bitmask, 0)
            llguidance.numpy.apply_token_bitmask_inplace(hf_logits, bitmask)
            assert llama_allowed.any() and llama_allowed[token]
            assert (llama_allowed == np.isfinite(hf_logits[0])).all()
            on_llama.accept(token)
            on_hf.consume_token(token)


def test_a_model_tuned_on_typed_outputs_answers_in_that_schema(tiny_chat_dir):
    runner = BasicModelRunner(str(tiny_chat_dir), backend="transformers", max_new_tokens=40)
    rows = [{"input": f"Is lamp {i} on?", "output": {"ok": i % 2 == 0, "colour": "red"}} for i in range(8)]
    runner.load_data(rows)
    assert json.loads(runner.data[0].answer) == {"ok": True, "colour": "red"}  # learned as its JSON text
    result = runner.train(
        epochs=2, batch_size=4, eval_fraction=0, progress=False, augment="none", replay_fraction=0
    )
    assert runner.model_name == result.model_id
    jsonschema.validate(runner("Is lamp 3 on?", output_type=SMALL), SMALL)


def test_ask_prints_one_object_per_prompt(tiny_chat_dir, tmp_path):
    from typer.testing import CliRunner

    from tunelab.cli.main import app

    schema = tmp_path / "schema.json"
    schema.write_text(json.dumps(SMALL))
    base = ["ask", str(tiny_chat_dir), "Hi", "Is Mars red?", "--backend", "transformers", "-n", "40"]
    result = CliRunner().invoke(app, [*base, "--output-type", f"@{schema}"])
    assert result.exit_code == 0, result.output
    objects = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    assert len(objects) == 2
    for value in objects:
        jsonschema.validate(value, SMALL)
    refused = CliRunner().invoke(app, [*base, "--output-type", '{"when": "date"}'])
    assert refused.exit_code == 1 and "unsupported type 'date'" in refused.output
    assert "Traceback" not in refused.output


def test_llama_cpp_strings_take_no_raw_control_characters(tiny_gguf):
    # a raw newline in a JSON string is refused by json.loads (llama-cpp-python's GBNF let one in)
    import numpy as np

    from tunelab.inference.backends.json_constraint import LlgGrammar, llg_grammar
    from tunelab.inference.backends.llama_cpp_backend import LlamaCppBackend

    with LlamaCppBackend(tiny_gguf) as backend:
        schema = llg_grammar(json.dumps(output_spec({"a": "str"}).schema))
        grammar = LlgGrammar(backend._llg_tokenizer(), schema, backend.n_vocab)
        for token in backend.tokenize('{"a": "x', add_bos=False):
            grammar.accept(token)
        newline, letter = (backend.tokenize(t, add_bos=False) for t in ("\n", "y"))
        allowed = np.isfinite(grammar.mask(np.zeros(backend.n_vocab, dtype=np.float32)))
        assert len(newline) == 1 and not allowed[newline[0]]
        assert allowed[letter[0]] and allowed.sum() > 10
        grammar.close()


def test_an_object_with_properties_takes_no_other_keys_unless_its_schema_allows_them(tiny_gguf):
    # llguidance follows JSON Schema (others allowed when unsaid); tunelab closes such objects, as vLLM's
    # strict mode and llama.cpp's converter do: SmolLM2 invented keys after the asked one without it
    import numpy as np

    from tunelab.inference.backends.json_constraint import LlgGrammar, llg_grammar
    from tunelab.inference.backends.llama_cpp_backend import LlamaCppBackend

    schema = {"type": "object", "properties": {"a": {"type": "string"}}, "required": ["a"]}
    with LlamaCppBackend(tiny_gguf) as backend:
        comma = backend.tokenize(",", add_bos=False)
        for extra, comma_allowed in ((None, False), (True, True)):
            asked = schema if extra is None else {**schema, "additionalProperties": extra}
            grammar = LlgGrammar(backend._llg_tokenizer(), llg_grammar(json.dumps(asked)), backend.n_vocab)
            for token in backend.tokenize('{"a": "x"', add_bos=False):
                grammar.accept(token)
            allowed = np.isfinite(grammar.mask(np.zeros(backend.n_vocab, dtype=np.float32)))
            assert len(comma) == 1 and bool(allowed[comma[0]]) is comma_allowed, extra


def test_json_after_frees_the_text_before_the_marker_and_constrains_what_follows(tiny_gguf):
    # tool_choice "auto" in one pass on llama_cpp: a random model's greedy answer begins the same with
    # or without json_after (the text before the marker is free); the marker is its first characters,
    # so the rest must be the schema's JSON, in a typed answer's layout. A marker that ends inside a
    # token: the token's refused rest is dropped and the answer goes on from the marker
    from tunelab.inference.backends.llama_cpp_backend import LlamaCppBackend
    from tunelab.inference.options import GenerationOptions

    with LlamaCppBackend(tiny_gguf) as backend:
        (free,) = backend.generate(["Hi"], GenerationOptions(max_new_tokens=12, logprobs=0))
        pieces = [entry.text for entry in free.logprobs]
        cut = next(k for k in range(1, len(pieces)) if len(pieces[k]) > 1 and pieces[k][1] not in " \n")
        before = "".join(pieces[:cut])
        for marker in (before, before + pieces[cut][0]):  # ending where a token ends, inside one
            lazy = GenerationOptions(max_new_tokens=60, json_schema=json.dumps(SMALL), json_after=marker)
            (out,) = backend.generate(["Hi"], lazy)
            assert out.error is None and out.text.startswith(marker), (marker, out)
            written = out.text[len(marker) :]
            assert len(written) - len(written.lstrip()) <= 4
            jsonschema.validate(json.loads(written), SMALL)
            assert ", " in written and ": " in written and "  " not in written.strip()
        untouched = GenerationOptions(max_new_tokens=12, json_schema="{}", json_after="\x00never")
        assert backend.generate(["Hi"], untouched)[0].text == free.text  # no marker: as without it


def test_json_after_needs_a_schema():
    from tunelab.inference.options import GenerationOptions

    with pytest.raises(GenerationOptionError, match="json_after needs a json_schema"):
        GenerationOptions(json_after="<tool_call>")


def test_json_after_on_a_backend_that_cannot_start_late_is_refused(tiny_chat_dir):
    # transformers constrains from the first token: it must refuse json_after, not ignore it
    runner = BasicModelRunner(str(tiny_chat_dir), backend="transformers", max_new_tokens=8)
    with pytest.raises(GenerationOptionError, match="json_after needs the llama_cpp backend"):
        runner("Hi", json_schema=json.dumps(SMALL), json_after="<tool_call>")


def test_greedy_typed_answers_skip_the_mask_only_where_it_changes_nothing(tiny_gguf, monkeypatch):
    # greedy on llama_cpp: when the grammar allows the most likely token, the whole-vocabulary mask is
    # skipped; the answers must equal those of a run that masks every step. A free string lets a
    # random model's top token through often (skipped), the keys and the boolean seldom (masked)
    from tunelab.inference.backends.json_constraint import LlgGrammar
    from tunelab.inference.backends.llama_cpp_backend import LlamaCppBackend
    from tunelab.inference.options import GenerationOptions

    schema = {
        "type": "object",
        "properties": {"note": {"type": "string", "maxLength": 30}, "ok": {"type": "boolean"}},
        "required": ["note", "ok"],
    }
    greedy = GenerationOptions(max_new_tokens=60, json_schema=json.dumps(schema))
    checked = {True: 0, False: 0}
    allows = LlgGrammar.allows

    def counted(self, token):
        checked[allows(self, token)] += 1
        return allows(self, token)

    monkeypatch.setattr(LlgGrammar, "allows", counted)
    with LlamaCppBackend(tiny_gguf) as backend:
        skipping = [o.text for o in backend.generate(PROMPTS, greedy)]
        assert checked[True] > 5 and checked[False] > 5, checked
        always = LlamaCppBackend._constrain
        monkeypatch.setattr(
            LlamaCppBackend,
            "_constrain",
            staticmethod(lambda running, logits, argmax=False: always(running, logits)),
        )
        assert [o.text for o in backend.generate(PROMPTS, greedy)] == skipping
    for text in skipping:
        jsonschema.validate(json.loads(text), schema)


def test_a_closed_json_answer_ends_without_decoding_its_end_token(tiny_gguf, monkeypatch):
    # once the JSON is closed the grammar allows only the end token: llama_cpp stops there instead of
    # decoding one more step to sample it. Same answers as a run that decodes that step; one decode
    # per answer token (the prompt's, then one per token but the last)
    from tunelab.inference.backends.json_constraint import LlgGrammar
    from tunelab.inference.backends.llama_cpp_backend import LlamaCppBackend
    from tunelab.inference.options import GenerationOptions

    options = GenerationOptions(max_new_tokens=60, json_schema=json.dumps(SMALL))
    with LlamaCppBackend(tiny_gguf) as backend:
        decode = backend._decode
        steps = []
        monkeypatch.setattr(backend, "_decode", lambda *a, **k: steps.append(1) or decode(*a, **k))
        (early,) = backend.generate(["Hi"], options)
        assert early.finish_reason == "stop" and early.error is None
        jsonschema.validate(json.loads(early.text), SMALL)
        assert len(steps) == early.completion_tokens
        steps.clear()
        monkeypatch.setattr(LlgGrammar, "complete", lambda self: False)
        (decoded,) = backend.generate(["Hi"], options)
        assert (decoded.text, decoded.finish_reason) == (early.text, "stop")
        assert decoded.completion_tokens == early.completion_tokens
        assert len(steps) == early.completion_tokens + 1
