"""Streaming 80-dim Kaldi log-mel filterbank with global mean/variance normalisation.

Frames are 25 ms windows every 10 ms. The stream is preceded by 15 ms of zeros so that frame t's window
ends exactly at (t + 1) * 10 ms: 320 ms of audio gives exactly 32 frames, and a frame never waits for
audio past its own end. Each Kaldi frame depends only on its own window, so computing incrementally with
a 15 ms overlap equals computing on the whole signal at once.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torchaudio.compliance.kaldi as kaldi

SAMPLE_RATE = 16000
N_MELS = 80
SHIFT = 160  # 10 ms
WINDOW = 400  # 25 ms
LEAD = WINDOW - SHIFT  # zeros before the stream: 15 ms


def fbank(audio: torch.Tensor) -> torch.Tensor:
    """Log-mel features [frames, 80] of complete windows in `audio` (already lead-padded)."""
    if audio.numel() < WINDOW:
        return torch.zeros(0, N_MELS)
    return kaldi.fbank(
        audio.unsqueeze(0) * 32768.0,
        num_mel_bins=N_MELS,
        frame_length=25.0,
        frame_shift=10.0,
        dither=0.0,
        energy_floor=0.0,
        sample_frequency=SAMPLE_RATE,
        snip_edges=True,
    )


def utterance_features(audio: torch.Tensor) -> torch.Tensor:
    """Features of a whole utterance, as the stream would compute them (not normalised)."""
    return fbank(torch.cat([torch.zeros(LEAD), audio.float()]))


@dataclass
class FeatureState:
    """Samples not yet covered by a complete frame (at most one window)."""

    tail: torch.Tensor


def init_feature_state() -> FeatureState:
    return FeatureState(tail=torch.zeros(LEAD))


def stream_features(audio: torch.Tensor, state: FeatureState) -> tuple[torch.Tensor, FeatureState]:
    """Features [frames, 80] for the new audio, and the state to continue from."""
    buf = torch.cat([state.tail, audio.float()])
    feats = fbank(buf)
    consumed = feats.shape[0] * SHIFT
    return feats, FeatureState(tail=buf[consumed:])


def normalize(feats: torch.Tensor, mean: torch.Tensor, std: torch.Tensor) -> torch.Tensor:
    """Global CMVN with statistics stored in the checkpoint."""
    return (feats - mean) / std
