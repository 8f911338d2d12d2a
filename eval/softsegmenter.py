"""SoftSegmenter alignment (OmniSTEval 0.1.10), used to re-segment a talk for LongYAAL.

Reference and hypothesis words are NFKC-normalised and lower-cased, optionally split with the Moses
tokenizer (``lang`` not None, zh or ja; sacremoses with aggressive dash splitting and no escaping, the
Python port of the Perl tokenizer that OmniSTEval calls). A Needleman-Wunsch DP maximises the summed
similarity of matched pairs (Jaccard over character sets, exact match for chars, -inf when exactly one
side is punctuation); gaps cost nothing and ties go MATCH > DELETE > INSERT. Hypothesis words left on
a gap join the neighbouring reference word they resemble more (ties: the previous one). Each DP row is
computed at once with numpy (insertions are free, so a row is a running maximum).
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Sequence

import numpy as np

PUNCT = frozenset(".!?,;:-()") | frozenset("。！？，；：—（）") | frozenset("。！？，；：ー（）")

_MATCH, _DELETE, _INSERT = 0, 1, 2


@dataclass
class Token:
    """One alignment unit: its text, the word it came from (first sub-token only) and a payload index."""

    text: str
    item: int            # index of the original word (hyp) or of the reference segment (ref)
    main: bool = True


@lru_cache(maxsize=8)
def _moses(lang: str) -> Callable[[str], list[str]]:
    from sacremoses import MosesTokenizer

    tok = MosesTokenizer(lang=lang)

    @lru_cache(maxsize=200_000)
    def split(text: str) -> tuple[str, ...]:
        return tuple(tok.tokenize(text, aggressive_dash_splits=True, escape=False))

    return split


def tokenize(words: Sequence[str], items: Sequence[int], lang: str | None) -> list[Token]:
    """NFKC + lower-case each word, then Moses-split it unless ``lang`` is None, zh or ja."""
    split = (lambda t: [t]) if lang is None or lang in ("zh", "ja") else _moses(lang)
    out: list[Token] = []
    for word, item in zip(words, items):
        text = unicodedata.normalize("NFKC", word).lower()
        for k, piece in enumerate(split(text) if text else []):
            out.append(Token(piece, item, k == 0))
    return out


def _similarity_matrix(ref: Sequence[str], hyp: Sequence[str], char_level: bool) -> np.ndarray:
    ref_p = np.array([t in PUNCT for t in ref], dtype=bool)
    hyp_p = np.array([t in PUNCT for t in hyp], dtype=bool)
    if char_level:
        vocab: dict[str, int] = {}
        r = np.array([vocab.setdefault(t, len(vocab)) for t in ref])
        h = np.array([vocab.setdefault(t, len(vocab)) for t in hyp])
        sim = (r[:, None] == h[None, :]).astype(np.float64)
    else:
        alphabet: dict[str, int] = {}
        for t in list(ref) + list(hyp):
            for c in t:
                alphabet.setdefault(c, len(alphabet))
        def sets(tokens):
            m = np.zeros((len(tokens), max(1, len(alphabet))), dtype=np.float32)
            for k, t in enumerate(tokens):
                m[k, [alphabet[c] for c in set(t)]] = 1.0
            return m
        rs, hs = sets(ref), sets(hyp)
        inter = np.rint(rs @ hs.T).astype(np.int64)
        union = rs.sum(1).astype(np.int64)[:, None] + hs.sum(1).astype(np.int64)[None, :] - inter
        with np.errstate(invalid="ignore", divide="ignore"):
            sim = np.where(union > 0, inter / np.maximum(union, 1), 0.0)
    sim[ref_p[:, None] ^ hyp_p[None, :]] = -np.inf
    return sim


def align(ref: Sequence[str], hyp: Sequence[str], char_level: bool) -> list[tuple[int | None, int | None]]:
    """Aligned pairs (ref index or None, hyp index or None), as OmniSTEval ``align_sequences``."""
    n, m = len(ref), len(hyp)
    back = np.full((n + 1, m + 1), _INSERT, dtype=np.int8)
    back[:, 0] = _DELETE
    back[0, 0] = _MATCH
    if n and m:
        sim = _similarity_matrix(ref, hyp, char_level)
        prev = np.zeros(m + 1)
        for i in range(1, n + 1):
            match = prev[:-1] + sim[i - 1]
            delete = prev[1:]
            best = np.maximum(match, delete)        # candidate of column j from the row above
            op = np.where(match >= delete, _MATCH, _DELETE)
            row = np.empty(m + 1)
            row[0] = 0.0
            row[1:] = best
            run = np.maximum.accumulate(row)         # free insertions along the row
            # an insertion wins only when strictly better than match/delete at that cell
            take_insert = np.empty(m, dtype=bool)
            take_insert = best < run[:-1]
            back[i, 1:] = np.where(take_insert, _INSERT, op)
            prev = run
    pairs: list[tuple[int | None, int | None]] = []
    i, j = n, m
    while i > 0 or j > 0:
        o = back[i, j]
        if o == _MATCH:
            pairs.append((i - 1, j - 1)); i -= 1; j -= 1
        elif o == _DELETE:
            pairs.append((i - 1, None)); i -= 1
        else:
            pairs.append((None, j - 1)); j -= 1
    pairs.reverse()
    return pairs


def _similarity(a: str, b: str, char_level: bool) -> float:
    if (a in PUNCT) ^ (b in PUNCT):
        return -np.inf
    if char_level:
        return float(a == b)
    sa, sb = set(a), set(b)
    inter = len(sa & sb)
    union = len(sa) + len(sb) - inter
    return inter / union if union else 0.0


def assign(ref: Sequence[Token], hyp: Sequence[Token], pairs: Sequence[tuple[int | None, int | None]],
           char_level: bool) -> list[tuple[int, int]]:
    """(hyp token index, reference token index) for every hypothesis token kept (``process_alignment``)."""
    refs = [p[0] for p in pairs]

    def next_ref(idx: int) -> tuple[int, int | None]:
        while idx < len(refs) and refs[idx] is None:
            idx += 1
        return (idx, None) if idx == len(refs) else (idx, refs[idx])

    out: list[tuple[int, int]] = []
    last_ref: int | None = None
    lookahead: int | None = None
    nexti = 0
    for i, (r, h) in enumerate(pairs):
        if r is None and i >= nexti:
            if h is not None:
                nexti, nxt = next_ref(i)
                if nxt is None and last_ref is None:
                    raise ValueError("no reference word to align to")
                nxt_score = _similarity(hyp[h].text, ref[nxt].text, char_level) if nxt is not None else -np.inf
                prev_score = _similarity(hyp[h].text, ref[last_ref].text, char_level) if last_ref is not None else -np.inf
                if nxt_score > prev_score:
                    r = nxt
                    lookahead = nxt
                else:
                    r = last_ref
                    nexti = i
                    lookahead = None
        elif r is None and h is not None:
            r = lookahead
        if r is not None and i >= nexti:
            last_ref = r
        if h is not None and r is not None:
            out.append((h, r))
    return out


def soft_segment(ref_words: Sequence[str], ref_segment_of: Sequence[int], hyp_words: Sequence[str],
                 n_segments: int, lang: str | None = None, char_level: bool = False) -> list[list[int]]:
    """Indices of the hypothesis words (units) that fall into each of ``n_segments`` reference segments.

    ``ref_words`` are the talk's reference units (lower-cased by the caller as OmniSTEval does) with the
    segment index of each in ``ref_segment_of`` (0-based within the talk).
    """
    ref = tokenize(ref_words, ref_segment_of, lang)
    hyp = tokenize(hyp_words, range(len(hyp_words)), lang)
    pairs = align([t.text for t in ref], [t.text for t in hyp], char_level)
    segments: list[list[int]] = [[] for _ in range(n_segments)]
    for h, r in assign(ref, hyp, pairs, char_level):
        if hyp[h].main:
            segments[ref[r].item].append(hyp[h].item)
    return segments
