"""Token ids and texts through a Hugging Face tokenizer: what the transformers and vLLM backends share."""

from __future__ import annotations


class HfTokens:
    """Needs `self.tokenizer` (a Hugging Face tokenizer), `self.add_bos` and `self._texts` (a dict)."""

    def tokenize(self, text: str, *, add_bos: bool | None = None) -> list[int]:
        """Token ids of `text`; special-token texts (e.g. `<|im_start|>`) become their ids."""
        ids = self.tokenizer(text, add_special_tokens=False)["input_ids"]
        if self.add_bos if add_bos is None else add_bos:
            ids = [self.tokenizer.bos_token_id, *ids]
        return ids

    def count_tokens(self, text: str) -> int:
        return len(self.tokenize(text))

    def detokenize(self, ids: list[int]) -> str:
        """The text of token ids (special tokens such as BOS render as nothing)."""
        return self.tokenizer.decode(ids, skip_special_tokens=True)

    def token_text(self, token: int) -> str:
        """One token's text, as a logprobs entry names it (a partial UTF-8 character as U+FFFD)."""
        if token not in self._texts:
            self._texts[token] = self.tokenizer.decode([token], skip_special_tokens=True)
        return self._texts[token]
