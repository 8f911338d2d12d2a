"""Building blocks shared by the S2T encoders and the decoder (fairseq's module and parameter names)."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def activation(name: str):
    """The activation function fairseq calls `name`."""
    return {"relu": F.relu, "gelu": F.gelu, "swish": F.silu, "silu": F.silu}[name]


def sinusoids(n_positions: int, dim: int, pad: int) -> Tensor:
    """fairseq's sinusoidal table [n_positions, dim]: sin half then cos half, row `pad` zero."""
    half = dim // 2
    freq = torch.exp(torch.arange(half, dtype=torch.float) * -(math.log(10000) / (half - 1)))
    angles = torch.arange(n_positions, dtype=torch.float)[:, None] * freq[None]
    table = torch.cat([torch.sin(angles), torch.cos(angles)], dim=1)
    if dim % 2:
        table = torch.cat([table, torch.zeros(n_positions, 1)], dim=1)
    table[pad] = 0
    return table


class Positions(nn.Module):
    """Sinusoidal positions as fairseq numbers them: the t-th element (0-based) is position pad + 1 + t."""

    def __init__(self, dim: int, pad: int):
        super().__init__()
        self.dim, self.pad = dim, pad
        self.register_buffer("table", sinusoids(pad + 2, dim, pad), persistent=False)

    def forward(self, start: int, length: int) -> Tensor:
        end = self.pad + 1 + start + length
        if end > self.table.shape[0]:
            self.table = sinusoids(max(end, 2 * self.table.shape[0]), self.dim, self.pad).to(self.table.device)
        return self.table[self.pad + 1 + start: end]


class Subsampler(nn.Module):
    """fairseq's Conv1dSubsampler: stride-2 1-D convolutions with GLU, 10 ms frames -> 40 ms with two layers."""

    def __init__(self, n_mels: int, channels: int, d_model: int, kernels: list[int]):
        super().__init__()
        n = len(kernels)
        self.conv_layers = nn.ModuleList(
            nn.Conv1d(n_mels if i == 0 else channels // 2, channels if i < n - 1 else d_model * 2, k, stride=2,
                      padding=k // 2)
            for i, k in enumerate(kernels))

    def forward(self, feats: Tensor) -> Tensor:
        """[B, frames, n_mels] -> [B, frames / 2^layers, d_model]."""
        x = feats.transpose(1, 2)
        for conv in self.conv_layers:
            x = F.glu(conv(x), dim=1)
        return x.transpose(1, 2)

    def out_frames(self, n: int) -> int:
        for _ in self.conv_layers:
            n = (n - 1) // 2 + 1 if n > 0 else 0
        return n


class Attention(nn.Module):
    """Multi-head attention (q/k/v/out projections); returns the output and the per-head weights."""

    def __init__(self, d_model: int, heads: int):
        super().__init__()
        self.heads, self.d_head = heads, d_model // heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(d_model, d_model) for _ in range(4))

    def split(self, x: Tensor) -> Tensor:
        """[B, T, D] -> [B, H, T, d_head]."""
        return x.view(x.shape[0], x.shape[1], self.heads, self.d_head).transpose(1, 2)

    def keys_values(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.split(self.k_proj(x)), self.split(self.v_proj(x))

    def attend(self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Queries from x [B, T, D] over keys/values [B, H, S, d_head]; mask [T, S] or [B, 1, T, S] is additive."""
        q = self.split(self.q_proj(x)) * self.d_head ** -0.5
        scores = q @ k.transpose(-1, -2)
        if mask is not None:
            scores = scores + mask
        w = scores.softmax(-1)
        out = (w @ v).transpose(1, 2).reshape(x.shape[0], x.shape[1], -1)
        return self.out_proj(out), w
