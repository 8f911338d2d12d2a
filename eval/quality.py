"""Translation and recognition quality: BLEU and chrF through sacrebleu, WER and CER.

BLEU and chrF are corpus-level sacrebleu scores (default 13a tokenizer for BLEU, as SimulEval and
OmniSTEval) and come with sacrebleu's signature string so a number can be reproduced.

WER/CER normalisation (documented, applied to hypothesis and reference alike): Unicode NFKC, lower-case,
every character whose Unicode category starts with P (punctuation) replaced by a space, whitespace
collapsed. WER counts word edits over the total number of reference words; CER counts character edits
(spaces removed, for zh/ja) over the total number of reference characters. Both are percentages; a corpus
whose references are all empty has WER None.
"""
from __future__ import annotations

import unicodedata
from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass
class CorpusScore:
    score: float
    signature: str


def bleu(hypotheses: Sequence[str], references: Sequence[str], tokenize: str = "13a") -> CorpusScore:
    """Corpus BLEU with one reference per segment."""
    from sacrebleu.metrics import BLEU

    metric = BLEU(tokenize=tokenize)
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return CorpusScore(result.score, str(metric.get_signature()))


def chrf(hypotheses: Sequence[str], references: Sequence[str]) -> CorpusScore:
    """Corpus chrF (sacrebleu defaults: char order 6, beta 2)."""
    from sacrebleu.metrics import CHRF

    metric = CHRF()
    result = metric.corpus_score(list(hypotheses), [list(references)])
    return CorpusScore(result.score, str(metric.get_signature()))


def normalize(text: str) -> str:
    """The WER/CER normalisation described in the module docstring."""
    text = unicodedata.normalize("NFKC", text).lower()
    text = "".join(" " if unicodedata.category(c).startswith("P") else c for c in text)
    return " ".join(text.split())


def edit_distance(ref: Sequence, hyp: Sequence) -> int:
    """Levenshtein distance with unit costs; each DP row is a running minimum in numpy."""
    if not ref:
        return len(hyp)
    if not hyp:
        return len(ref)
    vocab: dict = {}
    r = np.array([vocab.setdefault(x, len(vocab)) for x in ref])
    h = np.array([vocab.setdefault(x, len(vocab)) for x in hyp])
    cols = np.arange(len(h) + 1)
    prev = cols.copy()
    for i in range(1, len(r) + 1):
        diag = prev[:-1] + (h != r[i - 1])
        up = prev[1:] + 1
        best = np.minimum(diag, up)
        row = np.concatenate(([i], best))
        # insertions along the row: row[j] = min_k (row[k] + j - k)
        prev = np.minimum.accumulate(row - cols) + cols
    return int(prev[-1])


def wer(hypotheses: Sequence[str], references: Sequence[str]) -> float | None:
    """Corpus word error rate in percent after :func:`normalize`."""
    errors = total = 0
    for hyp, ref in zip(hypotheses, references):
        r, h = normalize(ref).split(), normalize(hyp).split()
        errors += edit_distance(r, h)
        total += len(r)
    return 100.0 * errors / total if total else None


def cer(hypotheses: Sequence[str], references: Sequence[str]) -> float | None:
    """Corpus character error rate in percent after :func:`normalize`, spaces removed."""
    errors = total = 0
    for hyp, ref in zip(hypotheses, references):
        r, h = list(normalize(ref).replace(" ", "")), list(normalize(hyp).replace(" ", ""))
        errors += edit_distance(r, h)
        total += len(r)
    return 100.0 * errors / total if total else None
