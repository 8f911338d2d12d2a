"""Whisper's encoder made causal (CarelessWhisper): log-mel with a running maximum, the two input convolutions on
new mel frames only, and block-causal self-attention over the 20 ms encoder frames with a key/value cache per layer.

A stream's encoder frames come in blocks: the first of `first_block` frames, then `block` frames each; a frame sees
every frame of its own block and of the blocks before it, never a later one. `encode_stream` runs that one block
at a time from a `CausalEncoderState` value; `encode_full` runs a whole utterance at once with the same mask
(training, and the test that the two agree). The convolutions look one mel frame ahead and the STFT 200 samples,
so frame m is ready once 320 m + 520 samples have arrived: with 320 ms chunks a block of 16 frames is complete
20 ms before the chunk that ends it, and the first block of 2 x 16 - 1 frames after the second chunk.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch
import torch.nn.functional as F
from torch import Tensor

from streamst.whisper.model import HOP_LENGTH, N_FFT, AudioEncoder, mel_filters

MAX_FRAMES = 1500  # the encoder's positions: 30 s
STFT_REACH = N_FFT // 2  # a centred STFT frame reaches 200 samples past its centre


def block_ids(n_frames: int, block: int, first_block: int) -> Tensor:
    """Which block each encoder frame belongs to: the first `first_block` frames are block 0, then `block` each."""
    m = torch.arange(n_frames)
    return torch.where(m < first_block, 0, 1 + (m - first_block) // block)


def block_mask(ids: Tensor) -> Tensor:
    """[T, T] True where query frame q may not see key frame k (k is in a later block)."""
    return ids[None, :] > ids[:, None]


# ---------------------------------------------------------------------------------------------- log-mel


@dataclass(frozen=True)
class MelState:
    """The samples the next mel frames still need (in STFT-padded coordinates) and the running log maximum."""

    pending: Tensor  # samples from the start of the next frame's window (the raw audio until `started`)
    started: bool = False  # the stream's start has been reflect-padded (needs 201 samples)
    frames: int = 0  # mel frames emitted so far
    samples: int = 0  # audio samples received so far
    peak: float = -math.inf  # running maximum of log10 mel energy


def init_mel_state() -> MelState:
    return MelState(torch.zeros(0))


def _log_mel_frames(padded: Tensor, n_frames: int, n_mels: int, peak: float) -> tuple[Tensor, float]:
    """Whisper's normalised log-mel of n_frames STFT frames of `padded` (frame i starts at 160 i), with the floor
    at 8 below the running maximum instead of the window's maximum."""
    window = torch.hann_window(N_FFT, device=padded.device)
    used = padded[: HOP_LENGTH * (n_frames - 1) + N_FFT]
    stft = torch.stft(used, N_FFT, HOP_LENGTH, window=window, center=False, return_complex=True)
    mel = mel_filters(n_mels).to(padded.device) @ (stft.abs() ** 2)
    log_spec = torch.clamp(mel, min=1e-10).log10()
    running = torch.cummax(log_spec.amax(0), 0).values.clamp_min(peak)
    log_spec = torch.maximum(log_spec, running[None] - 8.0)
    return (log_spec + 4.0) / 4.0, float(running[-1])


def stream_log_mel(audio: Tensor, state: MelState, final: bool, n_mels: int = 80) -> tuple[Tensor, MelState]:
    """Mel frames [n_mels, t] that the audio so far completes. Frame i is centred on sample 160 i (the stream's
    start reflect-padded, as Whisper's centred STFT does); at the end the audio is followed by zeros, as Whisper
    pads its window, and frames go on while their centre lies inside the audio."""
    audio = audio.float().reshape(-1)
    samples = state.samples + audio.numel()
    pending, started = torch.cat([state.pending, audio]), state.started
    if not started:
        if pending.numel() <= STFT_REACH and not final:
            return torch.zeros(n_mels, 0), replace(state, pending=pending, samples=samples)
        head = pending[1: STFT_REACH + 1].flip(0)
        head = F.pad(head, (STFT_REACH - head.numel(), 0))  # a stream shorter than 201 samples: zeros before
        pending, started = torch.cat([head, pending]), True
    if final:
        wanted = math.ceil(samples / HOP_LENGTH) - state.frames
        pending = F.pad(pending, (0, max(0, HOP_LENGTH * (wanted - 1) + N_FFT - pending.numel())))
    else:
        wanted = (pending.numel() - N_FFT) // HOP_LENGTH + 1 if pending.numel() >= N_FFT else 0
    if wanted <= 0:
        return torch.zeros(n_mels, 0), replace(state, pending=pending, started=started, samples=samples)
    mel, peak = _log_mel_frames(pending, wanted, n_mels, state.peak)
    rest = pending[HOP_LENGTH * wanted:]
    return mel, MelState(rest, started, state.frames + wanted, samples, peak)


def causal_log_mel(audio: Tensor, n_mels: int = 80) -> Tensor:
    """The mel frames `stream_log_mel` gives for a whole utterance, in one call (what training encodes)."""
    return stream_log_mel(audio, init_mel_state(), True, n_mels)[0]


# ---------------------------------------------------------------------------------------------- encoder


@dataclass(frozen=True)
class CausalEncoderState:
    """One stream's encoder: its mel state, the convolutions' input tails, frames waiting to fill a block, and per
    layer the keys/values [1, H, T, Dh] of every frame so far (at most 1500; `Growing`: a chunk adds its block
    without copying the rest)."""

    mel: MelState
    conv1_in: Tensor  # [n_mels, k] mel frames from the one before the next conv1 output
    conv2_in: Tensor  # [D, k] conv1 outputs from the one before the next conv2 output
    waiting: Tensor  # [t, D] conv2 outputs (with positions) not yet in a block
    kv: tuple[tuple[Tensor, Tensor], ...]
    frames: int = 0  # encoder frames emitted so far: the position of the next one


def init_encoder_state(encoder: AudioEncoder) -> CausalEncoderState:
    n_mels, d = encoder.conv1.in_channels, encoder.conv1.out_channels
    return CausalEncoderState(init_mel_state(), torch.zeros(n_mels, 1), torch.zeros(d, 1), torch.zeros(0, d), ())


def _conv_tail(conv: torch.nn.Conv1d, buffer: Tensor, final: bool) -> tuple[Tensor, Tensor]:
    """GELU(conv) outputs [C, t] that `buffer` (starting one frame before the next output) completes, and the
    buffer left for the next call; `final` zero-pads the right edge as the whole-utterance convolution does."""
    if final:
        buffer = F.pad(buffer, (0, 1))
    stride = conv.stride[0]
    n = (buffer.shape[1] - 3) // stride + 1 if buffer.shape[1] >= 3 else 0
    if n <= 0:
        return buffer.new_zeros(conv.out_channels, 0), buffer
    out = F.gelu(F.conv1d(buffer[None, :, : stride * (n - 1) + 3], conv.weight, conv.bias, stride=stride))[0]
    return out, buffer[:, stride * n:]


def _run_blocks(encoder: AudioEncoder, x: Tensor, kv: tuple, blocked: Tensor | None = None) -> tuple[Tensor, tuple]:
    """The transformer over new frames x [B, t, D] after the cached keys/values (empty tuple: none)."""
    new_kv = []
    for i, layer in enumerate(encoder.blocks):
        x, layer_kv = layer.forward_encoder(x, blocked, kv[i] if kv else None)
        new_kv.append(layer_kv)
    return encoder.ln_post(x), tuple(new_kv)


def _run_rows(encoder: AudioEncoder, x: Tensor, caches: list[tuple]) -> tuple[Tensor, list[tuple]]:
    """The transformer over one new block per stream, x [B, t, D], each row after its own stream's cache; the
    outputs and each stream's keys/values."""
    new_kv = []
    for i, layer in enumerate(encoder.blocks):
        x, rows = layer.forward_encoder(x, past=[kv[i] for kv in caches])
        new_kv.append(rows)
    return encoder.ln_post(x), [tuple(rows[r] for rows in new_kv) for r in range(x.shape[0])]


@dataclass(frozen=True)
class _Front:
    """One stream's chunk after the front end: the new mel state and convolution tails, the frames waiting for a
    block (with their positions), and how many of them fill whole blocks now."""

    mel: MelState
    conv1_in: Tensor
    conv2_in: Tensor
    waiting: Tensor
    ready: int


def _front(encoder: AudioEncoder, audio: Tensor, state: CausalEncoderState, final: bool, block: int,
           first_block: int) -> _Front:
    """Log-mel and the two convolutions of the new audio (`encode_stream`'s first half)."""
    mel, mel_state = stream_log_mel(audio, state.mel, final, encoder.conv1.in_channels)
    h1, conv1_in = _conv_tail(encoder.conv1, torch.cat([state.conv1_in, mel], 1), final)
    h2, conv2_in = _conv_tail(encoder.conv2, torch.cat([state.conv2_in, h1], 1), final)
    first = state.frames + state.waiting.shape[0]
    room = MAX_FRAMES - first
    if h2.shape[1] > room:
        raise ValueError(f"the causal encoder holds at most {MAX_FRAMES} frames (30 s); reset it first")
    waiting = torch.cat([state.waiting, h2.T + encoder.positional_embedding[first: first + h2.shape[1]]])
    ready = ready_frames(state.frames, waiting.shape[0], block, first_block, final)
    return _Front(mel_state, conv1_in, conv2_in, waiting, ready)


def _blocks_mask(done: int, ready: int, block: int, first_block: int) -> Tensor | None:
    """The mask of `ready` new frames after `done` encoded ones: every complete block in one pass (a restart
    re-encodes seconds of kept audio at once), each seeing the cache and the blocks up to its own, as block by
    block; None for one block (no mask needed)."""
    ids = block_ids(done + ready, block, first_block)
    if ids[done] == ids[-1]:
        return None
    return (ids[None, :] > ids[done:, None])[None, None]


def encode_stream(encoder: AudioEncoder, audio: Tensor, state: CausalEncoderState, final: bool, *,
                  block: int = 16, first_block: int = 31) -> tuple[Tensor, CausalEncoderState]:
    """The encoder frames [t, D] of every block that `audio` completes (all frames at the end of the stream)."""
    return encode_streams(encoder, [audio], [state], [final], block=block, first_block=first_block)[0]


def encode_streams(encoder: AudioEncoder, audios: list[Tensor], states: list[CausalEncoderState],
                   finals: list[bool], *, block: int = 16,
                   first_block: int = 31) -> list[tuple[Tensor, CausalEncoderState]]:
    """`encode_stream` of several streams: the front end per stream; the streams whose new frames are one block
    after a cache go through the transformer together, one row each (rows of one length; each attends over its
    own cache: one stream's 16-frame block alone keeps the matrix products small), the others (a first block, a
    restart's seconds of audio, a stream's end) one by one."""
    fronts = [_front(encoder, a, s, f, block, first_block) for a, s, f in zip(audios, states, finals)]
    masks = [_blocks_mask(s.frames, f.ready, block, first_block) if f.ready else None for f, s in zip(fronts, states)]
    by_length: dict[int, list[int]] = {}
    for i, (front, state, blocked) in enumerate(zip(fronts, states, masks)):
        if front.ready and state.kv and blocked is None:
            by_length.setdefault(front.ready, []).append(i)
    together = [group for group in by_length.values() if len(group) > 1]
    out: list = [None] * len(fronts)
    for group in together:
        x = torch.stack([fronts[i].waiting[: fronts[i].ready] for i in group])
        x, caches = _run_rows(encoder, x, [states[i].kv for i in group])
        for row, i in enumerate(group):
            out[i] = (x[row], _encoded_state(fronts[i], states[i], caches[row]))
    for i, (front, state, blocked) in enumerate(zip(fronts, states, masks)):
        if out[i] is not None:
            continue
        if front.ready == 0:
            out[i] = (torch.zeros(0, encoder.conv1.out_channels), _encoded_state(front, state, state.kv))
            continue
        x, kv = _run_blocks(encoder, front.waiting[None, : front.ready], state.kv, blocked)
        out[i] = (x[0], _encoded_state(front, state, kv))
    return out


def _encoded_state(front: _Front, state: CausalEncoderState, kv: tuple) -> CausalEncoderState:
    return CausalEncoderState(front.mel, front.conv1_in, front.conv2_in, front.waiting[front.ready:], kv,
                              state.frames + front.ready)


def ready_frames(done: int, waiting: int, block: int, first_block: int, final: bool) -> int:
    """How many of `waiting` frames (after `done` encoded ones) fill whole blocks; at the end of a stream all."""
    if final:
        return waiting
    first = first_block if done == 0 else 0
    if waiting < first:
        return 0
    return first + (waiting - first) // block * block


def encode_full(encoder: AudioEncoder, mel: Tensor, *, block: int = 16, first_block: int = 31,
                mel_lengths: Tensor | None = None) -> Tensor:
    """Encoder frames [B, ceil(L / 2), D] of whole utterances' mel [B, n_mels, L] under the block-causal mask, equal
    to streaming them. A batch's shorter utterances are zero-padded mel with their `mel_lengths`: the first
    convolution's outputs past an utterance's end are zeroed, as the streaming convolution pads its last input."""
    x = F.gelu(encoder.conv1(mel))
    if mel_lengths is not None:
        inside = torch.arange(x.shape[-1], device=x.device)[None, :] < mel_lengths[:, None]
        x = x * inside[:, None, :]
    x = F.gelu(encoder.conv2(x)).transpose(1, 2)
    t = x.shape[1]
    if t > MAX_FRAMES:
        raise ValueError(f"the causal encoder holds at most {MAX_FRAMES} frames (30 s), got {t}")
    x = x + encoder.positional_embedding[:t]
    blocked = block_mask(block_ids(t, block, first_block).to(x.device))
    return _run_blocks(encoder, x, (), blocked[None, None])[0]
