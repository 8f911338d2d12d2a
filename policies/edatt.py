"""`edatt`: EDAtt (Papi et al., Interspeech 2023, "Attention as a guide for simultaneous speech translation").

A new token may be written only while its attention mass on the last `lambda` encoder frames stays below
`alpha`: mass there means the token leans on audio that may still be incomplete. The policy commits the
tokens before the first one that fails the test.

Normalisation: by default (`norm=l2`) each token's attention row (one layer, heads combined) is scaled to unit
L2 norm before the last `lambda` values are summed, as FBK's reference agent does, so published alpha values
carry over; `norm=none` sums the raw softmax weights (a probability mass in [0, 1]). FBK's agent also drops the
last frame first; `exclude_last=1` does the same (off by default: our causal encoder has no sink frame).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from streamst.policies.attention import (
    check_heads,
    drop_last_frame,
    l2_normalise_rows,
    require_attention,
    token_frame_matrix,
)
from streamst.policies.base import Decision, PolicyBase, PolicyView, format_spec, register


def last_frames_mass(matrix: np.ndarray, n_last: int) -> np.ndarray:
    """Per token, the summed attention on the last `n_last` frames (all frames if there are fewer)."""
    return matrix[:, max(0, matrix.shape[1] - n_last):].sum(axis=1)


@register("edatt")
@dataclass(frozen=True)
class EDAtt(PolicyBase):
    stop_hooks = True  # late_token bounds decoding
    alpha: float = 0.2
    lambda_: int = 2
    layer: int = -1
    heads: str = "mean"
    norm: str = "l2"
    exclude_last: bool = False

    def __post_init__(self) -> None:
        if self.lambda_ < 1:
            raise ValueError("lambda must be >= 1")
        if self.norm not in ("l2", "none"):
            raise ValueError("norm must be 'l2' or 'none'")
        check_heads(self.heads)

    def init_state(self) -> Any:
        return None

    def _late(self, att: np.ndarray) -> np.ndarray:
        """Per token of att [layers, heads, tokens, frames]: does it lean on the last `lambda` frames?"""
        matrix = token_frame_matrix(att, self.layer, self.heads)
        if self.exclude_last:
            matrix = drop_last_frame(matrix)
        if matrix.shape[1] == 0:
            return np.ones(matrix.shape[0], dtype=bool)
        if self.norm == "l2":
            matrix = l2_normalise_rows(matrix)
        return last_frames_mass(matrix, self.lambda_) >= self.alpha

    def late_token(self, view: PolicyView, state: Any) -> Callable[[np.ndarray], bool] | None:
        """`decide`'s test for one token's attention [layers, heads, 1, frames], so the session stops decoding
        a little past the first token that fails it; None at the end of the stream."""
        if view.finished:
            return None
        return lambda attention: bool(self._late(attention)[0])

    def decide(self, view: PolicyView, state: Any) -> tuple[Decision, Any]:
        cand = view.candidate
        if not cand.tokens:
            return Decision(0), state
        att = require_attention(cand.attention, len(cand.tokens), self.name)
        if view.finished or cand.ended_in_pause:  # every token heard whole
            return Decision(len(cand.tokens)), state
        stop = np.flatnonzero(self._late(att))
        return Decision(int(stop[0]) if stop.size else len(cand.tokens)), state

    def spec(self) -> str:
        return format_spec(self)
