"""`streamatt`: StreamAtt (Papi et al. 2024) - AlignAtt on an unbounded stream with bounded text and audio history.

Decisions are AlignAtt's. After each commit (rounded down to whole words here, so the history below is exactly
what the session keeps) the policy chooses:
- text history (`keep_words`): the last `history_words` committed words (`history=words`), or the words after
  the last one ending in strong punctuation, at most `punct_max_words` (`history=punct`);
- audio history (`drop_frames`): when words leave the text history, the frames before the earliest frame that
  any kept token, or any not yet committed candidate token, is aligned to are dropped (with no kept token,
  the frames before the last dropped token's frame). `max_memory_s` caps the memory, so silence or a
  decoder that writes nothing cannot make it grow (0 disables the cap).

The kept tokens' alignment needs the forced prefix's cross-attention: the session fills
`PolicyView.prefix_pieces` and `PolicyView.prefix_attention` from the same decoder pass as the candidate.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from streamst.policies.alignatt import align_view, first_token_in_window
from streamst.policies.attention import check_heads, require_attention
from streamst.policies.base import WORD_START, Decision, PolicyBase, PolicyView, format_spec, register, word_starts

STRONG_PUNCTUATION = ".!?:;。！？：；"
_CLOSERS = "\"')]}»”’"


def whole_word_tokens(pieces: list[str], n: int) -> int:
    """`n` rounded down to a word boundary: the largest word start <= n (what the session commits mid-stream)."""
    return max((s for s in word_starts(pieces) if s <= n), default=0)


def word_spans(pieces: list[str] | tuple[str, ...], offset: int = 0) -> list[tuple[int, int]]:
    """(first, end) token indices of each word in `pieces`, shifted by `offset`."""
    starts = word_starts(list(pieces))
    ends = starts[1:] + [len(pieces)]
    return [(s + offset, e + offset) for s, e in zip(starts, ends)]


def word_text(pieces: list[str]) -> str:
    return "".join(pieces).replace(WORD_START, " ").strip()


def ends_sentence(word: str) -> bool:
    """True when a word ends with strong punctuation (closing quotes and brackets ignored)."""
    core = word.rstrip(_CLOSERS)
    return bool(core) and core[-1] in STRONG_PUNCTUATION


@register("streamatt")
@dataclass(frozen=True)
class StreamAtt(PolicyBase):
    frames: int = 4
    history_words: int = 20
    history: str = "words"
    punct_max_words: int = 60
    max_memory_s: float = 30.0
    layer: int = -1
    heads: str = "mean"
    exclude_last: bool = False
    zscore: bool = False

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError("frames must be >= 1")
        if self.history not in ("words", "punct"):
            raise ValueError("history must be 'words' or 'punct'")
        if self.history_words < 0 or self.punct_max_words < 0:
            raise ValueError("history_words and punct_max_words must be >= 0")
        if self.max_memory_s < 0:
            raise ValueError("max_memory_s must be >= 0 (0: no cap)")
        check_heads(self.heads)

    def init_state(self) -> Any:
        return None

    def kept_words(self, words: list[str]) -> int:
        """How many of the last committed words stay as the decoder's forced prefix."""
        if self.history == "words":
            return min(self.history_words, len(words))
        after = next((i for i, w in enumerate(reversed(words)) if ends_sentence(w)), len(words))
        return min(after, self.punct_max_words)

    def _capped(self, drop: int, n_frames: int, frame_ms: float) -> int:
        if self.max_memory_s > 0 and frame_ms > 0:
            drop = max(drop, n_frames - math.ceil(self.max_memory_s * 1000.0 / frame_ms))
        return min(max(drop, 0), n_frames)

    def decide(self, view: PolicyView, state: Any) -> tuple[Decision, Any]:
        cand = view.candidate
        if not cand.tokens:
            return Decision(0, drop_frames=self._capped(0, view.frames, view.frame_ms)), state
        if view.finished:
            require_attention(cand.attention, len(cand.tokens), self.name)
            return Decision(len(cand.tokens)), state
        prefix_al, cand_al, n_range = align_view(
            view, self.name, self.layer, self.heads,
            exclude_last=self.exclude_last, zscore=self.zscore, need_prefix=True,
        )
        n_frames = int(np.asarray(cand.attention).shape[3])
        if cand.ended_in_pause:  # every token heard whole: the session commits them all (`Session.commit`)
            commit = len(cand.tokens)
        else:
            commit = whole_word_tokens(cand.pieces, first_token_in_window(cand_al, n_range, self.frames))

        # the committed history after this decision: the kept prefix, then the newly committed words
        pieces = list(view.prefix_pieces) + list(cand.pieces[:commit])
        n_prefix = len(view.prefix_pieces)
        spans = word_spans(pieces)  # as the session counts them: a committed "," continues the prefix's last word
        keep = self.kept_words([word_text(pieces[a:b]) for a, b in spans])

        drop = 0
        if keep < len(spans):
            aligned = np.concatenate([prefix_al, cand_al])
            first_kept = spans[len(spans) - keep][0] if keep else n_prefix + commit
            rows = aligned[first_kept:]  # kept history and the candidate tokens not committed yet
            drop = int(rows.min()) if rows.size else int(aligned[n_prefix + commit - 1])
        return Decision(commit, drop_frames=self._capped(drop, n_frames, view.frame_ms), keep_words=keep), state

    def spec(self) -> str:
        return format_spec(self)
