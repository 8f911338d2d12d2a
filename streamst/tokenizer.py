"""SentencePiece tokenizer kept as bytes inside the checkpoint, so a model file is self-contained."""
from __future__ import annotations

import io
from functools import cached_property
from typing import Iterable

import sentencepiece as spm

WORD_START = "\u2581"


class Tokenizer:
    """Encodes text to piece ids and back. Ids 0..3 are <unk>, <s>, </s>, <pad> (BOS, EOS, PAD)."""

    def __init__(self, model_proto: bytes):
        self.model_proto = bytes(model_proto)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        self.bos, self.eos, self.pad = self.sp.bos_id(), self.sp.eos_id(), self.sp.pad_id()

    def __len__(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str) -> list[int]:
        return self.sp.encode(text)

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode([int(i) for i in ids])

    def piece(self, i: int) -> str:
        return self.sp.id_to_piece(int(i))

    @cached_property
    def word_start_ids(self) -> frozenset[int]:
        """Ids whose piece begins a word: what bounds a continuation to whole words (`decoding.StopTracker`)."""
        return frozenset(i for i in range(len(self)) if self.sp.id_to_piece(i).startswith(WORD_START))

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return [self.sp.id_to_piece(int(i)) for i in ids]

    @classmethod
    def train(cls, sentences: Iterable[str], vocab_size: int, model_type: str = "unigram") -> "Tokenizer":
        """Train a SentencePiece model in memory on the given sentences."""
        buf = io.BytesIO()
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(list(sentences)),
            model_writer=buf,
            vocab_size=vocab_size,
            model_type=model_type,
            character_coverage=1.0,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=3,
            hard_vocab_limit=False,
            minloglevel=2,
        )
        return cls(buf.getvalue())


def words_from_pieces(pieces: list[str]) -> list[str]:
    """Join SentencePiece pieces into words on the word-start marker."""
    return "".join(pieces).replace(WORD_START, " ").split()
