"""The streaming speech model: causal conv subsampling + chunked Conformer encoder with caches, CTC head,
and a Transformer decoder with a KV cache and exposed cross-attention.

Every streaming step is a function `(input, state) -> (output, new_state)`; states are small tuples of
tensors of bounded size. `Encoder.forward` (whole utterance, chunk mask) and `Encoder.step` (chunk by chunk
with caches) compute the same thing: tests check it to 1e-4.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class ModelConfig:
    n_mels: int = 80
    d_model: int = 256
    n_heads: int = 4
    enc_layers: int = 6
    dec_layers: int = 3
    ff_mult: int = 4
    conv_kernel: int = 15
    sub_channels: int = 64
    chunk_frames: int = 8  # encoder frames (40 ms each) per attention chunk at inference
    left_frames: int = 64  # past encoder frames each chunk attends to
    max_rel: int = 128  # relative distances are clipped to [-max_rel, max_rel]
    src_vocab: int = 256  # CTC output pieces (blank is the extra last index)
    tgt_vocab: int = 256
    max_target_len: int = 512
    dropout: float = 0.1

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in d.items() if k in names})


# ---------------------------------------------------------------------------------------------- encoder


class CausalSubsampling(nn.Module):
    """Two stride-2 convolutions over (time, freq), padded only on the past side: 10 ms frames -> 40 ms."""

    def __init__(self, n_mels: int, channels: int, d_model: int):
        super().__init__()
        self.conv1 = nn.Conv2d(1, channels, 3, stride=2)
        self.conv2 = nn.Conv2d(channels, channels, 3, stride=2)
        f1 = (n_mels - 3) // 2 + 1
        f2 = (f1 - 3) // 2 + 1
        self.out = nn.Linear(channels * f2, d_model)

    def forward(self, x: Tensor, cache: tuple[Tensor, Tensor]) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x: [B, 4k, mels] features; cache: the last 2 input rows of each conv. Returns [B, k, d]."""
        c1, c2 = cache
        h = torch.cat([c1, x.unsqueeze(1)], dim=2)  # [B, 1, 2 + 4k, mels]
        y1 = F.silu(self.conv1(h))
        h2 = torch.cat([c2, y1], dim=2)
        y2 = F.silu(self.conv2(h2))
        b, c, t, f = y2.shape
        out = self.out(y2.transpose(1, 2).reshape(b, t, c * f))
        return out, (h[:, :, -2:], h2[:, :, -2:])

    def init_cache(self, batch: int, n_mels: int, device=None) -> tuple[Tensor, Tensor]:
        f1 = (n_mels - 3) // 2 + 1
        return (
            torch.zeros(batch, 1, 2, n_mels, device=device),
            torch.zeros(batch, self.conv1.out_channels, 2, f1, device=device),
        )


class RelPosSelfAttention(nn.Module):
    """Multi-head self-attention with a learned bias per head and clipped relative distance."""

    def __init__(self, d: int, heads: int, max_rel: int, dropout: float):
        super().__init__()
        self.h, self.dk, self.max_rel = heads, d // heads, max_rel
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.rel_bias = nn.Parameter(torch.zeros(heads, 2 * max_rel + 1))
        self.dropout = dropout

    def forward(self, x: Tensor, q_pos: Tensor, k_pos: Tensor, mask: Tensor, kv_cache: Tensor | None = None):
        """x: [B, T, d]; positions are absolute frame indices (only differences matter);
        mask: [B or 1, T, S] True where attention is allowed; kv_cache: [B, 2, L, d] keys/values of past frames.
        Returns output [B, T, d] and the keys/values [B, 2, L + T, d] that were attended to."""
        b, t, _ = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        kv = torch.stack([k, v], dim=1)
        if kv_cache is not None:
            kv = torch.cat([kv_cache, kv], dim=2)
        k, v = kv[:, 0], kv[:, 1]
        s = k.shape[1]
        q = q.view(b, t, self.h, self.dk).transpose(1, 2)
        k = k.view(b, s, self.h, self.dk).transpose(1, 2)
        v = v.view(b, s, self.h, self.dk).transpose(1, 2)
        rel = (q_pos[:, None] - k_pos[None, :]).clamp(-self.max_rel, self.max_rel) + self.max_rel
        bias = self.rel_bias[:, rel]  # [H, T, S]
        bias = bias.unsqueeze(0).masked_fill(~mask.unsqueeze(1), float("-inf"))
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(b, t, -1)), kv


    def step(self, x: Tensor, rel: Tensor, mask: Tensor, kv_cache: Tensor) -> tuple[Tensor, Tensor]:
        """Attention by hand with explicit masks (what the ONNX graph runs): rel [T, S] distances (query minus
        key), mask [B, T, S], kv_cache [B, 2, L, d]. Returns output [B, T, d] and the keys/values [B, 2, L + T, d]."""
        b, t, d = x.shape
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        kv = torch.cat([kv_cache, torch.stack([k, v], dim=1)], dim=2)
        s = kv.shape[2]
        k, v = kv[:, 0], kv[:, 1]
        q = q.reshape(b, t, self.h, self.dk).transpose(1, 2)
        k = k.reshape(b, s, self.h, self.dk).transpose(1, 2)
        v = v.reshape(b, s, self.h, self.dk).transpose(1, 2)
        bias = self.rel_bias[:, rel.clamp(-self.max_rel, self.max_rel) + self.max_rel]  # [H, T, S]
        scores = q @ k.transpose(-1, -2) * (1.0 / math.sqrt(self.dk)) + bias[None]
        scores = scores.masked_fill(~mask[:, None], float("-inf"))
        y = scores.softmax(-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, d)), kv


class CausalConvModule(nn.Module):
    """Conformer convolution module with a depthwise convolution that sees only past frames."""

    def __init__(self, d: int, kernel: int, dropout: float):
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.pw1 = nn.Linear(d, 2 * d)
        self.dw = nn.Conv1d(d, d, kernel, groups=d)
        self.dw_norm = nn.LayerNorm(d)
        self.pw2 = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)
        self.kernel = kernel

    def forward(self, x: Tensor, cache: Tensor) -> tuple[Tensor, Tensor]:
        """x: [B, T, d]; cache: [B, d, kernel - 1] past inputs of the depthwise conv."""
        h = F.glu(self.pw1(self.norm(x)), dim=-1).transpose(1, 2)
        h = torch.cat([cache, h], dim=2)
        new_cache = h[:, :, -(self.kernel - 1):]
        h = self.dw(h).transpose(1, 2)
        h = self.pw2(F.silu(self.dw_norm(h)))
        return self.drop(h), new_cache


class FeedForward(nn.Sequential):
    def __init__(self, d: int, mult: int, dropout: float):
        super().__init__(
            nn.LayerNorm(d), nn.Linear(d, mult * d), nn.SiLU(), nn.Dropout(dropout), nn.Linear(mult * d, d), nn.Dropout(dropout)
        )


class ConformerBlock(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.ff1 = FeedForward(d, cfg.ff_mult, cfg.dropout)
        self.attn_norm = nn.LayerNorm(d)
        self.attn = RelPosSelfAttention(d, cfg.n_heads, cfg.max_rel, cfg.dropout)
        self.conv = CausalConvModule(d, cfg.conv_kernel, cfg.dropout)
        self.ff2 = FeedForward(d, cfg.ff_mult, cfg.dropout)
        self.norm = nn.LayerNorm(d)
        self.drop = nn.Dropout(cfg.dropout)

    def step(self, x: Tensor, rel: Tensor, mask: Tensor, kv_cache: Tensor, conv_cache: Tensor):
        """One streaming step over a fixed-size cache: rel [T, S] distances, mask [B, T, S]."""
        x = x + 0.5 * self.ff1(x)
        a, kv = self.attn.step(self.attn_norm(x), rel, mask, kv_cache)
        x = x + a
        c, conv_cache = self.conv(x, conv_cache)
        x = x + c
        x = self.norm(x + 0.5 * self.ff2(x))
        return x, kv, conv_cache

    def forward(self, x, q_pos, k_pos, mask, kv_cache, conv_cache):
        x = x + 0.5 * self.ff1(x)
        a, kv = self.attn(self.attn_norm(x), q_pos, k_pos, mask, kv_cache)
        x = x + self.drop(a)
        c, conv_cache = self.conv(x, conv_cache)
        x = x + c
        x = self.norm(x + 0.5 * self.ff2(x))
        return x, kv, conv_cache


def chunk_mask(n: int, chunk: int, left: int, device=None) -> Tensor:
    """[n, n] bool: frame i sees frames of its own chunk and the `left` frames before that chunk."""
    i = torch.arange(n, device=device)
    start = (i // chunk) * chunk
    j = i[None, :]
    return (j < (start + chunk)[:, None]) & (j >= (start - left)[:, None])


@dataclass
class EncoderState:
    """Encoder caches of a fixed size, whatever the stream's age: `kv` holds `left` frames per layer (slots before
    the stream's start hold zeros and are masked), so any streams' states stack along the batch as they are."""

    sub: tuple[Tensor, Tensor]  # subsampling conv caches [B, 1, 2, mels], [B, C, 2, f1]
    kv: Tensor  # [layers, B, 2, left, d]
    conv: Tensor  # [layers, B, d, kernel - 1]
    pending: Tensor  # [B, <4*chunk... , mels] feature frames not yet encoded
    frames: int = 0  # encoder frames produced so far (absolute position of the next frame)
    extra: dict = field(default_factory=dict)


class Encoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.sub = CausalSubsampling(cfg.n_mels, cfg.sub_channels, cfg.d_model)
        self.layers = nn.ModuleList(ConformerBlock(cfg) for _ in range(cfg.enc_layers))

    def init_state(self, batch: int = 1, device=None) -> EncoderState:
        c = self.cfg
        return EncoderState(
            sub=self.sub.init_cache(batch, c.n_mels, device),
            kv=torch.zeros(c.enc_layers, batch, 2, c.left_frames, c.d_model, device=device),
            conv=torch.zeros(c.enc_layers, batch, c.d_model, c.conv_kernel - 1, device=device),
            pending=torch.zeros(batch, 0, c.n_mels, device=device),
        )

    def forward(self, feats: Tensor, lengths: Tensor, chunk: int, left: int) -> tuple[Tensor, Tensor]:
        """Whole utterances: feats [B, T, mels] -> frames [B, T//4, d], lengths // 4, with the streaming mask."""
        b, t, _ = feats.shape
        t4 = t // 4
        x, _ = self.sub(feats[:, : t4 * 4], self.sub.init_cache(b, self.cfg.n_mels, feats.device))
        out_len = lengths // 4
        pos = torch.arange(t4, device=feats.device)
        valid = pos[None, :] < out_len[:, None]  # [B, T4]
        mask = chunk_mask(t4, chunk, left, feats.device)[None] & valid[:, None, :]
        mask = mask | ~valid[:, :, None]  # padded queries attend somewhere (their output is ignored)
        conv = torch.zeros(b, self.cfg.d_model, self.cfg.conv_kernel - 1, device=feats.device)
        for layer in self.layers:
            x, _, _ = layer(x, pos, pos, mask, None, conv)
        return x, out_len

    def step(self, feats: Tensor, state: EncoderState, chunk: int, left: int, final: bool = False):
        """Feature frames of one stream piece -> encoder frames of every complete attention chunk.

        A partial chunk waits for more audio unless `final`, when it is encoded as it is (the whole-utterance
        forward ends with the same partial chunk). A lone stream is a batch of one of `step_frames`.
        """
        pending = torch.cat([state.pending, feats], dim=1)
        n = ready_frames(pending.shape[1], chunk, final)
        if n == 0:
            return pending.new_zeros(pending.shape[0], 0, self.cfg.d_model), EncoderState(
                state.sub, state.kv, state.conv, pending, state.frames, state.extra
            )
        frames = torch.full((pending.shape[0],), state.frames, dtype=torch.long, device=pending.device)
        out, sub1, sub2, kv, conv = self.step_frames(pending[:, : n * 4], state.sub, state.kv, state.conv, frames,
                                                     chunk, left)
        rest = pending[:, n * 4:] if not final else pending[:, :0]
        return out, EncoderState((sub1, sub2), kv, conv, rest, state.frames + n, state.extra)

    def step_frames(self, feats: Tensor, sub: tuple[Tensor, Tensor], kv: Tensor, conv: Tensor, frames: Tensor,
                    chunk: int, left: int) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The one encoder step, batch-first, with fixed-size caches (the graph `streamst export-onnx` writes):
        feats [B, 4T, mels] (T may span several chunks), caches as in `EncoderState`, frames [B] encoder frames
        each row produced before (a multiple of `chunk`) -> (frames [B, T, d], sub caches, kv, conv).

        The kv cache always holds `left` slots; slots before a row's start are masked, so rows of any ages share
        the call."""
        if left <= 0 or kv.shape[3] != left:
            raise ValueError(f"the encoder step needs left_frames > 0 slots in its cache (got left={left}, "
                             f"cache of {kv.shape[3]})")
        x, (new_sub1, new_sub2) = self.sub(feats, sub)
        t = x.shape[1]
        i = torch.arange(t, device=x.device)
        j = torch.arange(left + t, device=x.device)
        start = (i // chunk) * chunk  # chunk start of each query, relative to this call
        allowed = (j[None, :] >= start[:, None]) & (j[None, :] < (start + left + chunk)[:, None])  # [T, S]
        valid = (frames[:, None] - left + j[None, :]) >= 0  # [B, S]: slots that hold a real past frame
        mask = allowed[None] & valid[:, None, :]  # [B, T, S]
        rel = (i[:, None] + left) - j[None, :]
        new_kv, new_conv = [], []
        for li, layer in enumerate(self.layers):
            x, kv_all, cc = layer.step(x, rel, mask, kv[li], conv[li])
            new_kv.append(kv_all[:, :, -left:])
            new_conv.append(cc)
        return x, new_sub1, new_sub2, torch.stack(new_kv), torch.stack(new_conv)


def ready_frames(n_feats: int, chunk: int, final: bool) -> int:
    """Encoder frames that n_feats pending feature frames make: whole chunks only, unless the stream ends."""
    frames = n_feats // 4
    return frames if final else frames // chunk * chunk


# ---------------------------------------------------------------------------------------------- decoder


class CrossAttention(nn.Module):
    """Multi-head attention that also returns its weights [B, H, Tq, Tk] (the attention policies read them)."""

    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.h, self.dk = heads, d // heads
        self.q = nn.Linear(d, d)
        self.kv = nn.Linear(d, 2 * d)
        self.out = nn.Linear(d, d)
        self.drop = nn.Dropout(dropout)

    def project_memory(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        b, s, _ = memory.shape
        k, v = self.kv(memory).chunk(2, dim=-1)
        return (k.view(b, s, self.h, self.dk).transpose(1, 2), v.view(b, s, self.h, self.dk).transpose(1, 2))

    def forward(self, x: Tensor, mem_kv: tuple[Tensor, Tensor], mem_mask: Tensor | None):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, self.h, self.dk).transpose(1, 2)
        k, v = mem_kv
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.dk)
        if mem_mask is not None:
            scores = scores.masked_fill(~mem_mask[:, None, None, :], float("-inf"))
        w = scores.softmax(-1)
        y = (self.drop(w) @ v).transpose(1, 2).reshape(b, t, -1)
        return self.out(y), w


class CausalSelfAttention(nn.Module):
    def __init__(self, d: int, heads: int, dropout: float):
        super().__init__()
        self.h, self.dk = heads, d // heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)
        self.dropout = dropout

    def forward(self, x: Tensor, cache: tuple[Tensor, Tensor] | None, pad_mask: Tensor | None = None,
                slots: tuple[Tensor, Tensor, Tensor] | None = None):
        """Causal self-attention over the cache and x. With `slots` = (key buffer, value buffer, lens), x holds
        one token per row: its key/value go into slot lens[i] of row i's buffers [B, H, room, dk] and it
        attends to slots 0..lens[i] (batched decoding of rows at different positions, no copy per token)."""
        b, t, _ = x.shape
        q, k, v = (z.view(b, t, self.h, self.dk).transpose(1, 2) for z in self.qkv(x).chunk(3, dim=-1))
        if slots is not None:
            kb, vb, lens = slots
            rows = torch.arange(b, device=x.device)
            kb[rows, :, lens], vb[rows, :, lens] = k[:, :, 0], v[:, :, 0]
            keys = int(lens.max()) + 1
            mask = (torch.arange(keys, device=x.device)[None, :] <= lens[:, None])[:, None, None, :]
            y = F.scaled_dot_product_attention(q, kb[:, :, :keys], vb[:, :, :keys], attn_mask=mask)
            return self.out(y.transpose(1, 2).reshape(b, t, -1)), (kb, vb)
        if cache is not None:
            k, v = torch.cat([cache[0], k], dim=2), torch.cat([cache[1], v], dim=2)
        s = k.shape[2]
        causal = torch.ones(t, s, dtype=torch.bool, device=x.device).tril(s - t)
        mask = causal[None, None]
        if pad_mask is not None:
            mask = mask & pad_mask[:, None, None, :]
        p = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
        return self.out(y.transpose(1, 2).reshape(b, t, -1)), (k, v)


class DecoderLayer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d = cfg.d_model
        self.self_norm = nn.LayerNorm(d)
        self.self_attn = CausalSelfAttention(d, cfg.n_heads, cfg.dropout)
        self.cross_norm = nn.LayerNorm(d)
        self.cross_attn = CrossAttention(d, cfg.n_heads, cfg.dropout)
        self.ff = FeedForward(d, cfg.ff_mult, cfg.dropout)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(self, x, mem_kv, mem_mask, cache=None, pad_mask=None, slots=None):
        a, cache = self.self_attn(self.self_norm(x), cache, pad_mask, slots)
        x = x + self.drop(a)
        c, w = self.cross_attn(self.cross_norm(x), mem_kv, mem_mask)
        x = x + self.drop(c)
        return x + self.ff(x), cache, w


class Decoder(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed = nn.Embedding(cfg.tgt_vocab, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_target_len, cfg.d_model)
        self.layers = nn.ModuleList(DecoderLayer(cfg) for _ in range(cfg.dec_layers))
        self.norm = nn.LayerNorm(cfg.d_model)
        nn.init.normal_(self.embed.weight, std=cfg.d_model**-0.5)  # tied output: keep initial logits small

    def project_memory(self, memory: Tensor) -> list[tuple[Tensor, Tensor]]:
        return [layer.cross_attn.project_memory(memory) for layer in self.layers]

    def inputs(self, tokens: Tensor, pos: Tensor) -> Tensor:
        """Scaled token embeddings plus learned positions (clipped to the table) for tokens [B, T] at pos."""
        return self.embed(tokens) * math.sqrt(self.cfg.d_model) + self.pos(pos.clamp(max=self.cfg.max_target_len - 1))

    def logits(self, x: Tensor) -> Tensor:
        """Final norm and the output projection tied to the embedding."""
        return self.norm(x) @ self.embed.weight.T

    def forward(self, tokens: Tensor, mem_kv, mem_mask=None, caches=None, pad_mask=None):
        """tokens [B, T] (continuing after `caches`) -> logits [B, T, V], new caches, cross-attention
        [layers, B, H, T, S]."""
        start = caches[0][0].shape[2] if caches else 0
        x = self.inputs(tokens, torch.arange(start, start + tokens.shape[1], device=tokens.device))
        new_caches, attn = [], []
        for i, layer in enumerate(self.layers):
            x, c, w = layer(x, mem_kv[i], mem_mask, caches[i] if caches else None, pad_mask)
            new_caches.append(c)
            attn.append(w)
        return self.logits(x), new_caches, torch.stack(attn)


class SpeechTranslator(nn.Module):
    """Encoder + CTC head (source pieces) + decoder (target pieces)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.encoder = Encoder(cfg)
        self.ctc = nn.Linear(cfg.d_model, cfg.src_vocab + 1)
        self.decoder = Decoder(cfg)

    @property
    def ctc_blank(self) -> int:
        return self.cfg.src_vocab
