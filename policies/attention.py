"""Shared cross-attention helpers for the attention policies (EDAtt, AlignAtt, StreamAtt).

Everything works on numpy arrays shaped [layers, heads, tokens, frames] (raw softmax weights, as the session
hands them over) and reduces them to one [tokens, frames] matrix: pick a layer, combine heads, then optionally
drop the last frame (an attention sink in some models) and normalise.
"""
from __future__ import annotations

import numpy as np

ZSCORE_MIN_TOKENS = 4  # below this, per-frame statistics across tokens are meaningless: use raw weights
_EPS = 1e-8


def check_heads(heads: str) -> None:
    """Validate a head selector: `mean`, `max`, one head index, or indices joined by `+` (averaged)."""
    if heads in ("mean", "max"):
        return
    try:
        [int(h) for h in heads.split("+")]
    except ValueError:
        raise ValueError(f"heads must be 'mean', 'max', an index or indices joined by '+', not {heads!r}") from None


def require_attention(attention: np.ndarray | None, n_tokens: int, policy: str, what: str = "candidate") -> np.ndarray:
    """The attention array checked for shape; a clear ValueError when the model exposes none."""
    if attention is None:
        raise ValueError(
            f"policy {policy!r} needs the decoder's cross-attention, but the model exposes none "
            f"({what} attention is None); use waitk, la or offline with this model"
        )
    att = np.asarray(attention, dtype=np.float32)
    if att.ndim != 4 or att.shape[2] != n_tokens:
        raise ValueError(
            f"policy {policy!r}: {what} attention must be [layers, heads, {n_tokens} tokens, frames], "
            f"got shape {tuple(att.shape)}"
        )
    return att


def token_frame_matrix(attention: np.ndarray, layer: int, heads: str) -> np.ndarray:
    """Reduce [layers, heads, tokens, frames] to [tokens, frames]: one layer, heads combined as `heads` says."""
    n_layers, n_heads = attention.shape[:2]
    if not -n_layers <= layer < n_layers:
        raise ValueError(f"layer={layer} is out of range for a decoder with {n_layers} layers")
    per_head = attention[layer]
    if heads == "mean":
        return per_head.mean(axis=0)
    if heads == "max":
        return per_head.max(axis=0)
    idx = [int(h) for h in heads.split("+")]
    bad = [h for h in idx if not -n_heads <= h < n_heads]
    if bad:
        raise ValueError(f"head index {bad[0]} is out of range for {n_heads} heads")
    return per_head[idx].mean(axis=0)


def drop_last_frame(matrix: np.ndarray) -> np.ndarray:
    """[tokens, frames] without its last frame (treated as an attention sink)."""
    return matrix[:, :-1]


def l2_normalise_rows(matrix: np.ndarray) -> np.ndarray:
    """Each token's attention row scaled to unit L2 norm (what FBK's EDAtt does before thresholding)."""
    norms = np.linalg.norm(matrix, axis=1, keepdims=True)
    return matrix / np.maximum(norms, _EPS)


def zscore_frames(matrix: np.ndarray) -> np.ndarray:
    """Per-frame z-score across tokens: how much more a token attends to a frame than the other tokens do.

    With fewer than ZSCORE_MIN_TOKENS tokens the statistics are degenerate, so the matrix is returned unchanged.
    """
    if matrix.shape[0] < ZSCORE_MIN_TOKENS:
        return matrix
    mean = matrix.mean(axis=0, keepdims=True)
    std = matrix.std(axis=0, keepdims=True)
    return (matrix - mean) / np.maximum(std, _EPS)


def most_attended_frames(matrix: np.ndarray) -> np.ndarray:
    """For each token row, the index of the frame it attends to most (the first one on ties)."""
    if matrix.shape[1] == 0:
        return np.zeros(matrix.shape[0], dtype=np.int64)
    return matrix.argmax(axis=1)


def alignments(
    attention: np.ndarray, layer: int, heads: str, *, exclude_last: bool, zscore: bool
) -> tuple[np.ndarray, int]:
    """Each token's aligned frame and the number of frames that alignment ranged over.

    Frame indices are those of the memory (dropping the sink frame only shortens the range).
    """
    matrix = token_frame_matrix(attention, layer, heads)
    if exclude_last:
        matrix = drop_last_frame(matrix)
    if zscore:
        matrix = zscore_frames(matrix)
    return most_attended_frames(matrix), matrix.shape[1]
