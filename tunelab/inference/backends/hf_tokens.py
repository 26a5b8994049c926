"""Token ids and texts through a Hugging Face tokenizer: what the transformers and vLLM backends share."""

from __future__ import annotations

import re
from functools import cache

_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")  # SentencePiece's byte fallback


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

    def token_piece(self, token: int) -> bytes | None:
        """One token's own bytes, where the tokenizer shows them: a byte-level BPE token (GPT-2's
        byte-to-character table, as SmolLM2's) or a byte-fallback token (`<0xE2>`); else None (the
        text stands for itself). A partial UTF-8 character keeps its bytes here, where `token_text`
        shows U+FFFD."""
        pieces = self.__dict__.setdefault("_pieces", {})
        if token not in pieces:
            pieces[token] = _piece(self.tokenizer, token)
        return pieces[token]


def _piece(tokenizer, token: int) -> bytes | None:
    if token in tokenizer.all_special_ids:  # shown as nothing: their text, "", stands
        return None
    name = tokenizer.convert_ids_to_tokens(token)
    if not isinstance(name, str):
        return None
    if m := _BYTE_TOKEN.fullmatch(name):
        return bytes([int(m.group(1), 16)])
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if type(getattr(backend, "decoder", None)).__name__ == "ByteLevel" and all(c in _byte_of() for c in name):
        return bytes(_byte_of()[c] for c in name)
    return None


@cache
def _byte_of() -> dict[str, int]:
    """GPT-2's table of byte-level BPE: the character that stands for each byte, reversed."""
    printable = {
        *range(ord("!"), ord("~") + 1),
        *range(ord("¡"), ord("¬") + 1),
        *range(ord("®"), ord("ÿ") + 1),
    }
    chars, extra = {}, 0
    for b in range(256):
        if b in printable:
            chars[chr(b)] = b
        else:
            chars[chr(256 + extra)] = b
            extra += 1
    return chars
