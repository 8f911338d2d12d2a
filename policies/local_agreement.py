"""`la`: local agreement LA-n (Liu et al. 2020; Polák et al. 2022) - write what n hypotheses in a row agree on.

After each chunk the full hypothesis is the committed words followed by the candidate's complete words (the
last one counts only at the end of the stream). The policy commits the longest word prefix, beyond what is
committed, on which this hypothesis and the previous n-1 agree, comparing words at the same absolute position.
"""
from __future__ import annotations

from dataclasses import dataclass

from streamst.policies.base import WORD_START, Decision, PolicyBase, PolicyView, format_spec, register, word_starts

# One remembered hypothesis: the number of words committed when it was made, then its candidate words.
Hypothesis = tuple[int, tuple[str, ...]]


def complete_words(pieces: list[str]) -> list[str]:
    """The candidate's complete words: those followed by a word-start piece (the stream has not ended)."""
    starts = word_starts(pieces)
    return ["".join(pieces[s:e]).replace(WORD_START, " ").strip() for s, e in zip(starts, starts[1:])]


def word_at(hyp: Hypothesis, position: int) -> str | None:
    """The word a remembered hypothesis had at an absolute word position (None if it had none there)."""
    committed, words = hyp
    i = position - committed
    return words[i] if 0 <= i < len(words) else None


@register("la")
@dataclass(frozen=True)
class LocalAgreement(PolicyBase):
    n: int = 2

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError("n must be >= 1")

    def init_state(self) -> tuple[Hypothesis, ...]:
        return ()

    def decide(self, view: PolicyView, state: tuple[Hypothesis, ...]) -> tuple[Decision, tuple[Hypothesis, ...]]:
        cand = view.candidate
        if view.finished:
            return Decision(len(cand.tokens)), ()
        words = complete_words(cand.pieces)
        current: Hypothesis = (len(view.committed), tuple(words))
        history = (state + (current,))[-self.n:]
        new_state = history[-(self.n - 1):] if self.n > 1 else ()
        if len(history) < self.n:
            return Decision(0), new_state
        agreed = 0
        while agreed < len(words):
            position = len(view.committed) + agreed
            if any(word_at(h, position) != words[agreed] for h in history[:-1]):
                break
            agreed += 1
        # the first `agreed` words end where word number `agreed` starts (it exists: only complete words agree)
        tokens = word_starts(cand.pieces)[agreed] if agreed else 0
        return Decision(tokens), new_state

    def spec(self) -> str:
        return format_spec(self)
