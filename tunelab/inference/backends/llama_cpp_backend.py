"""GGUF models through llama.cpp, batched with llama.cpp's own multi-sequence decoding.

Uses llama-cpp-python's low-level ctypes API (pinned to 0.3.36) rather than `Llama`, because
`Llama` decodes one sequence at a time and does not expose the model param `use_extra_bufts`.
"""

from __future__ import annotations

import bisect
import codecs
import ctypes
import itertools
import os
import threading
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import llama_cpp
import numpy as np

from tunelab.errors import ModelFileError
from tunelab.inference.backends.base import OnText
from tunelab.inference.backends.json_constraint import LlgGrammar, llg_grammar, llg_llama_tokenizer
from tunelab.inference.embeddings import Embedding, check_input, unit
from tunelab.inference.logprobs import TokenLogprob, first_token, logprob_rows
from tunelab.inference.options import BackendOutput, FinishReason, GenerationOptions, cut_at_stop
from tunelab.inference.sampling import sample_batch

DEFAULT_CONTEXT = 4096
# Logical batch for one llama_decode call; also the physical ubatch, so a prompt is cut into the
# same pieces whatever else is in the batch (keeps batched greedy equal to single greedy).
N_BATCH = 512
# Upper bound on the KV cache one generate() call allocates; fewer sequences run at once beyond it.
KV_BUDGET_BYTES = 2 << 30
# Slots a context has at least, so that prompts with this many different starts (system prompts, tools'
# sections of several clients taking turns) each keep theirs cached between calls.
CACHE_SLOTS = 4
# A shared start shorter than this is decoded again rather than reused from a slot holding another start.
CACHE_MIN_TOKENS = 16

# llama.cpp's CPU backend multiplies K-quant weights (Q4_K, Q6_K, ...: most of a Q4_K_M file such as
# Gemma's) by 8 or more rows at once with a tiled kernel whose sums round differently from the
# row-by-row kernel it uses below 8 rows. A prompt's greedy answer then depended on how many others
# shared its decoding step. With the tiled kernel off every row is computed as a lone row is, at
# about the same speed (benchmarks/RESULTS.md has the figures).
# ggml reads this once per process, at its first matmul; a value the user set is kept.
os.environ.setdefault("GGML_CPU_TILED_MM", "0")

_log_lock = threading.Lock()
_log_lines: list[str] = []
_verbose = False


@llama_cpp.llama_log_callback
def _on_log(level: int, text: bytes, user_data: ctypes.c_void_p) -> None:
    # Keep the recent lines so a failed load can say why, instead of spraying stderr.
    line = text.decode("utf-8", errors="replace") if text else ""
    with _log_lock:
        _log_lines.append(line)
        del _log_lines[:-50]
    if _verbose:
        os.write(2, line.encode("utf-8", errors="replace"))


_backend_ready = False


def _init_llama(verbose: bool) -> None:
    global _backend_ready, _verbose
    _verbose = verbose
    # Global in llama.cpp; replaces llama-cpp-python's own callback, which prints everything
    # unless its Python logger level was raised.
    llama_cpp.llama_log_set(_on_log, ctypes.c_void_p(0))
    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True


def _recent_errors() -> str:
    with _log_lock:
        lines = [ln.strip() for ln in _log_lines if "error" in ln.lower() or "failed" in ln.lower()]
        _log_lines.clear()
    return "; ".join(ln for ln in lines[-3:] if ln)


def default_threads() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


@dataclass
class _Seq:
    index: int  # position in the caller's prompt list
    tokens: list[int]  # prompt then generated ids: the penalties' history
    n_prompt: int
    rng: np.random.Generator
    decoder: codecs.IncrementalDecoder = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="replace")
    )
    text: str = ""
    slot: int = -1  # llama.cpp sequence id while running
    n_fed: int = 0  # tokens already in the KV cache
    n_cached: int = 0  # prompt tokens taken from a slot's kept tokens instead of decoded
    grammar: LlgGrammar | None = None  # typed output: what this sequence may write next
    marker_seen_at: int | None = None  # json_after: where the answer wrote the marker (then `grammar`)
    logprobs: list[TokenLogprob] | None = None  # the answer's tokens, when asked for
    prompt_logprobs: list[TokenLogprob] | None = None  # the prompt's tokens, when asked for

    @property
    def n_generated(self) -> int:
        return len(self.tokens) - self.n_prompt


class LlamaCppBackend:
    """A GGUF model loaded with llama.cpp; `generate` decodes all prompts together."""

    name = "llama_cpp"
    supports_logprobs = True
    lazy_json = True  # honours GenerationOptions.json_after: text, or a marker and JSON, in one pass

    def __init__(
        self,
        gguf_path: str | Path,
        *,
        n_ctx: int | None = None,
        n_threads: int | None = None,
        max_batch: int = 32,
        use_extra_bufts: bool = False,
        n_gpu_layers: int | None = None,
        verbose: bool = False,
    ) -> None:
        self.path = Path(gguf_path)
        self._model = self._ctx = self._batch = None
        self._embed_ctx = None  # embedding mode: a second context over the same weights, made when asked
        self._on_text: OnText | None = None
        self._ctx_shape: tuple[int, int] | None = None
        self._prefixes: dict[int, list[int]] = {}  # slot -> the tokens a finished sequence left in its KV
        self._left_at: dict[int, int] = {}  # slot -> when they were left there (a counter)
        self._clock = itertools.count(1)
        self.cached_prompt_tokens = 0  # prompt tokens taken from the cache instead of decoded (a count)
        _check_gguf_file(self.path)
        _init_llama(verbose)
        self._lock = threading.Lock()
        self._piece_cache: dict[int, bytes] = {}

        params = llama_cpp.llama_model_default_params()
        # Weight repacking into "extra" buffer types (AMX on recent Xeons) makes llama_decode
        # segfault on multi-token batches in 0.3.36 builds; plain CPU buffers are safe.
        params.use_extra_bufts = use_extra_bufts
        if n_gpu_layers is None:
            n_gpu_layers = -1 if llama_cpp.llama_supports_gpu_offload() else 0
        params.n_gpu_layers = n_gpu_layers
        model = llama_cpp.llama_model_load_from_file(str(self.path).encode("utf-8"), params)
        if not model:
            reason = _recent_errors() or "llama.cpp could not load it"
            raise ModelFileError(f"{self.path}: not a valid GGUF model file ({reason})")
        self._model = model
        self._vocab = llama_cpp.llama_model_get_vocab(model)

        self.n_threads = n_threads or default_threads()
        self.max_batch = max(1, min(max_batch, llama_cpp.llama_max_parallel_sequences()))
        n_ctx_train = llama_cpp.llama_model_n_ctx_train(model)
        self.context_length = n_ctx or min(n_ctx_train, DEFAULT_CONTEXT)
        template = llama_cpp.llama_model_chat_template(model, None)
        self.chat_template = template.decode("utf-8") if template else None
        self.add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        self.bos_token = self._token_text(llama_cpp.llama_vocab_bos(self._vocab))
        self.eos_token = self._token_text(llama_cpp.llama_vocab_eos(self._vocab))
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self._llg = None  # llguidance's tokenizer, for typed output and tool calls (_llg_tokenizer)

        n_layer = llama_cpp.llama_model_n_layer(model)
        n_head = max(1, llama_cpp.llama_model_n_head(model))
        head_kv = llama_cpp.llama_model_n_head_kv(model) * llama_cpp.llama_model_n_embd(model) // n_head
        self._kv_bytes_per_token = max(1, n_layer * 2 * head_kv * 2)  # K and V, f16

    # -- tokens ---------------------------------------------------------------------------

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return llama_cpp.llama_vocab_get_text(self._vocab, token).decode("utf-8", errors="replace")

    def tokenize(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        """Token ids of `text`; special-token texts (e.g. `<|im_start|>`) become their ids."""
        data = text.encode("utf-8")
        add = self.add_bos if add_bos is None else add_bos
        n_max = len(data) + 8
        buf = (llama_cpp.llama_token * n_max)()
        n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, n_max, add, True)
        if n < 0:  # buffer too small: -n is the size needed
            n_max = -n
            buf = (llama_cpp.llama_token * n_max)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, n_max, add, True)
        return list(buf[:n])

    def count_tokens(self, text: str) -> int:
        """Tokens `text` takes as a prompt (BOS included when the model adds one)."""
        return len(self.tokenize(text))

    def detokenize(self, ids: list[int]) -> str:
        """The text of token ids (special tokens such as BOS render as nothing)."""
        return b"".join(self._piece(t) for t in ids).decode("utf-8", errors="replace")

    def token_text(self, token: int) -> str:
        """One token's text, as a logprobs entry names it (a partial UTF-8 character as U+FFFD)."""
        return self._piece(token).decode("utf-8", errors="replace")

    @property
    def vocab_size(self) -> int:
        return self.n_vocab

    def _piece(self, token: int) -> bytes:
        piece = self._piece_cache.get(token)
        if piece is None:
            buf = ctypes.create_string_buffer(64)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            if n < 0:
                buf = ctypes.create_string_buffer(-n)
                n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = self._piece_cache[token] = buf.raw[:n]
        return piece

    def _stop_token_ids(self, stops: tuple[str, ...]) -> set[int]:
        """Special tokens whose text is a stop string: they render as "" so text search misses them."""
        ids = set()
        for s in stops:
            toks = self.tokenize(s, add_bos=False)
            if len(toks) == 1 and not self._piece(toks[0]) and self._token_text(toks[0]) == s:
                ids.add(toks[0])
        return ids

    # -- generation -----------------------------------------------------------------------

    def generate(
        self, prompts: list[str], options: GenerationOptions, on_text: OnText | None = None
    ) -> list[BackendOutput]:
        if not prompts:
            return []
        outputs: list[BackendOutput | None] = [None] * len(prompts)
        seeds = np.random.SeedSequence(_unsigned(options.seed)).spawn(len(prompts))
        seqs = []
        for i, prompt in enumerate(prompts):
            tokens = list(prompt) if isinstance(prompt, list) else self.tokenize(prompt)
            bad = [t for t in tokens if not 0 <= t < self.n_vocab]
            if bad or not tokens:
                outputs[i] = BackendOutput(
                    "", "error", len(tokens), 0, error=_bad_ids_message(bad, self.n_vocab)
                )
            elif len(tokens) + 1 > self.context_length:
                outputs[i] = BackendOutput(
                    text="",
                    finish_reason="error",
                    prompt_tokens=len(tokens),
                    completion_tokens=0,
                    error=f"prompt is {len(tokens)} tokens; the model's context is {self.context_length} "
                    "tokens, and at least one is needed for the answer. Shorten the prompt.",
                )
            else:
                s = _Seq(i, tokens, len(tokens), np.random.default_rng(seeds[i]))
                if options.logprobs is not None:
                    s.logprobs = []
                if options.prompt_logprobs is not None:
                    s.prompt_logprobs = [first_token(tokens[0], self.token_text)]
                seqs.append(s)
        if seqs:
            with self._lock:
                self._on_text = on_text
                try:
                    self._run(seqs, options, outputs)
                finally:
                    self._on_text = None
        return outputs  # type: ignore[return-value]

    def _run(self, seqs: list[_Seq], options: GenerationOptions, outputs: list[BackendOutput | None]) -> None:
        """Continuous batching over a context with one slot (llama.cpp sequence id, its own KV stream)
        per sequence running at once; the context and what its slots hold are kept for the next call
        while the shape stays the same (prompt caching, `_admit`)."""
        per_seq = min(self.context_length, max(s.n_prompt for s in seqs) + options.max_new_tokens)
        per_seq = -(-per_seq // 256) * 256  # llama.cpp pads to 256 anyway; fewer distinct contexts
        fits = max(1, KV_BUDGET_BYTES // (per_seq * self._kv_bytes_per_token))
        n_slots = min(self.max_batch, len(seqs), fits)
        shape = self._ctx_shape
        if shape is None or shape[0] < n_slots or shape[1] < per_seq:  # else the context in hand holds it
            shape = (min(max(n_slots, CACHE_SLOTS), self.max_batch, fits), per_seq)
        ctx = self._context(*shape)
        memory = llama_cpp.llama_get_memory(ctx)
        try:
            self._decode_all(ctx, memory, seqs, options, outputs)
        except BaseException:
            llama_cpp.llama_memory_clear(memory, True)  # nothing half-written is reused as a prefix
            self._prefixes.clear()
            self._left_at.clear()
            raise

    def _decode_all(
        self, ctx, memory, seqs: list[_Seq], options: GenerationOptions, outputs: list[BackendOutput | None]
    ) -> None:
        """Each step is one llama_decode holding the next token of every running sequence plus the
        prompt (what the cache lacks of it) of each newly admitted one; a finished sequence's slot goes
        to the next queued prompt."""
        stop_ids = self._stop_token_ids(options.stop)
        grammar = _grammar(options)

        pending = deque(seqs)
        free_slots = list(range(self._ctx_shape[0]))  # `_admit` picks among them
        running: list[_Seq] = []  # kept sorted by slot, see _compact
        while pending or running:
            while pending and free_slots:
                s = pending.popleft()
                self._admit(memory, s, free_slots)
                if grammar is not None and options.json_after is None:
                    s.grammar = LlgGrammar(self._llg_tokenizer(), grammar, self.n_vocab)
                running.append(s)
            running.sort(key=lambda s: s.slot)
            logits, error = self._decode(ctx, running, options.prompt_logprobs)
            if error:
                reasons: list[FinishReason | None] = ["error"] * len(running)
            elif options.max_new_tokens == 0:  # scoring only: the prompt's logprobs are all there is
                reasons = ["length"] * len(running)
            else:
                raw = logits.copy() if options.logprobs is not None else None  # before any mask
                dead_ends = self._constrain(running, logits, options.greedy and not options.penalized)
                chosen = sample_batch(
                    logits,
                    [s.tokens for s in running],
                    options,
                    [s.rng for s in running],
                    [s.n_prompt for s in running],
                )
                entries = (
                    logprob_rows(raw, chosen, options.logprobs, self.token_text, self._piece)
                    if raw is not None
                    else [None] * len(running)
                )
                reasons = [
                    "error" if k in dead_ends else self._accept(s, t, options, stop_ids, entries[k], grammar)
                    for k, (s, t) in enumerate(zip(running, chosen, strict=True))
                ]
                if dead_ends:
                    error = "the JSON grammar allowed no next token (the schema cannot be completed)"
            for s, reason in zip(running, reasons, strict=True):
                if reason is not None:
                    if s.grammar is not None:
                        s.grammar.close()
                    outputs[s.index] = self._output(s, reason, error if reason == "error" else None)
                    if reason == "error":
                        llama_cpp.llama_memory_seq_rm(memory, s.slot, -1, -1)
                    else:  # its tokens stay in the slot: a later prompt that starts the same reuses them
                        self._prefixes[s.slot] = s.tokens[: s.n_fed]
                        self._left_at[s.slot] = next(self._clock)
                    free_slots.append(s.slot)
            running = [s for s, reason in zip(running, reasons, strict=True) if reason is None]
            if not pending:
                _compact(memory, running, free_slots, self._prefixes)

    def _admit(self, memory, s: _Seq, free_slots: list[int]) -> None:
        """Give `s` the free slot whose kept tokens share the longest start with its prompt (else an
        empty slot, else the one left longest ago), and skip those tokens: prompt caching, e.g. of a
        system prompt or a tools' section sent with every request. Every token's K and V are computed
        row by row, as in a lone run, so an answer is the same whether its prompt's start came from the
        cache or not. At least the prompt's last token is decoded again (its logits pick the first
        answer token); a prompt that wants its own logprobs is decoded whole."""
        longest = 0 if s.prompt_logprobs is not None else len(s.tokens) - 1
        shared = {slot: _shared_start(self._prefixes.get(slot, ()), s.tokens, longest) for slot in free_slots}
        # a few shared tokens (a chat template's opening) are not worth another prompt's longer start
        shared = {slot: n if n >= CACHE_MIN_TOKENS else 0 for slot, n in shared.items()}
        # the longest shared start; else an empty slot, else the one whose tokens were left longest ago
        slot = max(
            free_slots, key=lambda k: (shared[k], k not in self._prefixes, -self._left_at.get(k, 0), -k)
        )
        free_slots.remove(slot)
        llama_cpp.llama_memory_seq_rm(memory, slot, shared[slot], -1)
        self._prefixes.pop(slot, None)
        s.slot, s.n_fed, s.n_cached = slot, shared[slot], shared[slot]
        self.cached_prompt_tokens += shared[slot]

    def _llg_tokenizer(self):
        """llguidance's view of this model's vocabulary, built once (about a second) on the first typed
        answer or tool call."""
        if self._llg is None:
            self._llg = llg_llama_tokenizer(self._vocab, self.n_vocab)
        return self._llg

    @staticmethod
    def _constrain(running: list[_Seq], logits: np.ndarray, argmax: bool = False) -> set[int]:
        """Mask each constrained row to what its grammar allows; the rows where nothing is allowed.
        With `argmax` (greedy, no penalty: the answer takes the most likely token), a row whose most
        likely token the grammar allows is left as it is, since masking would not change the choice:
        llguidance checks one token in microseconds, where the whole-vocabulary mask costs about half
        a millisecond a token (the same token either way; tests/test_typed.py)."""
        dead = set()
        for k, s in enumerate(running):
            if s.grammar is not None:
                if argmax and s.grammar.allows(int(np.argmax(logits[k]))):
                    continue
                logits[k] = s.grammar.mask(logits[k])
                if not np.isfinite(logits[k]).any():
                    dead.add(k)
        return dead

    def _accept(
        self,
        s: _Seq,
        token: int,
        options: GenerationOptions,
        stop_ids: set[int],
        entry: TokenLogprob | None = None,
        grammar: str | None = None,
    ) -> FinishReason | None:
        """Record one new token; return why the sequence ends, or None to go on."""
        if llama_cpp.llama_vocab_is_eog(self._vocab, token) or token in stop_ids:
            return "stop"  # the end token is not part of the answer, nor counted (as in transformers)
        if s.grammar is not None:
            s.grammar.accept(token)
        s.tokens.append(token)
        if s.logprobs is not None:
            s.logprobs.append(entry)
        grown_from = len(s.text)
        s.text += s.decoder.decode(self._piece(token))
        if options.stop and s.marker_seen_at is None:  # the JSON after a marker ends by its grammar
            s.text, hit = cut_at_stop(s.text, options.stop)
            if hit:
                return "stop"
        if options.json_after is not None and s.marker_seen_at is None:
            self._watch_for_marker(s, options.json_after, grammar, grown_from)
        if self._on_text is not None and self._on_text(s.index, s.text) is False:
            return "stop"  # nobody reads this answer any more (a client went away)
        if s.grammar is not None and s.grammar.complete():
            # the JSON is closed and its grammar takes nothing but the end token: end here rather
            # than decode one more step to sample the only token allowed (the same answer, a step less)
            return "stop"
        if s.n_generated >= options.max_new_tokens or len(s.tokens) >= self.context_length:
            return "length"
        return None

    def _watch_for_marker(self, s: _Seq, marker: str, grammar: str, grown_from: int) -> None:
        """json_after: once the answer holds the marker, its grammar starts, having read what the
        token that completed the marker wrote after it (e.g. a line break). When the grammar refuses
        that rest, the token is replaced by the tokens of the marker's end alone (it is not decoded
        yet), so the answer goes on from the marker."""
        at = s.text.find(marker, max(0, grown_from - len(marker) + 1))
        if at < 0:
            return
        end = at + len(marker)
        s.marker_seen_at = at
        s.grammar = LlgGrammar(self._llg_tokenizer(), grammar, self.n_vocab)
        rest = self.tokenize(s.text[end:], add_bos=False) if end < len(s.text) else []
        if s.grammar.matcher.validate_tokens(rest) < len(rest):
            s.tokens[-1:] = self.tokenize(s.text[grown_from:end], add_bos=False)
            s.text, rest = s.text[:end], []
        for token in rest:
            s.grammar.accept(token)

    def _output(self, s: _Seq, reason: FinishReason, error: str | None = None) -> BackendOutput:
        text = s.text
        if reason == "length":  # flush a multi-byte character the limit cut in half (as U+FFFD)
            text += s.decoder.decode(b"", final=True)
        return BackendOutput(
            text=text if error is None else "",
            finish_reason=reason,
            prompt_tokens=s.n_prompt,
            completion_tokens=s.n_generated,
            error=error,
            logprobs=s.logprobs,
            prompt_logprobs=s.prompt_logprobs,
            cached_tokens=s.n_cached,
        )

    def _decode(
        self, ctx, running: list[_Seq], prompt_logprobs: int | None = None
    ) -> tuple[np.ndarray, str | None]:
        """Feed each sequence's not-yet-decoded tokens, in n_batch chunks; return the logits after
        each sequence's last token, in `running` order (or an error message). A sequence that wants its
        prompt's logprobs gets llama.cpp's logits at every prompt position too, turned into entries
        chunk by chunk (only then: the output rows cost memory and time)."""
        flat = [
            (s.tokens[pos], pos, s.slot, pos == len(s.tokens) - 1, k)
            for k, s in enumerate(running)
            for pos in range(s.n_fed, len(s.tokens))
        ]
        logits = np.empty((len(running), self.n_vocab), dtype=np.float32)
        batch = self._batch
        for c in range(0, len(flat), N_BATCH):
            chunk = flat[c : c + N_BATCH]
            for i, (tok, pos, slot, want, k) in enumerate(chunk):
                batch.token[i] = tok
                batch.pos[i] = pos
                batch.n_seq_id[i] = 1
                batch.seq_id[i][0] = slot
                batch.logits[i] = want or _scores_prompt(running[k], pos)
            batch.n_tokens = len(chunk)
            rc = llama_cpp.llama_decode(ctx, batch)
            if rc != 0:
                return logits, f"llama_decode failed (code {rc}); {_recent_errors() or 'no details'}"
            for i, (_, pos, _, want, k) in enumerate(chunk):
                s = running[k]
                if want or _scores_prompt(s, pos):
                    ptr = llama_cpp.llama_get_logits_ith(ctx, i)
                    row = np.ctypeslib.as_array(ptr, shape=(self.n_vocab,))
                    if _scores_prompt(s, pos):  # the prompt's next token, given those before it
                        s.prompt_logprobs += logprob_rows(
                            row, [s.tokens[pos + 1]], prompt_logprobs or 0, self.token_text, self._piece
                        )
                    if want:
                        logits[k] = row
        for s in running:
            s.n_fed = len(s.tokens)
        return logits, None

    def _context(self, n_slots: int, per_seq: int):
        """A context with one KV stream per slot, reused while the shape stays the same."""
        if self._ctx is not None and self._ctx_shape == (n_slots, per_seq):
            return self._ctx
        self._free_context()
        self._prefixes, self._left_at = {}, {}
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_slots * per_seq
        params.n_seq_max = n_slots
        params.n_batch = params.n_ubatch = N_BATCH
        params.n_threads = params.n_threads_batch = self.n_threads
        # One KV stream per sequence: attention then sees exactly the cells a lone run would,
        # so batched greedy equals single greedy (a unified cache changes the float rounding).
        params.kv_unified = False
        # Flash attention off, as llama-cpp-python's Llama() has it: the default ("auto") turns it on
        # for CPU, whose different rounding changed Gemma's greedy text from the plain library's.
        params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
        params.no_perf = True
        ctx = llama_cpp.llama_init_from_model(self._model, params)
        if not ctx:
            raise RuntimeError(
                f"llama.cpp could not create a context of {n_slots} x {per_seq} tokens for {self.path} "
                f"({_recent_errors() or 'out of memory?'})"
            )
        self._ctx, self._ctx_shape = ctx, (n_slots, per_seq)
        self._batch = llama_cpp.llama_batch_init(N_BATCH, 0, 1)
        return ctx

    # -- embeddings -----------------------------------------------------------------------

    def embed(self, items: list) -> list[Embedding]:
        """Each text (or list of token ids) as the mean of its last hidden states (unit length),
        one input at a time (tunelab.inference.embeddings). A bad input raises PromptError."""
        with self._lock:
            ctx = self._embedding_context()
            n_embd = llama_cpp.llama_model_n_embd(self._model)
            out = []
            for item in items:
                tokens = list(item) if isinstance(item, list) else self.tokenize(item)
                check_input(tokens, self.n_vocab, self.context_length)
                llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(ctx), True)
                array = (llama_cpp.llama_token * len(tokens))(*tokens)
                if llama_cpp.llama_decode(ctx, llama_cpp.llama_batch_get_one(array, len(tokens))) != 0:
                    reason = _recent_errors() or "decode failed"
                    raise RuntimeError(f"llama.cpp could not embed the input ({reason})")
                pooled = llama_cpp.llama_get_embeddings_seq(ctx, 0)
                vector = np.ctypeslib.as_array(pooled, shape=(n_embd,)).copy()
                out.append(Embedding(unit(vector), len(tokens)))
            return out

    def _embedding_context(self):
        if self._embed_ctx is None:
            params = llama_cpp.llama_context_default_params()
            # mean pooling needs a whole input in one physical batch
            params.n_ctx = params.n_batch = params.n_ubatch = self.context_length
            params.n_seq_max = 1
            params.n_threads = params.n_threads_batch = self.n_threads
            params.embeddings = True
            params.pooling_type = llama_cpp.LLAMA_POOLING_TYPE_MEAN
            params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
            params.no_perf = True
            ctx = llama_cpp.llama_init_from_model(self._model, params)
            if not ctx:
                raise RuntimeError(
                    f"llama.cpp could not create an embedding context for {self.path} "
                    f"({_recent_errors() or 'out of memory?'})"
                )
            self._embed_ctx = ctx
        return self._embed_ctx

    def _free_context(self) -> None:
        if self._batch is not None:
            llama_cpp.llama_batch_free(self._batch)
            self._batch = None
        if self._ctx is not None:
            llama_cpp.llama_free(self._ctx)
            self._ctx, self._ctx_shape = None, None

    def close(self) -> None:
        self._free_context()
        if self._embed_ctx is not None:
            llama_cpp.llama_free(self._embed_ctx)
            self._embed_ctx = None
        if self._model is not None:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __del__(self) -> None:
        try:
            self.close()
        except (TypeError, AttributeError):  # at interpreter exit the bindings may be torn down first
            pass

    def __enter__(self) -> LlamaCppBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _grammar(options: GenerationOptions) -> str | None:
    """The llguidance grammar of a typed answer (of what follows the marker, with json_after)."""
    if options.json_schema is None:
        return None
    return llg_grammar(options.json_schema, after_marker=options.json_after is not None)


def _scores_prompt(s: _Seq, pos: int) -> bool:
    """Whether position `pos` of `s` scores the prompt's next token (its logits are wanted)."""
    return s.prompt_logprobs is not None and pos < s.n_prompt - 1


def _bad_ids_message(bad: list[int], n_vocab: int) -> str:
    if not bad:
        return "the prompt is an empty list of token ids"
    return f"token ids must be in [0, {n_vocab}); got {bad[:5]}"


def _shared_start(a, b, limit: int) -> int:
    """How many tokens `a` and `b` share from their start, at most `limit`."""
    n = 0
    for x, y in zip(a, b):
        if n >= limit or x != y:
            break
        n += 1
    return n


def _compact(memory, running: list[_Seq], free_slots: list[int], prefixes: dict[int, list[int]]) -> None:
    """Move the highest-slot sequences down into the free slots between running ones.

    With one KV stream per sequence, llama.cpp puts only consecutive sequence ids into one
    ubatch, so a hole left by a finished sequence would split every later step into several
    graph runs. A cross-stream copy is a plain buffer copy, so results stay bit-identical. Free
    slots below or above all running ones are left alone: they may hold cached prompt starts.
    """
    while running:
        holes = [f for f in free_slots if running[0].slot < f < running[-1].slot]
        if not holes:
            return
        s, hole = running.pop(), min(holes)
        free_slots.remove(hole)
        if prefixes.pop(hole, None) is not None:  # the hole's kept tokens make way
            llama_cpp.llama_memory_seq_rm(memory, hole, -1, -1)
        llama_cpp.llama_memory_seq_cp(memory, s.slot, hole, -1, -1)
        llama_cpp.llama_memory_seq_rm(memory, s.slot, -1, -1)
        free_slots.append(s.slot)
        s.slot = hole
        bisect.insort(running, s, key=lambda x: x.slot)


def _check_gguf_file(path: Path) -> None:
    """Fail with a clear message before llama.cpp sees a file that is not GGUF at all."""
    if not path.is_file():
        raise ModelFileError(f"{path}: no such model file")
    with path.open("rb") as f:
        magic = f.read(4)
    if magic != b"GGUF":
        raise ModelFileError(f"{path}: not a GGUF file (it does not start with the GGUF magic bytes)")


def _unsigned(seed: int | None) -> int | None:
    """A seed as numpy takes it (non-negative): a negative one (OpenAI allows int64) wraps to 64 bits."""
    return None if seed is None else seed % 2**64
