"""Typed events that a `Session` emits: committed words and the replaceable partial tail."""
from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Word:
    """One committed word; never changes once emitted.

    `emitted_ms`: source audio consumed when the word was committed (the delay of AL/LAAL/YAAL).
    `compute_ms`: wall-clock compute spent in this stream so far (delay + compute_ms = SimulEval's `elapsed`).
    `start_ms`/`end_ms`: the source span the word covers, from cross-attention, where the model exposes it.
    """

    text: str
    emitted_ms: float
    compute_ms: float
    start_ms: float | None = None
    end_ms: float | None = None

    def to_dict(self) -> dict:
        return {"type": "word", **asdict(self)}


@dataclass(frozen=True)
class Partial:
    """The current uncommitted continuation; the next Partial replaces it."""

    text: str
    source_ms: float

    def to_dict(self) -> dict:
        return {"type": "partial", **asdict(self)}


Event = Word | Partial
