"""A fairseq dictionary over a SentencePiece model: the id layout of fairseq S2T and HF Speech2Text models.

Ids 0-3 are <s>, <pad>, </s>, <unk>; the pieces follow in the order of the dictionary file (``dict.txt`` /
``vocab.json``), then language tags such as ``<lang:de>`` for multilingual models. Decoding starts from </s>
(fairseq's convention, HF's `decoder_start_token_id`), so `bos` is the end-of-sentence id.
"""
from __future__ import annotations

import json
from functools import cached_property
from pathlib import Path
from typing import Iterable

import sentencepiece as spm

from streamst.tokenizer import WORD_START

SPECIALS = ("<s>", "<pad>", "</s>", "<unk>")


class VocabTokenizer:
    """Target-side tokenizer: model ids <-> SentencePiece pieces through the model's own dictionary."""

    def __init__(self, model_proto: bytes, vocab: list[str]):
        self.model_proto = bytes(model_proto)
        self.vocab = list(vocab)
        self.sp = spm.SentencePieceProcessor(model_proto=self.model_proto)
        self.index = {p: i for i, p in enumerate(self.vocab)}
        missing = [s for s in SPECIALS if s not in self.index]
        if missing:
            raise ValueError(f"the model dictionary lacks the special symbols {missing}")
        self.pad, self.eos, self.unk = self.index["<pad>"], self.index["</s>"], self.index["<unk>"]
        self.bos = self.eos  # the decoder start symbol

    def __len__(self) -> int:
        return len(self.vocab)

    @cached_property
    def special_ids(self) -> frozenset[int]:
        """Ids that are not text: the four specials and tags like <lang:de>."""
        return frozenset(i for i, p in enumerate(self.vocab) if p in SPECIALS or is_tag(p))

    @cached_property
    def languages(self) -> dict[str, int]:
        """Target-language tags of a multilingual model: {'de': id of <lang:de>}."""
        return {p[6:-1]: i for i, p in enumerate(self.vocab) if p.startswith("<lang:") and p.endswith(">")}

    @cached_property
    def word_start_ids(self) -> frozenset[int]:
        return frozenset(i for i, p in enumerate(self.vocab) if p.startswith(WORD_START))

    def piece(self, i: int) -> str:
        i = int(i)
        return self.vocab[i] if 0 <= i < len(self.vocab) else "<unk>"

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return [self.piece(i) for i in ids]

    def encode(self, text: str) -> list[int]:
        return [self.index.get(p, self.unk) for p in self.sp.encode(text, out_type=str)]

    def decode(self, ids: Iterable[int]) -> str:
        return self.sp.decode_pieces([self.piece(i) for i in ids if int(i) not in self.special_ids])

    def to_dict(self) -> dict:
        return {"sentencepiece": self.model_proto, "vocab": self.vocab}

    @classmethod
    def from_dict(cls, d: dict) -> "VocabTokenizer":
        return cls(d["sentencepiece"], d["vocab"])


def is_tag(piece: str) -> bool:
    """True for a tag symbol such as <lang:de> (never text)."""
    return piece.startswith("<") and piece.endswith(">") and ":" in piece


def read_fairseq_dict(path: str | Path) -> list[str]:
    """The id -> symbol list of a fairseq dictionary file ('symbol count' per line, specials first)."""
    vocab = list(SPECIALS)
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        line = line.rstrip()
        if not line:
            continue
        overwrite = line.endswith(" #fairseq:overwrite")
        if overwrite:
            line = line[: -len(" #fairseq:overwrite")]
        symbol, sep, _count = line.rpartition(" ")
        if not sep:
            raise ValueError(f"{path}:{n}: a fairseq dictionary line is 'SYMBOL COUNT', got {line!r}")
        if symbol in vocab and not overwrite:
            raise ValueError(f"{path}:{n}: duplicate symbol {symbol!r}")
        if symbol not in vocab:
            vocab.append(symbol)
    return vocab


def read_vocab_json(path: str | Path) -> list[str]:
    """The id -> piece list of a Hugging Face Speech2Text `vocab.json` ({piece: id})."""
    mapping = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(mapping, dict) or not mapping:
        raise ValueError(f"{path}: expected a JSON object of piece -> id")
    size = max(mapping.values()) + 1
    vocab = [""] * size
    for piece, i in mapping.items():
        vocab[int(i)] = piece
    holes = [i for i, p in enumerate(vocab) if p == ""]
    if holes:
        raise ValueError(f"{path}: ids {holes[:5]} have no piece")
    return vocab
