"""mwerSegmenter-style re-segmentation, boundary for boundary as ``mweralign.align_texts`` (1.4.x, defaults).

The hypothesis word stream of one talk is cut into N pieces that minimise the total word edit distance
against the N reference sentences (Matusov et al. 2005; the RWTH code ported by mweralign). Defaults of
``align_texts`` are reproduced: case-insensitive for ASCII letters only (C ``tolower``), unit costs, no
legacy internal-word penalty, tokens split on C whitespace. Tie-breaking follows the C++ code: on equal
cost a deletion beats an insertion, which beats a substitution.

The DP runs over hypothesis positions j; each column over the reference (with one boundary marker per
sentence) is computed at once with numpy: the within-column deletion chain is a running minimum.
"""
from __future__ import annotations

import re
from typing import Sequence

import numpy as np

_C_SPACE = re.compile(r"[ \t\n\v\f\r]+")
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_SEG = 1  # id of the sentence boundary marker "</s>"; words get ids from 2


def c_split(text: str) -> list[str]:
    """Split on the characters C's ``isspace`` accepts (what ``istream >> string`` does)."""
    return [t for t in _C_SPACE.split(text) if t]


def _ids(tokens: Sequence[str], vocab: dict[str, int]) -> np.ndarray:
    out = np.empty(len(tokens), dtype=np.int64)
    for k, tok in enumerate(tokens):
        key = tok.translate(_ASCII_LOWER)
        if key == "</s>":
            out[k] = _SEG
            continue
        out[k] = vocab.setdefault(key, len(vocab) + 2)
    return out


def segment_boundaries(references: Sequence[Sequence[str]], hypothesis: Sequence[str]) -> list[int]:
    """End positions (exclusive) of each of the N hypothesis pieces; the last one is len(hypothesis)."""
    n_seg = len(references)
    n_hyp = len(hypothesis)
    if n_seg == 0:
        raise ValueError("no reference segments")
    if n_hyp == 0:
        return [0] * n_seg
    vocab: dict[str, int] = {}
    ref_tokens: list[str] = []
    for sentence in references:
        ref_tokens.extend(sentence)
        ref_tokens.append("</s>")
    ref = _ids(ref_tokens, vocab)
    hyp = _ids(hypothesis, vocab)
    n_ref = len(ref)
    is_seg = ref == _SEG
    seg_pos = np.flatnonzero(is_seg)          # 0-based position in ref of each boundary (cell i = pos + 1)
    # p[i] = number of non-boundary reference tokens among the first i (deletion cost to reach row i)
    p = np.concatenate(([0], np.cumsum(~is_seg)))
    rows = np.arange(n_ref + 1)
    # index of the last boundary cell at or before each row (0 if none)
    last_seg_cell = np.maximum.accumulate(np.where(np.concatenate(([False], is_seg)), rows, 0))
    entry_ok = np.concatenate(([True], ~is_seg))  # rows where a non-deletion move can enter

    prev_cost = rows.astype(np.int64)           # column j = 0: cost i for every row, markers included
    prev_bp = np.zeros(n_ref + 1, dtype=np.int64)
    bp_table = np.zeros((n_hyp + 1, n_seg), dtype=np.int64)
    big = np.iinfo(np.int64).max // 4

    for j in range(1, n_hyp + 1):
        ins = prev_cost[1:] + 1
        sub = prev_cost[:-1] + (ref != hyp[j - 1])
        take_ins = ins <= sub
        cand = np.where(take_ins, ins, sub)
        cand_bp = np.where(take_ins, prev_bp[1:], prev_bp[:-1])
        key = np.empty(n_ref + 1, dtype=np.int64)
        key[0] = j                                # row 0 of column j costs j, bp 0
        key[1:] = cand - p[1:]
        key[~entry_ok] = big
        run_min = np.minimum.accumulate(key)
        improved = np.empty(n_ref + 1, dtype=bool)
        improved[0] = True
        improved[1:] = key[1:] < run_min[:-1]     # a strictly better entry; ties keep the earlier (deletion)
        origin = np.maximum.accumulate(np.where(improved, rows, 0))
        cost = run_min + p
        origin_bp = np.concatenate(([0], cand_bp))[origin]
        bp = np.where(last_seg_cell > origin, j, origin_bp)
        # what mweralign records at each boundary: the bp of the cell just before the marker
        bp_table[j] = np.where(last_seg_cell[seg_pos] > origin[seg_pos], j, origin_bp[seg_pos])
        prev_cost, prev_bp = cost, bp

    ends = [0] * (n_seg + 1)
    k = n_hyp
    for s in range(n_seg, 0, -1):
        ends[s] = int(bp_table[k, s - 1])
        k = ends[s]
    # piece s (1-based) runs from ends[s] to ends[s + 1]; the last piece ends at n_hyp
    return [min(ends[s + 1], n_hyp) for s in range(1, n_seg)] + [n_hyp]


def align_texts(references: Sequence[str], hypothesis: str) -> list[list[str]]:
    """Re-segment ``hypothesis`` (one talk) into ``len(references)`` lists of its words."""
    ref_tokens = [c_split(r) for r in references]
    hyp_tokens = c_split(hypothesis)
    ends = segment_boundaries(ref_tokens, hyp_tokens)
    pieces, start = [], 0
    for end in ends:
        pieces.append(hyp_tokens[start:max(start, end)])
        start = max(start, end)
    return pieces
