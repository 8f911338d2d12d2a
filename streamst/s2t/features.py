"""Kaldi fbank and CMVN exactly as the reference front ends compute them (fairseq S2T data prep, FBK's online
agents, Hugging Face `Speech2TextFeatureExtractor`).

Fbank: torchaudio's Kaldi-compliant filter bank on the waveform scaled to 16-bit integers, 25 ms windows every
10 ms, edges snipped, no dither. Every frame depends only on its own 400 samples, so frames computed piece by
piece equal frames of the whole signal. CMVN comes in three flavours:

* ``utterance`` (Hugging Face): mean and population std over the utterance, float32 numpy (a zero std, where
  the reference returns NaN, e.g. one frame or digital silence, divides by 1 instead);
* ``utterance_fairseq`` (fairseq's UtteranceCMVN transform): std from E[x^2] - mean^2, floored at 1e-10;
* ``global`` (fairseq's GlobalCMVN from ``gcmvn.npz``): fixed mean and std.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi

WINDOW = 400  # samples per 25 ms frame at 16 kHz
SHIFT = 160  # samples per 10 ms hop
KINDS = ("none", "utterance", "utterance_fairseq", "global")


def n_frames(n_samples: int) -> int:
    """Fbank frames of a signal of `n_samples` (Kaldi, snip_edges=True)."""
    return 0 if n_samples < WINDOW else 1 + (n_samples - WINDOW) // SHIFT


def fbank(audio: torch.Tensor, n_mels: int = 80) -> torch.Tensor:
    """[frames, n_mels] log mel filter bank of 16 kHz float audio in [-1, 1]."""
    audio = audio.reshape(-1).float()
    if audio.numel() < WINDOW:
        return torch.zeros(0, n_mels)
    return kaldi.fbank(audio.unsqueeze(0) * 2 ** 15, num_mel_bins=n_mels, sample_frequency=16000, dither=0.0)


def fbank_from(audio: torch.Tensor, start_frame: int, n_mels: int = 80) -> torch.Tensor:
    """The fbank frames of `audio` from frame `start_frame` on (the incremental step)."""
    end = n_frames(audio.numel())
    if end <= start_frame:
        return torch.zeros(0, n_mels)
    return fbank(audio[start_frame * SHIFT: (end - 1) * SHIFT + WINDOW], n_mels)


@dataclass(frozen=True)
class Cmvn:
    """Cepstral mean and variance normalisation of one front end (see the module docstring for the kinds)."""

    kind: str = "utterance"
    mean: np.ndarray | None = None  # global only
    std: np.ndarray | None = None
    norm_means: bool = True
    norm_vars: bool = True

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unsupported CMVN {self.kind!r}; supported: {', '.join(KINDS)}")
        if self.kind == "global" and (self.mean is None or self.std is None):
            raise ValueError("global CMVN needs the mean and std of gcmvn.npz")

    def __call__(self, feats: torch.Tensor) -> torch.Tensor:
        """Normalise [frames, dims] features (all the frames of the utterance held so far)."""
        if feats.shape[0] == 0 or self.kind == "none":
            return feats
        x = feats.numpy().astype(np.float32)
        if self.kind == "global":
            x = np.divide(np.subtract(x, self.mean), self.std)
        elif self.kind == "utterance":
            if self.norm_means:
                x = np.subtract(x, x.mean(axis=0))
            if self.norm_vars:
                std = x.std(axis=0)
                x = np.divide(x, np.where(std > 0, std, np.float32(1)))  # the reference gives NaN there
        else:
            mean = x.mean(axis=0)
            square_sums = (x ** 2).sum(axis=0)
            if self.norm_means:
                x = np.subtract(x, mean)
            if self.norm_vars:
                std = np.sqrt(np.maximum(square_sums / x.shape[0] - mean ** 2, 1e-10))
                x = np.divide(x, std)
        return torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))

    def to_dict(self) -> dict:
        """Plain values for a streamst checkpoint."""
        out: dict = {"kind": self.kind, "norm_means": self.norm_means, "norm_vars": self.norm_vars}
        if self.kind == "global":
            out["mean"] = torch.from_numpy(np.asarray(self.mean, dtype=np.float32))
            out["std"] = torch.from_numpy(np.asarray(self.std, dtype=np.float32))
        return out

    @classmethod
    def from_dict(cls, d: dict) -> "Cmvn":
        mean, std = d.get("mean"), d.get("std")
        return cls(d["kind"], None if mean is None else np.asarray(mean, dtype=np.float32),
                   None if std is None else np.asarray(std, dtype=np.float32),
                   bool(d.get("norm_means", True)), bool(d.get("norm_vars", True)))


def load_gcmvn(path) -> Cmvn:
    """Global CMVN from a fairseq ``gcmvn.npz`` (arrays ``mean`` and ``std``)."""
    with np.load(path, allow_pickle=False) as stats:
        if "mean" not in stats or "std" not in stats:
            raise ValueError(f"{path}: a gcmvn.npz holds arrays 'mean' and 'std', found {sorted(stats.files)}")
        return Cmvn("global", stats["mean"].astype(np.float32), stats["std"].astype(np.float32))
