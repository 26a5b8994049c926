"""JSON-schema constrained decoding for the backends that sample in tunelab.

- transformers: llguidance (a token mask per step from an Earley parser over the tokenizer's vocabulary;
  chosen over xgrammar, outlines-core and lm-format-enforcer, see benchmarks/RESULTS.md), as a
  `LogitsProcessor` with one matcher per row of the batch.
- llama_cpp: the same llguidance grammar over llama.cpp's vocabulary, so both backends allow the same
  tokens (it replaced llama.cpp's own GBNF sampler and its workarounds; the cost per token is the same).

Both refuse a schema they cannot compile with a TypedOutputError naming the reason.
"""

from __future__ import annotations

import json
import warnings

import numpy as np

from tunelab.errors import TypedOutputError

# -- llguidance (both backends) ----------------------------------------------------------------------


LAYOUT = {"whitespace_flexible": False, "item_separator": ", ", "key_separator": ": "}


def llg_grammar(schema_json: str, *, after_marker: bool = False) -> str:
    """The llguidance grammar for a JSON schema: `{"a": 1, "b": 2}` spacing, as models have seen it
    most, and no other whitespace, so an answer cannot loop on blank lines until the limit.

    `after_marker`: the grammar of what follows a marker the model wrote itself (`json_after`): up to 4
    spaces or newlines (a model writes the marker and a line break), then the JSON."""
    import llguidance

    try:
        if after_marker:
            lark = f"start: /[ \\t\\r\\n]{{0,4}}/ value\nvalue: %json {json.dumps(laid_out(schema_json))}"
            grammar = llguidance.LLMatcher.grammar_from_lark(lark)
        else:
            grammar = llguidance.LLMatcher.grammar_from_json_schema(
                json.dumps(laid_out(schema_json)), defaults=LAYOUT
            )
    except (ValueError, RuntimeError) as exc:
        raise TypedOutputError(f"the JSON schema cannot be used for constrained decoding: {exc}") from None
    is_error, messages = llguidance.LLMatcher.validate_grammar_with_warnings(grammar)
    if is_error:
        raise TypedOutputError(
            f"the JSON schema cannot be used for constrained decoding: {'; '.join(messages)}"
        )
    return grammar


def laid_out(schema_json: str):
    """The schema as tunelab constrains it: closed objects (`_closed_objects`) and tunelab's JSON layout
    in llguidance's `x-guidance` key, which overrides any caller's defaults (vLLM's guidance backend
    compiles it the same way as tunelab's own backends)."""
    closed = _closed_objects(json.loads(schema_json))
    return {**closed, "x-guidance": LAYOUT} if isinstance(closed, dict) else closed


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


def _closed_objects(node):
    """An object with `properties` and no word on others takes no others (`additionalProperties:
    false`), as vLLM's xgrammar does in its strict mode and llama.cpp's converter did: a small model
    otherwise goes on inventing keys after the asked ones. A schema that allows others says so."""
    if isinstance(node, list):
        return [_closed_objects(item) for item in node]
    if not isinstance(node, dict):
        return node
    node = {key: _closed_objects(value) for key, value in node.items()}
    if isinstance(node.get("properties"), dict) and "additionalProperties" not in node:
        node["additionalProperties"] = False
    return node


_TOKENIZERS: dict[tuple, object] = {}


def llg_tokenizer(hf_tokenizer, vocab_size: int, eos_ids: list[int]):
    """The llguidance view of a tokenizer (about a second to build; cached per tokenizer)."""
    import llguidance.hf

    key = (id(hf_tokenizer), vocab_size, tuple(eos_ids))
    if key not in _TOKENIZERS:
        _TOKENIZERS[key] = llguidance.hf.from_tokenizer(hf_tokenizer, n_vocab=vocab_size, eos_token=eos_ids)
    return _TOKENIZERS[key]


# -- llguidance on llama.cpp's vocabulary (llama_cpp) ------------------------------------------------


def llg_llama_tokenizer(vocab, n_vocab: int):
    """The llguidance view of a llama.cpp vocabulary (about a second to build: cache it per model);
    every end-of-generation token (EOS, EOT, ChatML's <|im_end|>) may end a finished answer."""
    import llama_cpp
    import llguidance.llamacpp

    ends = [t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)]
    with warnings.catch_warnings():  # it reads each token with a call llama-cpp-python marks deprecated
        warnings.simplefilter("ignore", DeprecationWarning)
        return llguidance.llamacpp.lltokenizer_from_vocab(vocab, n_vocab=n_vocab, eos_token=ends or None)


class LlgGrammar:
    """One sequence's JSON constraint on llama_cpp: mask its logits, then accept the chosen token. The
    same llguidance grammar as on transformers (`llg_grammar`), so both backends allow the same JSON."""

    def __init__(self, tokenizer, grammar: str, n_vocab: int):
        import llguidance
        import llguidance.numpy

        self._llg = llguidance.numpy
        self.matcher = llguidance.LLMatcher(tokenizer, grammar, log_level=0)
        if self.matcher.is_error():
            raise TypedOutputError(f"the JSON schema cannot be used: {self.matcher.get_error()}")
        self.bitmask = llguidance.numpy.allocate_token_bitmask(1, n_vocab)

    def mask(self, logits: np.ndarray) -> np.ndarray:
        """`logits` with every token the grammar does not allow next at -inf (all of them once the
        grammar has failed: the caller ends that answer with an error)."""
        if self.matcher.is_error():
            return np.full(len(logits), -np.inf, dtype=np.float32)
        self._llg.fill_next_token_bitmask(self.matcher, self.bitmask, 0)
        # bit t of the mask (little-endian words) allows token t: unpacked in one pass, where
        # llguidance's numpy helper expands every bit with repeat/tile/shift (~10x slower here)
        allowed = np.unpackbits(self.bitmask[0].view(np.uint8), bitorder="little")[: len(logits)]
        return np.where(allowed.astype(bool), np.asarray(logits, dtype=np.float32), np.float32(-np.inf))

    def allows(self, token: int) -> bool:
        """Whether the grammar takes `token` next (without taking it)."""
        return not self.matcher.is_error() and self.matcher.validate_tokens([token]) == 1

    def accept(self, token: int) -> None:
        self.matcher.consume_token(token)

    def complete(self) -> bool:
        """Whether the JSON is done: the grammar allows only an end-of-generation token next."""
        return self.matcher.is_stopped() and not self.matcher.is_error()

    def close(self) -> None:
        """Nothing to free by hand (llguidance's matcher goes with its last reference)."""
