"""FBK-fairseq's Conformer encoder (examples/speech_to_text/models/conformer.py), with its key names.

Each block is macaron-style: half-step feed-forward, relative-position self-attention, convolution module,
half-step feed-forward, layer norm. The attention is FBK's Transformer-XL variant: content scores from
(q + u)·k, position scores from (q + v)·P where P projects the absolute sinusoids of positions 0..T-1
(interleaved sin/cos), turned relative by the pad-reshape-slice shift, and the sum is divided by sqrt(d_model)
(not sqrt(d_head)). There are no absolute positions on the input and no final encoder norm.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from streamst.s2t.config import S2TConfig
from streamst.s2t.layers import Subsampler


def interleaved_sinusoids(length: int, dim: int) -> Tensor:
    """FBK's PositionalEncoding table [length, dim]: sin on even dims, cos on odd, positions 0..length-1."""
    position = torch.arange(length, dtype=torch.float).unsqueeze(1)
    div = torch.exp(torch.arange(0, dim, 2).float() * -(math.log(10000.0) / dim))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(position * div)
    pe[:, 1::2] = torch.cos(position * div)
    return pe


def relative_shift(scores: Tensor) -> Tensor:
    """FBK's shift of [B, H, T, T] position scores: prepend a zero column, view as [T + 1, T], drop row 0.

    For one unpadded sequence this is what both of FBK's shifts (row-wise and batch-unsafe) compute.
    """
    b, h, t1, t2 = scores.shape
    padded = torch.cat([scores.new_zeros(b, h, t1, 1), scores], dim=-1)
    return padded.view(b, h, t2 + 1, t1)[:, :, 1:].reshape(b, h, t1, t2)


class RelativeAttention(nn.Module):
    """FBK's RelativeMultiHeadAttention (query/key/value/pos projections, u and v biases per head)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads, self.d_head, self.d = heads, d // heads, d
        self.query_proj, self.key_proj, self.value_proj = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.pos_proj = nn.Linear(d, d, bias=False)
        self.u_bias = nn.Parameter(torch.zeros(heads, self.d_head))
        self.v_bias = nn.Parameter(torch.zeros(heads, self.d_head))
        self.out_proj = nn.Linear(d, d)

    def forward(self, x: Tensor) -> Tensor:
        b, t, _ = x.shape
        q = self.query_proj(x).view(b, t, self.heads, self.d_head)
        k = self.key_proj(x).view(b, t, self.heads, self.d_head).permute(0, 2, 1, 3)
        v = self.value_proj(x).view(b, t, self.heads, self.d_head).permute(0, 2, 1, 3)
        pos = self.pos_proj(interleaved_sinusoids(t, self.d).to(x)).view(1, t, self.heads, self.d_head)
        content = (q + self.u_bias).transpose(1, 2) @ k.transpose(2, 3)
        position = relative_shift((q + self.v_bias).transpose(1, 2) @ pos.permute(0, 2, 3, 1))
        attn = ((content + position) / math.sqrt(self.d)).softmax(-1)
        return self.out_proj((attn @ v).transpose(1, 2).reshape(b, t, self.d))


class SelfAttentionModule(nn.Module):
    """Layer norm then relative attention (FBK's MultiHeadedSelfAttentionModule)."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.layer_norm, self.attention = nn.LayerNorm(d), RelativeAttention(d, heads)

    def forward(self, x: Tensor) -> Tensor:
        return self.attention(self.layer_norm(x))


class FeedForwardModule(nn.Module):
    """Layer norm, linear (x expansion), SiLU, linear."""

    def __init__(self, d: int, expansion: int):
        super().__init__()
        self.layernorm = nn.LayerNorm(d)
        self.first_linear, self.second_linear = nn.Linear(d, d * expansion), nn.Linear(d * expansion, d)

    def forward(self, x: Tensor) -> Tensor:
        return self.second_linear(F.silu(self.first_linear(self.layernorm(x))))


class ConvModule(nn.Module):
    """Layer norm, pointwise conv + GLU, depthwise conv ('same' padding), batch norm, SiLU, pointwise conv."""

    def __init__(self, d: int, kernel: int):
        super().__init__()
        if kernel % 2 == 0:
            raise ValueError(f"the Conformer convolution kernel must be odd, got {kernel}")
        self.layernorm = nn.LayerNorm(d)
        self.first_pointwise_conv1d = nn.Conv1d(d, 2 * d, 1)
        self.depthwise_conv1d = nn.Conv1d(d, d, kernel, padding=(kernel - 1) // 2, groups=d, bias=False)
        self.batchnorm = nn.BatchNorm1d(d)
        self.second_pointwise_conv1d = nn.Conv1d(d, d, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = F.glu(self.first_pointwise_conv1d(self.layernorm(x).transpose(1, 2)), dim=1)
        h = F.silu(self.batchnorm(self.depthwise_conv1d(h)))
        return self.second_pointwise_conv1d(h).transpose(1, 2)


class ConformerLayer(nn.Module):
    """One macaron block (FBK's ConformerEncoderLayer)."""

    def __init__(self, cfg: S2TConfig):
        super().__init__()
        d = cfg.d_model
        self.first_feed_forward = FeedForwardModule(d, cfg.conformer_ff_expansion)
        self.attention = SelfAttentionModule(d, cfg.encoder_heads)
        self.conv_module = ConvModule(d, cfg.conformer_kernel)
        self.second_feed_forward = FeedForwardModule(d, cfg.conformer_ff_expansion)
        self.layernorm = nn.LayerNorm(d)
        self.half = 0.5 if cfg.conformer_half_step else 1.0

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.half * self.first_feed_forward(x)
        x = x + self.attention(x)
        x = x + self.conv_module(x)
        x = x + self.half * self.second_feed_forward(x)
        return self.layernorm(x)


class ConformerEncoder(nn.Module):
    """Subsampled, scaled features -> Conformer blocks (no absolute positions, no final norm)."""

    def __init__(self, cfg: S2TConfig):
        super().__init__()
        self.subsample = Subsampler(cfg.n_mels, cfg.conv_channels, cfg.d_model, cfg.conv_kernel_sizes)
        self.scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        self.conformer_layers = nn.ModuleList(ConformerLayer(cfg) for _ in range(cfg.encoder_layers))

    @property
    def layers(self) -> nn.ModuleList:
        return self.conformer_layers

    def embed(self, feats: Tensor) -> Tensor:
        return self.subsample(feats) * self.scale

    def finish(self, x: Tensor) -> Tensor:
        return x
