"""Typed output on the two embedded models, both backends: 50 varied prompts, a 3-field schema, 50
valid objects (slow: `make test-slow`)."""

from __future__ import annotations

import jsonschema
import pytest

from tunelab import BasicModelRunner

pytestmark = pytest.mark.slow

SCHEMA = {
    "type": "object",
    "properties": {
        "answer": {"type": "string", "maxLength": 120, "description": "a short answer"},
        "confidence": {"type": "integer", "minimum": 0, "maximum": 10, "description": "0 to 10"},
        "about_science": {"type": "boolean", "description": "is the question about science"},
    },
    "required": ["answer", "confidence", "about_science"],
    "additionalProperties": False,
}

_TOPICS = [
    "Mars",
    "the moon",
    "volcanoes",
    "photosynthesis",
    "the French revolution",
    "chess openings",
    "baking bread",
    "training a dog to sit",
    "the boss of Twitter",
    "black holes",
    "jazz music",
    "the price of eggs",
    "learning Python",
    "the water cycle",
    "a blanket that never arrived",
    "the Roman empire",
    "electric cars",
    "sleep",
    "coffee",
    "the Pythagorean theorem",
    "whales",
    "tax returns",
    "the Eiffel tower",
    "vaccines",
    "knitting",
]
_FORMS = ["What do you know about {}?", "Tell me one fact about {}."]
PROMPTS50 = [form.format(topic) for topic in _TOPICS for form in _FORMS]
assert len(PROMPTS50) == 50 and len(set(PROMPTS50)) == 50


@pytest.mark.parametrize("backend", ["llama_cpp", "transformers"])
@pytest.mark.parametrize("model", ["smollm2-135m-instruct", "gemma-3-270m"])
def test_fifty_prompts_give_fifty_valid_objects(model, backend):
    runner = BasicModelRunner(model, backend=backend)
    # room for the longest answer the schema allows (120 characters can be 120 tokens, + the JSON)
    records = runner.generate(PROMPTS50, output_type=SCHEMA, max_new_tokens=192)
    failed = [(c.prompt, c.error) for c in records if c.error]
    assert not failed, failed[:3]
    for record in records:
        jsonschema.validate(record.parsed, SCHEMA)
        assert record.finish_reason == "stop"
    assert len({r.parsed["answer"] for r in records}) > 10  # real answers to different prompts, not one
