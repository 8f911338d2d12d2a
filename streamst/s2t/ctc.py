"""CTC compression as FBK-fairseq's CtcSupport does it: consecutive frames with the same greedy CTC label are
merged into one, so the layers after the CTC layer (and the decoder) see one vector per predicted unit.

The merge is a weights matrix W [frames, groups]: compressed = W^T x. The same W maps attention over the
compressed frames back to the audio frames (each frame gets its share of its group's weight), so rows still sum
to one and a frame index still means 40 ms of audio.
"""
from __future__ import annotations

import math
from itertools import groupby

import torch
from torch import Tensor


def label_runs(log_probs: Tensor) -> list[tuple[int, int]]:
    """(label, run length) of the greedy CTC path of [frames, vocab] scores."""
    return [(label, len(list(run))) for label, run in groupby(log_probs.argmax(-1).tolist())]


def cap_runs(runs: list[tuple[int, int]], max_out: int) -> list[tuple[int, int]]:
    """Merge neighbouring runs so there are at most `max_out` (FBK's ensure_max_ctc_out_len; <= 0: no cap).

    Each merged run takes the label with the most frames (the first such on ties) and the summed length.
    """
    if max_out <= 0 or len(runs) <= max_out:
        return runs
    factor = math.ceil(len(runs) / max_out)
    merged = []
    for i in range(0, len(runs), factor):
        counts: dict[int, int] = {}
        best, best_count = None, 0
        for label, n in runs[i:i + factor]:
            counts[label] = counts.get(label, 0) + n
            if counts[label] > best_count:
                best, best_count = label, counts[label]
        merged.append((best, sum(n for _, n in runs[i:i + factor])))
    return merged


def compression_weights(probs: Tensor, runs: list[tuple[int, int]], strategy: str, fixed_ratio: int = 4) -> Tensor:
    """W [frames, groups] for FBK's strategies: avg (1/n), weighted (the label's probability, normalised),
    softmax (softmax of those probabilities), fixed (blocks of `fixed_ratio` frames)."""
    frames = probs.shape[0]
    if strategy == "fixed":
        groups = math.ceil(frames / fixed_ratio)
        w = torch.zeros(frames, groups, dtype=probs.dtype)
        for g in range(groups):
            lo, hi = g * fixed_ratio, min((g + 1) * fixed_ratio, frames)
            w[lo:hi, g] = 1.0 / (hi - lo)
        return w
    w = torch.zeros(frames, len(runs), dtype=probs.dtype)
    start = 0
    for g, (label, n) in enumerate(runs):
        if strategy == "avg":
            w[start:start + n, g] = 1.0 / n
        else:
            p = probs[start:start + n, label]
            p = p.softmax(0) if strategy == "softmax" else p
            w[start:start + n, g] = p / p.sum()
        start += n
    return w


def compress(x: Tensor, ctc_logits: Tensor, strategy: str, fixed_ratio: int = 4,
             max_out: int = -1) -> tuple[Tensor, Tensor]:
    """x [frames, D] and its CTC logits [frames, V] -> (compressed [groups, D], W [frames, groups])."""
    probs = ctc_logits.softmax(-1)
    runs = cap_runs(label_runs(probs), max_out)
    w = compression_weights(probs, runs, strategy, fixed_ratio).to(x)
    return w.T @ x, w
