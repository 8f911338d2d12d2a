"""English transcript normalisation for WER against plain lower-case references (LibriVox / pocketsphinx).

Lower-case; "mr." -> "mister" (and mrs., dr., st.) as the references spell them; hyphens and dashes become
spaces; every other character that is not a letter, digit or apostrophe is dropped. Nothing else (no number
or spelling normalisation), so the figure stays close to a raw WER.
"""
from __future__ import annotations

import re

_ABBREVIATIONS = {"mr": "mister", "mrs": "missus", "dr": "doctor", "st": "saint"}


def normalize(text: str) -> list[str]:
    text = text.lower().replace("-", " ").replace("\u2014", " ").replace("\u2013", " ")
    words = []
    for raw in text.split():
        word = re.sub(r"[^a-z0-9']", "", raw).strip("'")
        if raw.rstrip(".") in _ABBREVIATIONS and raw.endswith("."):
            word = _ABBREVIATIONS[raw.rstrip(".")]
        if word:
            words.append(word)
    return words


def word_errors(reference: list[str], hypothesis: list[str]) -> int:
    """Levenshtein distance in words (substitutions + deletions + insertions)."""
    previous = list(range(len(hypothesis) + 1))
    for i, ref_word in enumerate(reference, 1):
        current = [i] + [0] * len(hypothesis)
        for j, hyp_word in enumerate(hypothesis, 1):
            current[j] = min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (ref_word != hyp_word))
        previous = current
    return previous[-1]


def corpus_wer(references: list[str], hypotheses: list[str]) -> float:
    """Word error rate over a corpus, after `normalize`, as a fraction."""
    errors = sum(word_errors(normalize(r), normalize(h)) for r, h in zip(references, hypotheses))
    words = sum(len(normalize(r)) for r in references)
    return errors / max(1, words)
