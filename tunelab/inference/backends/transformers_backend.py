"""The transformers backend: any Hugging Face causal LM, or a GGUF dequantized to torch (trainable).

This module imports torch and transformers; the engine imports it only when this backend is used.
A GGUF is loaded from its dequantized copy (`tunelab.models.gguf_cache`).
"""

from __future__ import annotations

import logging

import torch
from transformers import LogitsProcessor, StoppingCriteria
from transformers.generation.streamers import BaseStreamer

from tunelab.errors import ModelFileError
from tunelab.inference.backends import batch_invariant
from tunelab.inference.backends.base import OnText
from tunelab.inference.backends.hf_tokens import HfTokens
from tunelab.inference.device import cpu_has_native_bf16, pick_device
from tunelab.inference.embeddings import Embedding, check_input, unit
from tunelab.inference.logprobs import TokenLogprob, first_token, logprob_rows
from tunelab.inference.options import BackendOutput, GenerationOptions, cut_at_stop

log = logging.getLogger("tunelab")


def tokenizer_adds_bos(tokenizer) -> bool:
    """Whether encoding a text puts BOS in front (then a template's own BOS text is dropped)."""
    ids = tokenizer("a", add_special_tokens=True)["input_ids"]
    return bool(ids) and tokenizer.bos_token_id is not None and ids[0] == tokenizer.bos_token_id


class _TextStops(StoppingCriteria):
    """Stop a row once its answer's tail contains a stop string.

    transformers' own `stop_strings` precomputes tables over the whole vocabulary on every
    generate call (minutes for Gemma's 262k tokens); decoding a short tail per step is cheap.
    """

    def __init__(self, tokenizer, stops: tuple[str, ...], prompt_width: int):
        self.tokenizer, self.stops, self.width = tokenizer, stops, prompt_width
        self.window = max(len(s) for s in stops) + 4  # every token decodes to >= 1 character

    def __call__(self, input_ids, scores, **kwargs):
        tails = self.tokenizer.batch_decode(input_ids[:, self.width :][:, -self.window :])
        return torch.tensor([any(s in t for s in self.stops) for t in tails], device=input_ids.device)


class OpenAIPenalties(LogitsProcessor):
    """OpenAI's presence and frequency penalties on each row: a token the row's answer so far (its ids
    after the padded prompt, `prompt_width`) holds c times loses `c * frequency + presence` from its
    logit. The same arithmetic as `tunelab.inference.sampling.apply_openai_penalties` (llama.cpp's path),
    row by row, so a row's scores do not depend on the batch around it."""

    def __init__(self, presence: float, frequency: float, prompt_width: int):
        self.presence, self.frequency, self.width = presence, frequency, prompt_width

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        generated = input_ids[:, self.width :]
        if generated.shape[1] == 0:
            return scores
        counts = torch.zeros_like(scores).scatter_add_(
            1, generated, torch.ones_like(scores[:, :1]).expand_as(generated)
        )
        return scores - (counts * self.frequency + (counts > 0).to(scores.dtype) * self.presence)


class TransformersBackend(HfTokens):
    """Batched generation with left padding and an attention mask, through `model.generate`.

    dtype "auto": bf16 on CUDA and on CPUs with native bf16 (AVX512-BF16 / AMX), float32 elsewhere.
    In bf16 on a CPU the batch-invariant path is used (tunelab/backends/batch_invariant.py): a prompt
    gets the same greedy answer in a batch as alone, at the bf16 speed (benchmarks/RESULTS.md).
    """

    name = "transformers"
    supports_logprobs = True

    def __init__(
        self,
        path_or_id: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        max_batch: int = 32,
        local_files_only: bool = False,
        adapter_path: str | None = None,
    ):
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # loading cached safetensors takes seconds: no bar needed
        self.device = pick_device(device)
        if dtype == "auto":
            bf16 = self.device == "cuda" or (self.device == "cpu" and cpu_has_native_bf16())
            torch_dtype = torch.bfloat16 if bf16 else torch.float32
        else:
            torch_dtype = getattr(torch, dtype)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path_or_id, local_files_only=local_files_only)
            config = AutoConfig.from_pretrained(path_or_id, local_files_only=local_files_only)
            # bf16 on a CPU: the batch-invariant path, measured there (see batch_invariant); elsewhere
            # batches run as transformers runs them.
            self.batch_invariant = (
                self.device == "cpu" and torch_dtype == torch.bfloat16 and batch_invariant.suits(config)
            )
            extra = {"attn_implementation": batch_invariant.register()} if self.batch_invariant else {}
            # An adapter is merged into float32 weights, then cast: the same weights as a merged export.
            load_dtype = torch.float32 if adapter_path is not None else torch_dtype
            self.model = AutoModelForCausalLM.from_pretrained(
                path_or_id, dtype=load_dtype, local_files_only=local_files_only, **extra
            )
        except OSError as exc:
            raise ModelFileError(f"{path_or_id}: could not load the model ({exc})") from None
        if adapter_path is not None:
            from peft import PeftModel

            # Merged once at load: the tuned model then runs as fast as the base.
            self.model = PeftModel.from_pretrained(self.model, adapter_path).merge_and_unload()
        self.model = self.model.to(self.device, torch_dtype).eval()
        self.max_batch = max_batch
        tok = self.tokenizer
        tok.padding_side = "left"  # answers start right after each prompt
        if tok.pad_token_id is None:
            tok.pad_token = tok.eos_token
        self.chat_template = tok.chat_template if isinstance(tok.chat_template, str) else None
        self.bos_token = tok.bos_token or ""
        self.eos_token = tok.eos_token or ""
        self.context_length = int(
            getattr(self.model.config, "max_position_embeddings", None) or tok.model_max_length or 2048
        )
        self.add_bos = tokenizer_adds_bos(tok)
        self._eog_ids = self._end_of_generation_ids()
        self._texts: dict[int, str] = {}

    def _end_of_generation_ids(self) -> set[int]:
        ids: set[int] = set()
        for source in (self.model.generation_config.eos_token_id, self.tokenizer.eos_token_id):
            if isinstance(source, int):
                ids.add(source)
            elif source:
                ids.update(source)
        # Chat models end turns with a special token that is not always the EOS id (Gemma's <end_of_turn>).
        for text in ("<end_of_turn>", "<|im_end|>", "<|eot_id|>", "<|end|>"):
            token_id = self.tokenizer.convert_tokens_to_ids(text)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id:
                ids.add(token_id)
        return ids

    @property
    def vocab_size(self) -> int:
        return self.model.get_output_embeddings().weight.shape[0]  # the logits' width

    def embed(self, items: list) -> list[Embedding]:
        """Each text (or list of token ids) as the mean of the last layer's hidden states, after the
        final norm (unit length), one input at a time (tunelab.inference.embeddings)."""
        body = self.model.get_decoder()  # the transformer without its LM head
        out = []
        for item in items:
            tokens = list(item) if isinstance(item, list) else self.tokenize(item)
            check_input(tokens, self.vocab_size, self.context_length)
            with torch.inference_mode():
                hidden = body(input_ids=torch.tensor([tokens], device=self.device)).last_hidden_state
            out.append(Embedding(unit(hidden[0].float().mean(dim=0).cpu().numpy()), len(tokens)))
        return out

    def generate(
        self, prompts: list[str], options: GenerationOptions, on_text: OnText | None = None
    ) -> list[BackendOutput]:
        results: list[BackendOutput | None] = [None] * len(prompts)
        encoded = [list(p) if isinstance(p, list) else self.tokenize(p) for p in prompts]
        runnable = []
        for i, ids in enumerate(encoded):
            bad = [t for t in ids if not 0 <= t < self.vocab_size]
            if bad or not ids:
                message = f"token ids must be in [0, {self.vocab_size}); got {bad[:5]}"
                error = message if ids else "the prompt is an empty list of token ids"
                results[i] = BackendOutput("", "error", len(ids), 0, error=error)
            elif len(ids) + 1 > self.context_length:
                results[i] = BackendOutput(
                    "",
                    "error",
                    len(ids),
                    0,
                    error=f"prompt is {len(ids)} tokens; the model's context is {self.context_length} tokens",
                )
            else:
                runnable.append(i)
        # Similar lengths together waste less compute on padding.
        runnable.sort(key=lambda i: len(encoded[i]))
        for chunk in self._chunks(runnable, [len(ids) for ids in encoded]):
            rows = [encoded[i] for i in chunk]
            if self.batch_invariant and len(rows) < batch_invariant.MIN_ROWS:
                rows = rows * batch_invariant.MIN_ROWS  # a lone row would take the one-row kernel
            indices = chunk + [-1] * (len(rows) - len(chunk))  # -1: a copy, not streamed
            streamer = _RowStreamer(self.tokenizer, indices, self._eog_ids, on_text) if on_text else None
            for i, out in zip(chunk, self._generate_batch(rows, options, streamer)):
                results[i] = out
        return results  # type: ignore[return-value]

    def _chunks(self, order: list[int], lengths: list[int]) -> list[list[int]]:
        """Batches of at most max_batch prompts; batch-invariant: of one padded width each."""
        groups: dict[int, list[int]] = {}
        for i in order:
            width = batch_invariant.padded_width(lengths[i]) if self.batch_invariant else 0
            groups.setdefault(width, []).append(i)
        return [
            group[start : start + self.max_batch]
            for group in groups.values()
            for start in range(0, len(group), self.max_batch)
        ]

    def _generate_batch(
        self, batch: list[list[int]], options: GenerationOptions, streamer=None
    ) -> list[BackendOutput]:
        pad_id = self.tokenizer.pad_token_id
        width = max(len(ids) for ids in batch)
        if self.batch_invariant:
            width = batch_invariant.padded_width(width)
        input_ids = torch.tensor([[pad_id] * (width - len(ids)) + ids for ids in batch], device=self.device)
        attention = torch.tensor(
            [[0] * (width - len(ids)) + [1] * len(ids) for ids in batch], device=self.device
        )
        max_new = min(options.max_new_tokens, self.context_length - width)
        specials = set(self.tokenizer.all_special_tokens) | set(self.tokenizer.get_added_vocab())
        # A stop string that is one special token is matched by id (decoding drops its text).
        stop_ids = self._eog_ids | {
            self.tokenizer.convert_tokens_to_ids(s) for s in options.stop if s in specials
        }
        text_stops = tuple(s for s in options.stop if s not in specials)
        kwargs = _sampling_kwargs(options, width)
        kwargs.update(max_new_tokens=max_new, eos_token_id=sorted(stop_ids), pad_token_id=pad_id)
        if text_stops:
            kwargs["stopping_criteria"] = [_TextStops(self.tokenizer, text_stops, width)]
        constraint = None
        if options.json_schema is not None:
            constraint = self._json_constraint(options.json_schema, len(batch), stop_ids)
            kwargs["logits_processor"].append(constraint)
        if streamer is not None:
            kwargs["streamer"] = streamer
        if options.logprobs is not None:  # the raw logits of every step, before any processor
            kwargs.update(output_logits=True, return_dict_in_generate=True)
        prompt_entries = (
            self._prompt_logprobs(input_ids, attention, batch, options.prompt_logprobs)
            if options.prompt_logprobs is not None
            else [None] * len(batch)
        )
        if max_new == 0:  # scoring only
            return [
                BackendOutput("", "length", len(ids), 0, prompt_logprobs=entries)
                for ids, entries in zip(batch, prompt_entries)
            ]
        with torch.inference_mode():
            out = self.model.generate(input_ids=input_ids, attention_mask=attention, **kwargs)
        step_logits = None
        if options.logprobs is not None:
            out, step_logits = out.sequences, out.logits
        outputs = []
        for r, (row, ids) in enumerate(zip(out[:, width:].tolist(), batch)):
            output = self._row_output(row, len(ids), options, stop_ids, max_new)
            if step_logits is not None:
                output.logprobs = [
                    logprob_rows(
                        step_logits[t][r].float().cpu().numpy(),
                        [token],
                        options.logprobs,
                        self.token_text,
                        self.token_piece,
                    )[0]
                    for t, token in enumerate(row[: output.completion_tokens])
                ]
            output.prompt_logprobs = prompt_entries[r]
            outputs.append(output)
        for row, error in (constraint.errors if constraint is not None else {}).items():
            outputs[row] = BackendOutput("", "error", len(batch[row]), outputs[row].completion_tokens, error)
        return outputs

    def _row_output(
        self, row: list[int], n_prompt: int, options: GenerationOptions, stop_ids: set[int], max_new: int
    ) -> BackendOutput:
        """One row of `generate`'s answer ids as text, cut at an end token or a stop string."""
        generated, hit_eog = [], False
        for token in row:
            if token in stop_ids:
                hit_eog = True
                break
            generated.append(token)
        text = self.tokenizer.decode(generated, skip_special_tokens=True)
        text, hit_stop = cut_at_stop(text, options.stop)
        if hit_stop:
            # Count only the tokens that made the kept text.
            kept = self.tokenizer(text, add_special_tokens=False)["input_ids"]
            n_tokens = min(len(kept), len(generated))
        else:
            n_tokens = len(generated)
        reason = "stop" if (hit_eog or hit_stop or len(generated) < max_new) else "length"
        return BackendOutput(text, reason, n_prompt, n_tokens)

    def _prompt_logprobs(
        self, input_ids: torch.Tensor, attention: torch.Tensor, batch: list[list[int]], k: int
    ) -> list[list[TokenLogprob]]:
        """Each prompt's tokens with their logprobs, from one forward pass over the left-padded batch
        (positions counted from each row's first real token, as `generate` counts them)."""
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions).logits
        width = input_ids.shape[1]
        entries = []
        for r, ids in enumerate(batch):
            start = width - len(ids)  # row r's first real token
            rows = logits[r, start : width - 1].float().cpu().numpy()
            entries.append(
                [first_token(ids[0], self.token_text), *logprob_rows(rows, ids[1:], k, self.token_text)]
            )
        return entries

    def _json_constraint(self, schema_json: str, rows: int, end_ids: set[int]):
        from tunelab.inference.backends.json_constraint import LlgLogitsProcessor, llg_grammar, llg_tokenizer

        vocab_size = self.model.get_output_embeddings().weight.shape[0]  # the logits' width
        tokenizer = llg_tokenizer(self.tokenizer, vocab_size, sorted(end_ids))
        return LlgLogitsProcessor(tokenizer, llg_grammar(schema_json), rows, vocab_size, sorted(end_ids))

    def close(self) -> None:
        self.model = None


def _sampling_kwargs(options: GenerationOptions, prompt_width: int) -> dict:
    """`generate`'s arguments for greedy or sampling (seeding torch) and the penalties. transformers
    applies its repetition penalty, then the `logits_processor` list, then temperature, top_k, top_p."""
    penalties = []
    if options.presence_penalty or options.frequency_penalty:
        penalties.append(OpenAIPenalties(options.presence_penalty, options.frequency_penalty, prompt_width))
    kwargs = dict(
        do_sample=not options.greedy,
        repetition_penalty=options.repetition_penalty,
        logits_processor=penalties,
    )
    if options.greedy:
        kwargs.update(temperature=None, top_p=None, top_k=None)
        return kwargs
    if options.seed is not None:
        torch.manual_seed(options.seed)
    kwargs.update(temperature=options.temperature, top_p=options.top_p, top_k=options.top_k or None)
    return kwargs


class _RowStreamer(BaseStreamer):
    """Streams every row of a batched `generate`: after each step, on_text(prompt index, text so far).
    (transformers' own text streamers take one row only.)"""

    def __init__(self, tokenizer, indices: list[int], end_ids: set[int], on_text: OnText):
        self.tokenizer, self.indices, self.end_ids, self.on_text = tokenizer, indices, end_ids, on_text
        self.ids: list[list[int]] = [[] for _ in indices]
        self.done = [False] * len(indices)
        self.prompt_seen = False

    def put(self, value) -> None:
        if not self.prompt_seen:  # the first call carries the prompts
            self.prompt_seen = True
            return
        for row, token in enumerate(value.reshape(len(self.indices), -1)[:, -1].tolist()):
            if self.done[row] or self.indices[row] < 0:
                continue
            if token in self.end_ids:
                self.done[row] = True
                continue
            self.ids[row].append(token)
            self.on_text(self.indices[row], self.tokenizer.decode(self.ids[row], skip_special_tokens=True))

    def end(self) -> None:
        pass
