"""`alignatt`: AlignAtt (Papi et al., Interspeech 2023) - write until a token aligns to the newest audio.

Each new token is aligned to the encoder frame it attends to most (one decoder layer, heads combined); the
policy commits the tokens before the first one aligned to one of the last `frames` frames, since the audio
that token depends on may not be complete yet. `exclude_last=1` ignores the last frame as an attention sink
(FBK's implementation always does; the window then counts the frames before it). `zscore=1` normalises each
frame's attention across tokens (prefix and candidate together) before aligning, as Whisper's aligner does.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from streamst.policies.attention import alignments, check_heads, require_attention
from streamst.policies.base import Decision, PolicyBase, PolicyView, format_spec, register


def align_view(
    view: PolicyView, policy: str, layer: int, heads: str, *, exclude_last: bool, zscore: bool, need_prefix: bool
) -> tuple[np.ndarray, np.ndarray, int]:
    """Aligned frames of the prefix tokens and of the candidate tokens, and the frame range they fall in.

    The prefix rows take part when `need_prefix` (StreamAtt) or when z-scoring (more tokens, better statistics);
    otherwise the prefix alignment is returned empty.
    """
    cand = view.candidate
    att = require_attention(cand.attention, len(cand.tokens), policy)
    n_prefix = len(view.prefix_pieces)
    use_prefix = n_prefix > 0 and (need_prefix or (zscore and view.prefix_attention is not None))
    if use_prefix:
        prefix_att = require_attention(view.prefix_attention, n_prefix, policy, "prefix")
        if prefix_att.shape[:2] != att.shape[:2] or prefix_att.shape[3] != att.shape[3]:
            raise ValueError(
                f"policy {policy!r}: prefix attention {tuple(prefix_att.shape)} does not match "
                f"candidate attention {tuple(att.shape)} in layers, heads or frames"
            )
        att = np.concatenate([prefix_att, att], axis=2)
    else:
        n_prefix = 0
    aligned, n_frames = alignments(att, layer, heads, exclude_last=exclude_last, zscore=zscore)
    return aligned[:n_prefix], aligned[n_prefix:], n_frames


def first_token_in_window(aligned: np.ndarray, n_frames: int, window: int) -> int:
    """Index of the first token aligned to one of the last `window` of `n_frames` frames (len if none)."""
    late = np.flatnonzero(aligned >= n_frames - window)
    return int(late[0]) if late.size else len(aligned)


@register("alignatt")
@dataclass(frozen=True)
class AlignAtt(PolicyBase):
    stop_hooks = True  # late_token bounds decoding
    frames: int = 4
    layer: int = -1
    heads: str = "mean"
    exclude_last: bool = False
    zscore: bool = False

    def __post_init__(self) -> None:
        if self.frames < 1:
            raise ValueError("frames must be >= 1")
        check_heads(self.heads)

    def init_state(self) -> Any:
        return None

    def late_token(self, view: PolicyView, state: Any) -> Callable[[np.ndarray], bool] | None:
        """The test `decide` applies to each candidate token, for one token's attention [layers, heads, 1,
        frames], so the session stops decoding a little past the first token it flags. None at the end of the
        stream, and with z-scoring (each token's alignment then depends on all the others)."""
        if view.finished or self.zscore:
            return None

        def late(attention: np.ndarray) -> bool:
            aligned, n_frames = alignments(attention, self.layer, self.heads, exclude_last=self.exclude_last,
                                           zscore=False)
            return first_token_in_window(aligned, n_frames, self.frames) == 0

        return late

    def decide(self, view: PolicyView, state: Any) -> tuple[Decision, Any]:
        cand = view.candidate
        if not cand.tokens:
            return Decision(0), state
        _, aligned, n_frames = align_view(
            view, self.name, self.layer, self.heads,
            exclude_last=self.exclude_last, zscore=self.zscore, need_prefix=False,
        )
        if view.finished or cand.ended_in_pause:  # every token heard whole
            return Decision(len(cand.tokens)), state
        return Decision(first_token_in_window(aligned, n_frames, self.frames)), state

    def spec(self) -> str:
        return format_spec(self)
