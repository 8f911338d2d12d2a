"""Whisper's byte-level BPE vocabulary behind the same methods as `streamst.tokenizer.Tokenizer`.

Pieces are shown with the SentencePiece word-start marker "▁" in place of the byte-level leading space "Ġ",
so the session's whole-word logic works unchanged. Encoding uses the `tokenizers` package when a
tokenizer.json is available; decoding needs only the vocabulary.
"""
from __future__ import annotations

import json
from functools import cached_property, lru_cache
from typing import Iterable

WORD_START = "\u2581"

LANGUAGES = (
    "en zh de es ru ko fr ja pt tr pl ca nl ar sv it id hi fi vi he uk el ms cs ro da hu ta no th ur hr bg lt la mi "
    "ml cy sk te fa lv bn sr az sl kn et mk br eu is hy ne mn bs kk sq sw gl mr pa si km sn yo so af oc ka be tg sd "
    "gu am yi lo uz fo ht ps tk nn mt sa lb my bo tl mg as tt haw ln ha ba jw su yue"
).split()


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    """GPT-2's reversible byte <-> printable character table, inverted (character -> byte)."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return {chr(c): b for b, c in zip(printable, chars)}


class WhisperTokenizer:
    """Ids <-> text for Whisper, with its special tokens (`sot`, `eot`, `no_timestamps`, ...) looked up by name."""

    def __init__(self, vocab: list[str], tokenizer_json: str | None = None):
        self.vocab = list(vocab)
        self.tokenizer_json = tokenizer_json
        self.ids = {piece: i for i, piece in enumerate(self.vocab)}
        self._hf = None
        if tokenizer_json is not None:
            try:
                from tokenizers import Tokenizer as HFTokenizer

                self._hf = HFTokenizer.from_str(tokenizer_json)
            except ImportError:  # decoding still works; encode falls back to greedy matching
                self._hf = None
        self.eot = self.ids["<|endoftext|>"]
        self.sot = self.ids["<|startoftranscript|>"]
        self.eos = self.eot
        self.bos = self.sot
        self.pad = self.eot
        self.translate = self.ids["<|translate|>"]
        self.transcribe = self.ids["<|transcribe|>"]
        self.sot_prev = self.ids["<|startofprev|>"]
        self.no_timestamps = self.ids["<|notimestamps|>"]
        self.no_speech = self.ids.get("<|nospeech|>", self.ids.get("<|nocaptions|>"))
        self.timestamp_begin = self.no_timestamps + 1
        self.language_ids = {lang: self.ids[f"<|{lang}|>"] for lang in LANGUAGES if f"<|{lang}|>" in self.ids}

    @classmethod
    def from_tokenizer_json(cls, text: str, vocab_size: int | None = None) -> "WhisperTokenizer":
        """Build from a Hugging Face tokenizer.json; ids past its last token become timestamp pieces."""
        data = json.loads(text)
        pieces: dict[int, str] = {i: p for p, i in data["model"]["vocab"].items()}
        for added in data.get("added_tokens", []):
            pieces[added["id"]] = added["content"]
        size = max(max(pieces) + 1, vocab_size or 0)
        vocab = [pieces.get(i, "") for i in range(size)]
        no_ts = vocab.index("<|notimestamps|>")
        for i in range(no_ts + 1, size):
            if not vocab[i]:
                vocab[i] = f"<|{(i - no_ts - 1) * 0.02:.2f}|>"
        return cls(vocab, text)

    @classmethod
    def from_vocabulary_txt(cls, text: str, tokenizer_json: str | None = None) -> "WhisperTokenizer":
        """Build from CTranslate2's vocabulary.txt (one piece per line), optionally with tokenizer.json for encode."""
        return cls(text.split("\n")[:-1] if text.endswith("\n") else text.split("\n"), tokenizer_json)

    def __len__(self) -> int:
        return len(self.vocab)

    def is_special(self, i: int) -> bool:
        return int(i) >= self.eot

    def encode(self, text: str) -> list[int]:
        """Text -> ids (no special tokens)."""
        if self._hf is not None:
            return self._hf.encode(text, add_special_tokens=False).ids
        return self._greedy_encode(text)

    def _greedy_encode(self, text: str) -> list[int]:
        """Longest-match encoding over the byte-level pieces: valid ids, not always BPE's exact split."""
        byte_to_char = {b: c for c, b in _byte_decoder().items()}
        s = "".join(byte_to_char[b] for b in text.encode("utf-8"))
        out, i = [], 0
        longest = 32
        while i < len(s):
            for j in range(min(len(s), i + longest), i, -1):
                if s[i:j] in self.ids and self.ids[s[i:j]] < self.eot:
                    out.append(self.ids[s[i:j]])
                    i = j
                    break
            else:
                raise ValueError(f"cannot encode {text!r} with this vocabulary")
        return out

    def decode(self, ids: Iterable[int]) -> str:
        """Ids -> text, skipping special and timestamp tokens."""
        table = _byte_decoder()
        data = bytearray()
        for i in ids:
            i = int(i)
            if i >= self.eot:
                continue
            data.extend(table[c] for c in self.vocab[i])
        return data.decode("utf-8", errors="replace")

    def piece(self, i: int) -> str:
        """The piece of one id, with a leading "Ġ" (space) shown as the word-start marker "▁"."""
        p = self.vocab[int(i)]
        return WORD_START + p[1:] if p.startswith("Ġ") else p

    @cached_property
    def word_start_ids(self) -> frozenset[int]:
        """Text ids whose piece begins with a space: what bounds a continuation to whole words."""
        return frozenset(i for i, p in enumerate(self.vocab[: self.eot]) if p.startswith("Ġ"))

    def pieces(self, ids: Iterable[int]) -> list[str]:
        return [self.piece(i) for i in ids]

    def sot_sequence(self, language: str | None = None, task: str = "transcribe") -> list[int]:
        """<|startoftranscript|> [<|lang|> <|task|>] <|notimestamps|>; English-only models take no language/task."""
        seq = [self.sot]
        if self.language_ids and len(self.vocab) >= 51865:
            lang = language or "en"
            if lang not in self.language_ids:
                raise ValueError(f"unknown Whisper language {lang!r}")
            seq += [self.language_ids[lang], self.translate if task == "translate" else self.transcribe]
        elif task == "translate":
            raise ValueError("an English-only Whisper model cannot translate")
        return seq + [self.no_timestamps]

    def to_json(self) -> str:
        """What a streamst checkpoint stores: the vocabulary and, if known, the tokenizer.json text."""
        return json.dumps({"vocab": self.vocab, "tokenizer_json": self.tokenizer_json})

    @classmethod
    def from_json(cls, text: str) -> "WhisperTokenizer":
        data = json.loads(text)
        return cls(data["vocab"], data.get("tokenizer_json"))
