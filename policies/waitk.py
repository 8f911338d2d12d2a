"""`waitk`: after k units of source, write one word per further unit (Ma et al. 2019, on speech chunks).

`unit=chunk` counts source chunks of `chunk_ms` (the session's chunk length if 0); `unit=word` counts
source words estimated from the CTC head. Whole words are written while source units > written words + k.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from streamst.policies.base import Decision, PolicyBase, PolicyView, format_spec, register, word_starts


@register("waitk")
@dataclass(frozen=True)
class WaitK(PolicyBase):
    stop_hooks = True  # max_commit_words bounds decoding
    k: int = 3
    unit: str = "chunk"
    chunk_ms: float = 0.0

    def __post_init__(self) -> None:
        if self.k < 0:
            raise ValueError("k must be >= 0")
        if self.unit not in ("chunk", "word"):
            raise ValueError("unit must be 'chunk' or 'word'")

    @property
    def needs_source_words(self) -> bool:
        return self.unit == "word"

    def init_state(self) -> Any:
        return None

    def _source_units(self, view: PolicyView) -> int:
        if self.unit == "word":
            return view.source_words or 0
        if self.chunk_ms > 0:
            return int(view.source_ms // self.chunk_ms)
        return view.chunks

    def max_commit_words(self, view: PolicyView, state: Any) -> int | None:
        """Words `decide` may commit now, known before decoding (the session decodes no further than that plus
        its partial caption); None at the end of the stream or when source words come from CTC."""
        if view.finished or self.unit == "word":
            return None
        return max(0, self._source_units(view) - self.k - len(view.committed))

    def decide(self, view: PolicyView, state: Any) -> tuple[Decision, Any]:
        cand = view.candidate
        if view.finished:
            return Decision(len(cand.tokens)), state
        allowed = self._source_units(view) - self.k - len(view.committed)
        if allowed <= 0:
            return Decision(0), state
        starts = word_starts(cand.pieces) + [len(cand.tokens)]
        # commit `allowed` whole words at most: up to the start of word number `allowed`
        n_words = len(starts) - 1
        return Decision(starts[min(allowed, n_words)]), state

    def spec(self) -> str:
        return format_spec(self)
