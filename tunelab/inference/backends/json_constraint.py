"""JSON-schema constrained decoding for the backends that sample in tunelab.

- transformers: llguidance (a token mask per step from an Earley parser over the tokenizer's vocabulary;
  chosen over xgrammar, outlines-core and lm-format-enforcer, see benchmarks/RESULTS.md), as a
  `LogitsProcessor` with one matcher per row of the batch.
- llama_cpp: llama.cpp's own grammar sampler on the GBNF that llama-cpp-python converts the schema to.

Both refuse a schema they cannot compile with a TypedOutputError naming the reason.
"""

from __future__ import annotations

import ctypes
import json

import numpy as np

from tunelab.errors import TypedOutputError

# -- llguidance (transformers) ----------------------------------------------------------------------


def llg_grammar(schema_json: str) -> str:
    """The llguidance grammar for a JSON schema: `{"a": 1, "b": 2}` spacing, as models have seen it
    most, and no other whitespace, so an answer cannot loop on blank lines until the limit."""
    import llguidance

    layout = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_json, defaults=layout)
    except (ValueError, RuntimeError) as exc:
        raise TypedOutputError(f"the JSON schema cannot be used for constrained decoding: {exc}") from None
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise TypedOutputError(
            f"the JSON schema cannot be used for constrained decoding: {'; '.join(messages)}"
        )
    return grammar


class LlgLogitsProcessor:
    """transformers LogitsProcessor: every row may only continue its JSON; when the object is done,
    only an end-of-generation token is allowed, so the answer stops there. A row whose grammar fails
    (a parser limit) is ended the same way and its reason kept in `errors`."""

    def __init__(self, tokenizer, grammar: str, rows: int, vocab_size: int, end_ids: list[int]):
        import llguidance
        import llguidance.torch

        self.matchers = [llguidance.LLMatcher(tokenizer, grammar, log_level=0) for _ in range(rows)]
        for matcher in self.matchers:
            if matcher.is_error():
                raise TypedOutputError(f"the JSON schema cannot be used: {matcher.get_error()}")
        self.bitmask = llguidance.torch.allocate_token_bitmask(rows, vocab_size)
        self.end_ids = list(end_ids)
        self.errors: dict[int, str] = {}
        self.started = False

    def __call__(self, input_ids, scores):
        import llguidance.torch

        if self.started:
            for row, matcher in enumerate(self.matchers):
                if not matcher.is_stopped() and not matcher.is_error():
                    matcher.consume_token(int(input_ids[row, -1]))
        self.started = True
        ended = []
        for row, matcher in enumerate(self.matchers):
            if matcher.is_error() and row not in self.errors:
                self.errors[row] = f"constrained decoding stopped: {matcher.get_error()}"
            if matcher.is_stopped() or matcher.is_error():
                ended.append(row)
            else:
                llguidance.torch.fill_next_token_bitmask(matcher, self.bitmask, row)
        llguidance.torch.apply_token_bitmask_inplace(scores, self.bitmask.to(scores.device))
        for row in ended:  # the object is complete (or cannot go on): only the end of the answer
            end = scores[row, self.end_ids].clone()
            scores[row] = float("-inf")
            scores[row, self.end_ids] = end.clamp(min=-1e4)
        return scores


_TOKENIZERS: dict[tuple, object] = {}


def llg_tokenizer(hf_tokenizer, vocab_size: int, eos_ids: list[int]):
    """The llguidance view of a tokenizer (about a second to build; cached per tokenizer)."""
    import llguidance.hf

    key = (id(hf_tokenizer), vocab_size, tuple(eos_ids))
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size, eos_token=eos_ids)
    return _TOKENIZERS[key]


# -- llama.cpp's grammar (llama_cpp) -------------------------------------------------------------------


def gbnf_for(schema_json: str) -> str:
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    schema = json.loads(schema_json)
    ref = schema.get("$ref") if isinstance(schema, dict) else None
    if isinstance(ref, str) and ref.startswith("#/$defs/") and "properties" not in schema:
        # the converter resolves $refs below the root only: start from the referenced definition
        defs = schema.get("$defs", {})
        target = defs.get(ref.removeprefix("#/$defs/"))
        if isinstance(target, dict):
            schema = {**target, "$defs": defs}
    order = _property_order(schema)  # the schema's order, not a-z (the converter's default)
    try:
        gbnf = json_schema_to_gbnf(json.dumps(_bounded_integers(schema)), prop_order=order)
    except Exception as exc:  # the converter raises plain exceptions (ValueError, KeyError, ...)
        raise TypedOutputError(
            f"llama.cpp cannot turn this JSON schema into a grammar: {type(exc).__name__}: {exc}"
        ) from None
    # llama-cpp-python's string character rule lets raw control characters (a newline) into a JSON
    # string, which no JSON parser takes; llama.cpp's own converter excludes them, as here. The rule
    # names the code points a JSON string may hold rather than those it may not: llama.cpp's grammar
    # decodes UTF-8 without checking, so bytes such as F6 99 82 82 passed as one "character" (beyond
    # U+10FFFF) and became four U+FFFD in the text, over a string's maxLength.
    return gbnf.replace(_LOOSE_CHAR, _JSON_CHAR)


def _property_order(schema) -> list[str]:
    """Every property name in the order the schema first lists it, nested objects included (a tool
    call's `name` before its `arguments`, and each tool's arguments in their schema's order)."""
    order: dict[str, None] = {}

    def walk(node) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("properties"), dict):
                order.update(dict.fromkeys(node["properties"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(schema)
    return list(order)


_LOOSE_CHAR = 'char ::= [^"\\\\] |'
_JSON_CHAR = r"char ::= [\x20-\x21\x23-\x5B\x5D-\x7E\u0080-\uD7FF\uE000-\U0010FFFF] |"
MAX_ENUMERATED = 256


def _bounded_integers(node):
    """llama-cpp-python's converter ignores integer bounds (it let `1000000000000000` through for a
    0..10 field): a small bounded range becomes the enum of its values, which it does enforce."""
    if isinstance(node, list):
        return [_bounded_integers(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _bounded_integers(value) for key, value in node.items()}
    low, high = node.get("minimum"), node.get("maximum")
    if node.get("type") == "integer" and isinstance(low, int) and isinstance(high, int):
        low += bool(node.get("exclusiveMinimum") is True)
        high -= bool(node.get("exclusiveMaximum") is True)
        if 0 <= high - low < MAX_ENUMERATED:
            rest = {k: v for k, v in node.items() if k not in ("type", "minimum", "maximum")}
            return {**rest, "enum": list(range(low, high + 1))}
    return node


_TOKEN_DATA = np.dtype([("id", np.int32), ("logit", np.float32), ("p", np.float32)], align=True)


class LlamaGrammar:
    """One sequence's llama.cpp grammar sampler: mask its logits, then accept the chosen token."""

    def __init__(self, vocab, gbnf: str, n_vocab: int):
        import llama_cpp

        self._llama = llama_cpp
        self.sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode(), b"root")
        if not self.sampler:
            raise TypedOutputError("llama.cpp refused the grammar made from the JSON schema")
        self.data = np.zeros(n_vocab, dtype=_TOKEN_DATA)
        self.data["id"] = np.arange(n_vocab, dtype=np.int32)
        self.array = llama_cpp.llama_token_data_array(
            data=self.data.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data)),
            size=n_vocab,
            selected=-1,
            sorted=False,
        )

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """`logits` with every token the grammar does not allow next at -inf."""
        self.data["id"] = np.arange(len(self.data), dtype=np.int32)
        self.data["logit"] = logits
        self.array.size, self.array.selected, self.array.sorted = len(self.data), -1, False
        self._llama.llama_sampler_apply(self.sampler, ctypes.byref(self.array))
        masked = np.empty_like(logits)
        masked[self.data["id"]] = self.data["logit"]  # by id, whatever order the sampler left
        return masked

    def allows(self, token: int, logit: float) -> bool:
        """Whether the grammar takes `token` next: one candidate checked, not the whole vocabulary
        (llama.cpp's own samplers try the unconstrained choice first the same way)."""
        one = np.zeros(1, dtype=_TOKEN_DATA)
        one["id"], one["logit"] = token, logit
        single = self._llama.llama_token_data_array(
            data=one.ctypes.data_as(ctypes.POINTER(self._llama.llama_token_data)),
            size=1,
            selected=-1,
            sorted=False,
        )
        self._llama.llama_sampler_apply(self.sampler, ctypes.byref(single))
        return bool(np.isfinite(one["logit"][0]))

    def accept(self, token: int) -> None:
        self._llama.llama_sampler_accept(self.sampler, token)

    def close(self) -> None:
        if self.sampler:
            self._llama.llama_sampler_free(self.sampler)
            self.sampler = None

    def __del__(self) -> None:
        self.close()
