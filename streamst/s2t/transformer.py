"""The Transformer encoder and decoder of fairseq's s2t_transformer (= HF Speech2Text), fairseq key names."""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from streamst.s2t.config import S2TConfig
from streamst.s2t.layers import Attention, Positions, Subsampler, activation


class EncoderLayer(nn.Module):
    """Self-attention and feed-forward blocks, pre-norm (or post-norm when normalize_before is off)."""

    def __init__(self, d: int, heads: int, ffn: int, act: str, normalize_before: bool):
        super().__init__()
        self.self_attn, self.self_attn_layer_norm = Attention(d, heads), nn.LayerNorm(d)
        self.fc1, self.fc2, self.final_layer_norm = nn.Linear(d, ffn), nn.Linear(ffn, d), nn.LayerNorm(d)
        self.act, self.pre = activation(act), normalize_before

    def forward(self, x: Tensor) -> Tensor:
        h = self.self_attn_layer_norm(x) if self.pre else x
        x = x + self.self_attn.attend(h, *self.self_attn.keys_values(h))[0]
        x = x if self.pre else self.self_attn_layer_norm(x)
        h = self.final_layer_norm(x) if self.pre else x
        x = x + self.fc2(self.act(self.fc1(h)))
        return x if self.pre else self.final_layer_norm(x)


class TransformerEncoder(nn.Module):
    """Subsampled features + sinusoidal positions -> Transformer layers (-> final norm when pre-norm)."""

    def __init__(self, cfg: S2TConfig):
        super().__init__()
        self.subsample = Subsampler(cfg.n_mels, cfg.conv_channels, cfg.d_model, cfg.conv_kernel_sizes)
        self.scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        self.positions = Positions(cfg.d_model, cfg.pad)
        self.transformer_layers = nn.ModuleList(
            EncoderLayer(cfg.d_model, cfg.encoder_heads, cfg.encoder_ffn, cfg.activation, cfg.encoder_normalize_before)
            for _ in range(cfg.encoder_layers))
        self.layer_norm = nn.LayerNorm(cfg.d_model) if cfg.encoder_normalize_before else None

    @property
    def layers(self) -> nn.ModuleList:
        return self.transformer_layers

    def embed(self, feats: Tensor) -> Tensor:
        x = self.subsample(feats) * self.scale
        return x + self.positions(0, x.shape[1])

    def finish(self, x: Tensor) -> Tensor:
        return self.layer_norm(x) if self.layer_norm is not None else x


class DecoderLayer(nn.Module):
    """Causal self-attention (KV cache), cross-attention over the encoder output, feed-forward."""

    def __init__(self, d: int, heads: int, ffn: int, act: str, normalize_before: bool):
        super().__init__()
        self.self_attn, self.self_attn_layer_norm = Attention(d, heads), nn.LayerNorm(d)
        self.encoder_attn, self.encoder_attn_layer_norm = Attention(d, heads), nn.LayerNorm(d)
        self.fc1, self.fc2, self.final_layer_norm = nn.Linear(d, ffn), nn.Linear(ffn, d), nn.LayerNorm(d)
        self.act, self.pre = activation(act), normalize_before

    def _block(self, x: Tensor, norm: nn.LayerNorm, fn):
        h, extra = fn(norm(x) if self.pre else x)
        x = x + h
        return (x if self.pre else norm(x)), extra

    def forward(self, x: Tensor, mem_kv: tuple[Tensor, Tensor], cache: tuple[Tensor, Tensor] | None,
                mask: Tensor | None):
        def self_attention(h):
            k, v = self.self_attn.keys_values(h)
            if cache is not None:
                k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
            return self.self_attn.attend(h, k, v, mask)[0], (k, v)

        x, new_cache = self._block(x, self.self_attn_layer_norm, self_attention)
        x, weights = self._block(x, self.encoder_attn_layer_norm, lambda h: self.encoder_attn.attend(h, *mem_kv))
        x, _ = self._block(x, self.final_layer_norm, lambda h: (self.fc2(self.act(self.fc1(h))), None))
        return x, new_cache, weights


class Decoder(nn.Module):
    """fairseq's TransformerDecoder; the duck type `streamst.decoding.decode` drives (greedy and beam)."""

    def __init__(self, cfg: S2TConfig):
        super().__init__()
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model, padding_idx=cfg.pad)
        self.scale = math.sqrt(cfg.d_model) if cfg.scale_embedding else 1.0
        self.positions = Positions(cfg.d_model, cfg.pad)
        self.layers = nn.ModuleList(
            DecoderLayer(cfg.d_model, cfg.decoder_heads, cfg.decoder_ffn, cfg.activation, cfg.decoder_normalize_before)
            for _ in range(cfg.decoder_layers))
        self.layer_norm = nn.LayerNorm(cfg.d_model) if cfg.decoder_normalize_before else None
        self.output_projection = None if cfg.tied_output else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)

    def project_memory(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        """Cross-attention keys and values of memory [B, S, D], once per decode."""
        return [layer.encoder_attn.keys_values(memory) for layer in self.layers]

    def forward(self, tokens: Tensor, mem_kv, mem_mask=None, caches=None):
        """tokens [B, T] after `caches` -> logits [B, T, V], new caches, cross-attention [L, B, H, T, S]."""
        start = caches[0][0].shape[2] if caches else 0
        n = tokens.shape[1]
        x = self.embed_tokens(tokens) * self.scale + self.positions(start, n)
        mask = None
        if n > 1:
            mask = torch.full((n, start + n), float("-inf"), device=tokens.device).triu(start + 1)
        new_caches, attn = [], []
        for i, layer in enumerate(self.layers):
            x, c, w = layer(x, mem_kv[i], caches[i] if caches else None, mask)
            new_caches.append(c)
            attn.append(w)
        if self.layer_norm is not None:
            x = self.layer_norm(x)
        weight = self.embed_tokens.weight if self.output_projection is None else self.output_projection.weight
        return x @ weight.T, new_caches, torch.stack(attn)
