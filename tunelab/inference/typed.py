"""Typed output: an `output_type` becomes a JSON schema that constrains decoding, and the answer is
validated into an object.

`output_type` may be
- a pydantic model class: the answer is an instance (its field descriptions guide the prompt);
- Lamini's field types, ``{"answer": "str", "confidence": "float"}`` (str, int, float, bool, and
  ``list[str]``-style lists of those), or its older ``{"Answer#bool": "description"}``: a dict;
- a JSON schema (a dict with ``type``, ``properties``, ``$ref``, ``anyOf``...): a dict, validated with
  `jsonschema`.

The backends do the constraining (llguidance on transformers, llama.cpp's own JSON-schema grammar on
llama_cpp), so the answer is JSON of that schema by construction; only a token limit that ends it
early can leave it incomplete, and that is an error, never a half object passed off as valid.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, Field, ValidationError, create_model

from tunelab.errors import TypedOutputError

LAMINI_TYPES: dict[str, type] = {
    "str": str,
    "string": str,
    "int": int,
    "integer": int,
    "float": float,
    "number": float,
    "bool": bool,
    "boolean": bool,
}
_LIST = re.compile(r"^(?:list|List)\[(\w+)\]$")
_SCHEMA_KEYS = {"type", "properties", "$ref", "$defs", "anyOf", "oneOf", "allOf", "enum", "const", "items"}


@dataclass(frozen=True)
class OutputSpec:
    """What to ask for and how to check it: the JSON schema, and the pydantic model that validates it
    (None for a plain JSON schema, which `jsonschema` validates)."""

    schema: dict[str, Any]
    model: type[BaseModel] | None
    returns_instance: bool  # a pydantic class was given: return instances, not dicts
    described: tuple[tuple[str, str, str], ...]  # (field, type, description) for the prompt

    @property
    def schema_json(self) -> str:
        return json.dumps(self.schema)  # key order kept: properties are answered in the schema's order

    def instruction(self) -> str:
        """The sentence added to the prompt so the model knows what each field is for."""
        if not self.described:
            return "Answer with one JSON object that matches this JSON schema: " + self.schema_json
        fields = "; ".join(f'"{n}" ({t}{": " + d if d else ""})' for n, t, d in self.described)
        return f"Answer with one JSON object with these fields: {fields}."

    def parse(self, text: str, finish_reason: str, max_new_tokens: int) -> BaseModel | dict:
        """The answer as an object; TypedOutputError when it is cut short or does not validate."""
        if finish_reason == "length":
            raise TypedOutputError(
                f"the token limit (max_new_tokens={max_new_tokens}) ended the answer before the JSON "
                f"object was complete ({text[:80]!r}...); raise max_new_tokens"
            )
        try:
            if self.model is not None:
                value = self.model.model_validate_json(text)
                return value if self.returns_instance else value.model_dump(by_alias=True)
            data = json.loads(text)
        except (ValidationError, ValueError) as exc:
            raise TypedOutputError(
                f"the answer is not a valid object of the schema: {exc}; answer: {text!r}"
            ) from None
        import jsonschema

        try:
            jsonschema.validate(data, self.schema)
        except jsonschema.ValidationError as exc:
            raise TypedOutputError(
                f"the answer does not match the schema: {exc.message}; answer: {text!r}"
            ) from None
        return data


def _field_type(name: str, spelled: Any) -> Any:
    if isinstance(spelled, type) and spelled in LAMINI_TYPES.values():
        return spelled
    if isinstance(spelled, str):
        listed = _LIST.match(spelled.strip())
        if listed and listed.group(1) in LAMINI_TYPES:
            return list[LAMINI_TYPES[listed.group(1)]]
        if spelled.strip() in LAMINI_TYPES:
            return LAMINI_TYPES[spelled.strip()]
    raise TypedOutputError(
        f"output_type field {name!r}: unsupported type {spelled!r}; use one of "
        f"{sorted(set(LAMINI_TYPES))} or list[...] of them, a pydantic model, or a JSON schema"
    )


def _from_lamini(spec: dict[str, Any]) -> OutputSpec:
    fields: dict[str, Any] = {}
    described = []
    for key, value in spec.items():
        if not isinstance(key, str) or not key.strip():
            raise TypedOutputError(f"output_type field names must be non-empty strings, got {key!r}")
        if "#" in key:  # Lamini's older {"Answer#bool": "description"}
            name, _, type_name = key.partition("#")
            description = value if isinstance(value, str) else ""
        else:
            name, type_name, description = key, value, ""
        python_type = _field_type(name, type_name)
        fields[name] = (python_type, Field(..., description=description or None))
        described.append((name, getattr(python_type, "__name__", str(python_type)), description))
    try:
        model = create_model("Output", **fields)
    except (TypeError, ValueError) as exc:
        raise TypedOutputError(f"output_type {spec!r}: {exc}") from None
    return OutputSpec(_closed(model.model_json_schema()), model, False, tuple(described))


def _closed(schema: dict) -> dict:
    """No extra keys: the answer holds the asked fields and nothing else."""
    if schema.get("type") == "object":
        schema = {**schema, "additionalProperties": False}
    return schema


def output_spec(output_type: Any) -> OutputSpec:
    """The OutputSpec for any accepted `output_type`; TypedOutputError names what is wrong, before
    anything is generated (an unsupported type, an invalid or unsatisfiable schema)."""
    if isinstance(output_type, OutputSpec):
        return output_type
    spec = _spec(output_type)
    from tunelab.inference.backends.json_constraint import llg_grammar

    llg_grammar(spec.schema_json)  # compiles it once: every backend then gets a schema that can work
    return spec


def _spec(output_type: Any) -> OutputSpec:
    if isinstance(output_type, type) and issubclass(output_type, BaseModel):
        described = tuple(
            (name, getattr(f.annotation, "__name__", str(f.annotation)), f.description or "")
            for name, f in output_type.model_fields.items()
        )
        return OutputSpec(_closed(output_type.model_json_schema()), output_type, True, described)
    if isinstance(output_type, dict) and output_type:
        if _SCHEMA_KEYS & set(output_type):
            return _from_json_schema(output_type)
        return _from_lamini(output_type)
    raise TypedOutputError(
        f"output_type must be a pydantic model class, a dict of field types ({{'answer': 'str'}}) or a "
        f"JSON schema, got {output_type!r}"
    )


def _from_json_schema(schema: dict) -> OutputSpec:
    import jsonschema

    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.SchemaError as exc:
        raise TypedOutputError(f"output_type is not a valid JSON schema: {exc.message}") from None
    properties = schema.get("properties") if isinstance(schema.get("properties"), dict) else {}
    described = tuple(
        (name, str(p.get("type", "any")), str(p.get("description", "")))
        for name, p in properties.items()
        if isinstance(p, dict)
    )
    return OutputSpec(schema, None, False, described)


def prompt_with_instruction(prompt: str, spec: OutputSpec) -> str:
    return f"{prompt.rstrip()}\n\n{spec.instruction()}"


def input_prompt(value: Any) -> str:
    """Lamini's `input`: a string, or a pydantic instance / dict whose fields (and their descriptions)
    become the prompt's lines."""
    if isinstance(value, str):
        return value
    if isinstance(value, BaseModel):
        lines = []
        for name, f in type(value).model_fields.items():
            label = f"{name} ({f.description})" if f.description else name
            lines.append(f"{label}: {getattr(value, name)}")
        return "\n".join(lines)
    if isinstance(value, dict):
        return "\n".join(f"{k}: {v}" for k, v in value.items())
    raise TypedOutputError(f"input must be a string, a dict or a pydantic model instance, got {value!r}")
