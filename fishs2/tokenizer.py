"""Tokenizer: the checkpoint's `tokenizer.json` through the `tokenizers` library (spec §4).

Special ids are looked up in the file, never hard-coded, so the tiny test tokenizer and the real one work alike.
"""

from __future__ import annotations

import re
from pathlib import Path

from .errors import CheckpointError, TextError

IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
VOICE = "<|voice|>"
_SEMANTIC = re.compile(r"^<\|semantic:(\d+)\|>$")


def _split_keep(text: str, token: str) -> list[str]:
    """Split `text` so that no piece contains `token` whole: "a<|x|>b" → ["a<", "|x|>b"]."""
    if token not in text:
        return [text]
    out = []
    for i, chunk in enumerate(text.split(token)):
        if i:
            out[-1] += token[0]
            chunk = token[1:] + chunk
        out.append(chunk)
    return out


class Tokenizer:
    """Encodes prompt parts to ids; knows the special ids the prompt builder and sampler need."""

    def __init__(self, path: str | Path):
        from tokenizers import Tokenizer as HFTokenizer

        path = Path(path)
        if not path.is_file():
            raise CheckpointError(f"{path}: tokenizer.json not found in the checkpoint directory.")
        try:
            self._tok = HFTokenizer.from_file(str(path))
        except Exception as exc:  # the Rust library raises plain Exception subclasses
            raise CheckpointError(f"{path}: cannot read tokenizer ({exc}); the file is damaged or from another "
                                  "model — download the checkpoint again.") from exc
        vocab = self._tok.get_vocab(with_added_tokens=True)
        self.im_start_id = self._require(vocab, IM_START, path)
        self.im_end_id = self._require(vocab, IM_END, path)
        self.voice_id = self._require(vocab, VOICE, path)
        semantic = {int(m.group(1)): i for tok, i in vocab.items() if (m := _SEMANTIC.match(tok))}
        if not semantic:
            raise CheckpointError(f"{path}: no <|semantic:N|> tokens; not an S2 Pro tokenizer.")
        ids = [semantic[k] for k in sorted(semantic)]
        self.semantic_begin_id = ids[0]
        self.semantic_end_id = ids[-1]
        if ids != list(range(ids[0], ids[0] + len(ids))) or sorted(semantic) != list(range(len(ids))):
            raise CheckpointError(f"{path}: <|semantic:N|> tokens are not one contiguous id range.")
        self.special_tokens = frozenset(t.content for t in self._tok.get_added_tokens_decoder().values())
        self.vocab_size = self._tok.get_vocab_size(with_added_tokens=True)

    @staticmethod
    def _require(vocab: dict[str, int], token: str, path: Path) -> int:
        if token not in vocab:
            raise CheckpointError(f"{path}: special token {token} is missing.")
        return vocab[token]

    @property
    def num_semantic(self) -> int:
        return self.semantic_end_id - self.semantic_begin_id + 1

    def encode(self, text: str) -> list[int]:
        """Ids of one prompt part; special tokens written in the text become single ids (official behaviour)."""
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_literal(self, text: str) -> list[int]:
        """Ids of user-written text: special-token strings typed by a user (e.g. `<|im_end|>`) are kept as the
        literal characters, never turned into control tokens. Each occurrence is split after its first character
        and the pieces are encoded separately, so the model reads ordinary text."""
        _check_encodable(text)
        pieces = [text]
        for token in self.special_tokens:
            pieces = [part for piece in pieces for part in _split_keep(piece, token)]
        return [i for piece in pieces for i in self._tok.encode(piece, add_special_tokens=False).ids]

    def decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=False)


def _check_encodable(text: str) -> None:
    """TextError for what the tokenizer cannot take: a non-string, or lone UTF-16 surrogates (no UTF-8 form)."""
    if not isinstance(text, str):
        raise TextError(f"text: expected a string, got {type(text).__name__}.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TextError(
            f"text: invalid character U+{ord(text[exc.start]):04X} (half of a UTF-16 surrogate pair) at position "
            f"{exc.start}; the text was damaged in transfer — delete the character or paste the text again."
        ) from None
