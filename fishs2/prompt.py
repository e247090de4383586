"""Prompt building (spec §5): ChatML-style messages → parts → one `[num_codebooks + 1, T]` integer matrix.

Each text part is tokenized on its own and the id lists are concatenated, exactly as the official builder does,
so token boundaries fall at part boundaries. Audio parts (reference voices, earlier generated turns) become
frame columns: row 0 = `semantic_begin_id + c0`, rows 1..10 = the codes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import torch

from .errors import TextError
from .tokenizer import IM_END, IM_START, VOICE, Tokenizer

SYSTEM_PLAIN = "convert the provided text to speech"
SYSTEM_REFERENCE = "convert the provided text to speech reference to the following:\n\nText:\n"
REFERENCE_SPEECH = "\n\nSpeech:\n"
MAX_TURNS_PER_BATCH = 5

SPEAKER_TAG = re.compile(r"(<\|speaker:\d+\|>)")
_HAS_SPEAKER_TAG = re.compile(r"<\|speaker:\d+\|>")


@dataclass(frozen=True)
class Reference:
    """One reference voice: its transcript and its codes `[num_codebooks, T]`."""

    text: str
    codes: torch.Tensor


@dataclass(frozen=True)
class Exchange:
    """A finished user → assistant exchange carried into the next batch's prompt."""

    text: str
    codes: torch.Tensor  # [num_codebooks, n]


def split_turns(text: str, keep_leading_text: bool = True) -> list[str]:
    """Split text at `<|speaker:N|>` tags into turns (tag + its text, stripped).

    Text before the first tag is kept as a turn of its own; the official splitter drops it
    (`keep_leading_text=False` reproduces that).
    """
    pieces = SPEAKER_TAG.split(text)
    turns = [pieces[0].strip()] if keep_leading_text and pieces[0].strip() else []
    turns += [(tag + body).strip() for tag, body in zip(pieces[1::2], pieces[2::2])]
    return turns


def group_turns(turns: list[str], chunk_length: int, max_turns: int = MAX_TURNS_PER_BATCH) -> list[list[int]]:
    """Group turn indices into batches (spec §5.2c).

    A new batch starts when the current one holds `max_turns` turns or when the next turn would take it past
    `chunk_length` UTF-8 bytes. A single turn longer than `chunk_length` is still one batch of its own.
    """
    batches: list[list[int]] = []
    size = 0
    for index, turn in enumerate(turns):
        n = len(turn.encode("utf-8"))
        if batches and len(batches[-1]) < max_turns and size + n <= chunk_length:
            batches[-1].append(index)
            size += n
        else:
            batches.append([index])
            size = n
    return batches


def group_batches(text: str, chunk_length: int, max_turns: int = MAX_TURNS_PER_BATCH) -> list[str]:
    """The official batching of raw text (reference for parity tests): text without speaker tags is one batch and
    is never chunked; text before the first speaker tag is dropped. `FishS2.plan` is the user-facing version."""
    if not _HAS_SPEAKER_TAG.search(text):
        return [text]
    turns = split_turns(text, keep_leading_text=False)
    return ["\n".join(turns[i] for i in batch) for batch in group_turns(turns, chunk_length, max_turns)]


def reference_text(references: list[Reference]) -> str:
    """Reference transcripts, each tagged `<|speaker:i|>` unless it already names a speaker, joined by newlines."""
    tagged = [
        r.text if _HAS_SPEAKER_TAG.search(r.text) else f"<|speaker:{i}|>{r.text}" for i, r in enumerate(references)
    ]
    return "\n".join(tagged)


class PromptBuilder:
    """Assembles prompt matrices for one model's tokenizer and code layout."""

    def __init__(self, tokenizer: Tokenizer, num_codebooks: int):
        self.tokenizer = tokenizer
        self.num_codebooks = num_codebooks

    def text_columns(self, text: str, literal: bool = False) -> torch.Tensor:
        """One text part → [K+1, n]: token ids in row 0, zeros below. `literal` parts (user text) never produce
        control tokens."""
        ids = self.tokenizer.encode_literal(text) if literal else self.tokenizer.encode(text)
        ids = torch.tensor(ids, dtype=torch.long)
        columns = torch.zeros(self.num_codebooks + 1, ids.numel(), dtype=torch.long)
        columns[0] = ids
        return columns

    def code_columns(self, codes: torch.Tensor) -> torch.Tensor:
        """Codes [K, n] → [K+1, n]: the semantic token in row 0, the codes below."""
        codes = codes.to(device="cpu", dtype=torch.long)
        return torch.cat([codes[:1] + self.tokenizer.semantic_begin_id, codes], dim=0)

    def build(self, text: str, references: list[Reference] = (), history: list[Exchange] = ()) -> torch.Tensor:
        """The prompt for generating `text`, after the system message and the carried `history`. → [K+1, T]."""
        parts = [self.text_columns(f"{IM_START}system\n")]
        if references:
            parts += [
                self.text_columns(SYSTEM_REFERENCE),
                self.text_columns(reference_text(list(references)), literal=True),
                self.text_columns(REFERENCE_SPEECH),
                self.code_columns(torch.cat([r.codes for r in references], dim=1)),
            ]
        else:
            parts.append(self.text_columns(SYSTEM_PLAIN))
        parts.append(self.text_columns(f"{IM_END}\n"))
        for exchange in history:
            parts += self.user_message(exchange.text)
            parts += [
                self.text_columns(f"{IM_START}assistant\n{VOICE}"),
                self.code_columns(exchange.codes),
                self.text_columns(f"{IM_END}\n"),
            ]
        parts += self.user_message(text)
        parts.append(self.text_columns(f"{IM_START}assistant\n{VOICE}"))
        return torch.cat(parts, dim=1)

    def user_message(self, text: str) -> list[torch.Tensor]:
        if not text.strip():
            raise TextError("text: a turn is empty; give every speaker some words to say.")
        return [self.text_columns(f"{IM_START}user\n"), self.text_columns(text, literal=True), self.text_columns(f"{IM_END}\n")]
