"""Whisper in plain PyTorch: log-mel front end, encoder, decoder with a KV cache and exposed cross-attention.

Parameter names follow OpenAI's checkpoints, so an OpenAI `model_state_dict` loads without renaming.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
import torchaudio
from torch import Tensor, nn

from streamst.whisper.growing import Growing

KVCache = tuple[Growing, Growing]  # keys and values [B, H, T, Dh] along T

SAMPLE_RATE = 16000
N_FFT = 400
HOP_LENGTH = 160
CHUNK_SECONDS = 30
N_SAMPLES = CHUNK_SECONDS * SAMPLE_RATE  # 480000 samples in the encoder window
N_FRAMES = N_SAMPLES // HOP_LENGTH  # 3000 mel frames, 1500 encoder frames after the stride-2 conv
SAMPLES_PER_ENCODER_FRAME = 2 * HOP_LENGTH  # 20 ms


@dataclass
class WhisperConfig:
    """Model dimensions (the same fields as OpenAI's `ModelDimensions`)."""

    n_mels: int = 80
    n_audio_ctx: int = 1500
    n_audio_state: int = 384
    n_audio_head: int = 6
    n_audio_layer: int = 4
    n_vocab: int = 51864
    n_text_ctx: int = 448
    n_text_state: int = 384
    n_text_head: int = 6
    n_text_layer: int = 4

    def to_dict(self) -> dict:
        return asdict(self)


_MEL_FILTERS: dict[int, Tensor] = {}


def mel_filters(n_mels: int) -> Tensor:
    """Slaney-style mel filterbank [n_mels, 201], the same as librosa.filters.mel(sr=16000, n_fft=400)."""
    if n_mels not in _MEL_FILTERS:
        fb = torchaudio.functional.melscale_fbanks(
            n_freqs=N_FFT // 2 + 1, f_min=0.0, f_max=SAMPLE_RATE / 2, n_mels=n_mels,
            sample_rate=SAMPLE_RATE, norm="slaney", mel_scale="slaney",
        )
        _MEL_FILTERS[n_mels] = fb.T.contiguous()
    return _MEL_FILTERS[n_mels]


def log_mel_spectrogram(audio: Tensor, n_mels: int = 80) -> Tensor:
    """Whisper's log-mel features [n_mels, frames] of 16 kHz audio.

    Periodic Hann window of 400, hop 160, centred reflect-padded STFT, power spectrum with the last frame
    dropped, log10 clamped at 1e-10, floored at (max - 8), then (x + 4) / 4.
    """
    audio = audio.float()
    window = torch.hann_window(N_FFT, device=audio.device)
    stft = torch.stft(audio, N_FFT, HOP_LENGTH, window=window, center=True, pad_mode="reflect", return_complex=True)
    power = stft[..., :-1].abs() ** 2
    mel = mel_filters(n_mels).to(audio.device) @ power
    log_spec = torch.clamp(mel, min=1e-10).log10()
    log_spec = torch.maximum(log_spec, log_spec.max() - 8.0)
    return (log_spec + 4.0) / 4.0


def window_features(audio: Tensor, n_mels: int) -> Tensor:
    """Features of one encoder window: the audio followed by 30 s of zeros, cut to 3000 frames (as Whisper does)."""
    audio = audio[-N_SAMPLES:]
    padded = F.pad(audio.float(), (0, N_SAMPLES))
    return log_mel_spectrogram(padded, n_mels)[:, :N_FRAMES]


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """The encoder's fixed positional embedding: sines in the first half of the channels, cosines in the second."""
    half = channels // 2
    increment = math.log(max_timescale) / (half - 1)
    inv_timescales = torch.exp(-increment * torch.arange(half, dtype=torch.float32))
    scaled_time = torch.arange(length, dtype=torch.float32)[:, None] * inv_timescales[None, :]
    return torch.cat([torch.sin(scaled_time), torch.cos(scaled_time)], dim=1)


@dataclass(frozen=True)
class RaggedKV:
    """One layer's cross-attention keys and values for a batch of streams whose memories differ in length: each
    row's own [1, H, T_row, Dh] as its stream keeps them (stacking them into one padded tensor would copy every
    memory on every decode)."""

    keys: list[Tensor]
    values: list[Tensor]


class MultiHeadAttention(nn.Module):
    """Attention with a bias-free key projection; returns the output and the attention weights [B, H, Tq, Tk]."""

    def __init__(self, n_state: int, n_head: int):
        super().__init__()
        self.n_head = n_head
        self.query = nn.Linear(n_state, n_state)
        self.key = nn.Linear(n_state, n_state, bias=False)
        self.value = nn.Linear(n_state, n_state)
        self.out = nn.Linear(n_state, n_state)

    def split_heads(self, x: Tensor) -> Tensor:
        b, t, d = x.shape
        return x.view(b, t, self.n_head, d // self.n_head).transpose(1, 2)

    def keys_values(self, source: Tensor) -> tuple[Tensor, Tensor]:
        """Projected keys and values [B, H, T, Dh] of `source` (cached for cross-attention)."""
        return self.split_heads(self.key(source)), self.split_heads(self.value(source))

    def attend(self, x: Tensor, k: Tensor, v: Tensor, causal_offset: int | None = None,
               blocked: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Attend queries from `x` over (k, v); `causal_offset` is the position of x[0] for a causal mask, `blocked`
        a boolean mask broadcast to [B, H, Tq, Tk] (True: the query may not see that key)."""
        q = self.split_heads(self.query(x))
        scale = (q.shape[-1]) ** -0.5
        scores = (q @ k.transpose(-1, -2)) * scale
        if causal_offset is not None:
            tq, tk = q.shape[2], k.shape[2]
            rows = torch.arange(tq, device=x.device)[:, None] + causal_offset
            cols = torch.arange(tk, device=x.device)[None, :]
            scores = scores.masked_fill(cols > rows, float("-inf"))
        if blocked is not None:
            scores = scores.masked_fill(blocked, float("-inf"))
        weights = scores.float().softmax(dim=-1).to(q.dtype)
        out = (weights @ v).transpose(1, 2).flatten(2)
        return self.out(out), weights

    def attend_rows(self, x: Tensor, kv: RaggedKV) -> tuple[Tensor, list[Tensor]]:
        """Attend each batch row's queries over its own keys/values (`RaggedKV`: no padding, no mask); the output
        [B, n, D] and each row's weights [H, n, T_row]."""
        q = self.split_heads(self.query(x))
        scale = (q.shape[-1]) ** -0.5
        outs, weights = [], []
        for row, (k, v) in enumerate(zip(kv.keys, kv.values)):
            w = ((q[row: row + 1] @ k.transpose(-1, -2)) * scale).float().softmax(dim=-1).to(q.dtype)
            outs.append(w @ v)
            weights.append(w[0])
        out = torch.cat(outs).transpose(1, 2).flatten(2)
        return self.out(out), weights


class ResidualAttentionBlock(nn.Module):
    """Pre-norm transformer block: self-attention, optional cross-attention, GELU MLP."""

    def __init__(self, n_state: int, n_head: int, cross_attention: bool = False):
        super().__init__()
        self.attn = MultiHeadAttention(n_state, n_head)
        self.attn_ln = nn.LayerNorm(n_state)
        self.cross_attn = MultiHeadAttention(n_state, n_head) if cross_attention else None
        self.cross_attn_ln = nn.LayerNorm(n_state) if cross_attention else None
        self.mlp = nn.Sequential(nn.Linear(n_state, 4 * n_state), nn.GELU(), nn.Linear(4 * n_state, n_state))
        self.mlp_ln = nn.LayerNorm(n_state)

    def forward_encoder(self, x: Tensor, blocked: Tensor | None = None, past: KVCache | list[KVCache] | None = None,
                        ) -> tuple[Tensor, KVCache | list[KVCache]]:
        """Self-attention over `past` keys/values (a causal encoder's cache) and x's own; returns x and all keys/values.
        With a list of caches (streams batched by row, caches of different lengths) each row attends over its own."""
        h = self.attn_ln(x)
        k, v = self.attn.keys_values(h)
        if isinstance(past, list):
            caches = [(pk.extend(k[r: r + 1]), pv.extend(v[r: r + 1])) for r, (pk, pv) in enumerate(past)]
            rows = RaggedKV([ck.tensor for ck, _ in caches], [cv.tensor for _, cv in caches])
            x = x + self.attn.attend_rows(h, rows)[0]
            return x + self.mlp(self.mlp_ln(x)), caches
        cache = (Growing.of(k, 2), Growing.of(v, 2)) if past is None else (past[0].extend(k), past[1].extend(v))
        x = x + self.attn.attend(h, cache[0].tensor, cache[1].tensor, blocked=blocked)[0]
        return x + self.mlp(self.mlp_ln(x)), cache

    def forward_decoder(
        self, x: Tensor, cross_kv: tuple[Tensor, Tensor] | RaggedKV, self_kv: KVCache | None,
        cross_blocked: Tensor | None = None, self_blocked: Tensor | None = None,
    ) -> tuple[Tensor, Tensor | list[Tensor], KVCache]:
        """One decoder step over new tokens x; returns output, cross-attention weights (a list of each row's with
        `RaggedKV` memories), the extended self KV. `cross_blocked` [B, 1, 1, T] hides padded memory frames
        (batched training); `self_blocked` [B, 1, n, L] hides padded token slots from self-attention (batched
        streams)."""
        h = self.attn_ln(x)
        k, v = self.attn.keys_values(h)
        if self_kv is None:
            offset, keys, values = 0, Growing.of(k, 2), Growing.of(v, 2)
        else:  # written into the cache's spare room, not copied with it (`Growing`)
            offset, keys, values = len(self_kv[0]), self_kv[0].extend(k), self_kv[1].extend(v)
        x = x + self.attn.attend(h, keys.tensor, values.tensor, causal_offset=offset, blocked=self_blocked)[0]
        assert self.cross_attn is not None and self.cross_attn_ln is not None
        if isinstance(cross_kv, RaggedKV):
            out, cross_weights = self.cross_attn.attend_rows(self.cross_attn_ln(x), cross_kv)
        else:
            out, cross_weights = self.cross_attn.attend(self.cross_attn_ln(x), *cross_kv, blocked=cross_blocked)
        x = x + out
        x = x + self.mlp(self.mlp_ln(x))
        return x, cross_weights, (keys, values)


class AudioEncoder(nn.Module):
    """Two convolutions (the second with stride 2), sinusoidal positions, transformer blocks, final norm."""

    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        self.conv1 = nn.Conv1d(cfg.n_mels, cfg.n_audio_state, kernel_size=3, padding=1)
        self.conv2 = nn.Conv1d(cfg.n_audio_state, cfg.n_audio_state, kernel_size=3, stride=2, padding=1)
        self.register_buffer("positional_embedding", sinusoids(cfg.n_audio_ctx, cfg.n_audio_state))
        self.blocks = nn.ModuleList(ResidualAttentionBlock(cfg.n_audio_state, cfg.n_audio_head) for _ in range(cfg.n_audio_layer))
        self.ln_post = nn.LayerNorm(cfg.n_audio_state)

    def forward(self, mel: Tensor) -> Tensor:
        """mel [B, n_mels, 3000] -> encoder states [B, 1500, D]."""
        x = F.gelu(self.conv1(mel))
        x = F.gelu(self.conv2(x)).transpose(1, 2)
        x = x + self.positional_embedding[: x.shape[1]]
        for block in self.blocks:
            x = block.forward_encoder(x)[0]
        return self.ln_post(x)


@dataclass
class DecoderCache:
    """Per-layer cross-attention K/V (fixed for one memory; `RaggedKV` for streams of different memories) and
    self-attention K/V (grows by one per token)."""

    cross: list[tuple[Tensor, Tensor]] | list[RaggedKV]
    self_kv: list[KVCache] | None = None

    @property
    def length(self) -> int:
        return 0 if self.self_kv is None else len(self.self_kv[0][0])


class TextDecoder(nn.Module):
    """Token + learned position embeddings, blocks with cross-attention, logits through the tied embedding."""

    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        self.token_embedding = nn.Embedding(cfg.n_vocab, cfg.n_text_state)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.n_text_ctx, cfg.n_text_state))
        self.blocks = nn.ModuleList(
            ResidualAttentionBlock(cfg.n_text_state, cfg.n_text_head, cross_attention=True) for _ in range(cfg.n_text_layer)
        )
        self.ln = nn.LayerNorm(cfg.n_text_state)

    def start(self, audio_features: Tensor) -> DecoderCache:
        """Project the encoder states once into each layer's cross-attention keys and values."""
        return DecoderCache(cross=[block.cross_attn.keys_values(audio_features) for block in self.blocks])

    def logits(self, hidden: Tensor) -> Tensor:
        """Float logits [..., V] of final states through the tied token embedding."""
        return (hidden @ self.token_embedding.weight.T).float()

    def hidden(self, tokens: Tensor, cache: DecoderCache, cross_blocked: Tensor | None = None) -> Tensor:
        """The final normed states [B, n, D] (before the output projection), for losses over part of the vocabulary."""
        return self.forward(tokens, cache, cross_blocked, project=False)[0]

    def forward(self, tokens: Tensor, cache: DecoderCache, cross_blocked: Tensor | None = None,
                project: bool = True, positions: Tensor | None = None,
                self_blocked: Tensor | None = None) -> tuple[Tensor, list[Tensor], DecoderCache]:
        """tokens [B, n] after the cached ones -> logits [B, n, V], cross-attention per layer [B, H, n, T] (with
        `RaggedKV` memories each row's [H, n, T_row]), cache.
        Batched streams of different lengths give each row's `positions` [B, n] and hide its padding slots
        (`self_blocked`, `cross_blocked`); otherwise the tokens sit at the cache's length onwards."""
        offset = cache.length
        if positions is None:
            x = self.token_embedding(tokens) + self.positional_embedding[offset: offset + tokens.shape[1]]
        else:
            x = self.token_embedding(tokens) + self.positional_embedding[positions]
        new_self: list[KVCache] = []
        cross_weights: list[Tensor] = []
        for i, block in enumerate(self.blocks):
            past = None if cache.self_kv is None else cache.self_kv[i]
            x, weights, kv = block.forward_decoder(x, cache.cross[i], past, cross_blocked, self_blocked)
            new_self.append(kv)
            cross_weights.append(weights)
        x = self.ln(x)
        if not project:
            return x, cross_weights, DecoderCache(cross=cache.cross, self_kv=new_self)
        logits = self.logits(x)
        return logits.float(), cross_weights, DecoderCache(cross=cache.cross, self_kv=new_self)


class Whisper(nn.Module):
    """Encoder + decoder; `encoder(mel)` then `decoder.start(features)` and `decoder(tokens, cache)`."""

    def __init__(self, cfg: WhisperConfig):
        super().__init__()
        self.config = cfg
        self.encoder = AudioEncoder(cfg)
        self.decoder = TextDecoder(cfg)

    @property
    def is_multilingual(self) -> bool:
        return self.config.n_vocab >= 51865
