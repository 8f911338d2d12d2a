"""Audio chunker: PCM in pieces of any size, format and rate -> fixed 16 kHz mono float32 chunks."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torchaudio.functional as AF

SAMPLE_RATE = 16000
ENCODINGS = {"pcm_s16le": np.dtype("<i2"), "f32le": np.dtype("<f4")}
MAX_CHANNELS = 32
MIN_RATE, MAX_RATE = 1000, 384000


@dataclass(frozen=True)
class AudioFormat:
    """How incoming PCM is laid out: interleaved samples of `encoding` at `sample_rate` with `channels`."""

    sample_rate: int = SAMPLE_RATE
    channels: int = 1
    encoding: str = "f32le"

    def __post_init__(self) -> None:
        if self.encoding not in ENCODINGS:
            raise ValueError(f"unknown encoding {self.encoding!r}; valid: {', '.join(ENCODINGS)}")
        if not isinstance(self.sample_rate, int) or not MIN_RATE <= self.sample_rate <= MAX_RATE:
            raise ValueError(f"sample_rate must be an integer in [{MIN_RATE}, {MAX_RATE}], got {self.sample_rate!r}")
        if not isinstance(self.channels, int) or not 1 <= self.channels <= MAX_CHANNELS:
            raise ValueError(f"channels must be an integer in [1, {MAX_CHANNELS}], got {self.channels!r}")

    @property
    def frame_bytes(self) -> int:
        return ENCODINGS[self.encoding].itemsize * self.channels


class Chunker:
    """Turns PCM pieces into chunks of `chunk_ms` of 16 kHz mono float32; `flush()` returns the rest.

    Bytes are decoded with `fmt.encoding`; numpy arrays may be int16 (scaled by 1/32768) or float,
    shaped [samples] or [samples, channels]. Channels are averaged. Resampling keeps a filter state
    across pieces, so chunking does not change the output beyond the resampler's own edge effects.
    A piece whose byte count is not a whole number of sample frames, or that holds NaN or infinite
    values, raises ValueError and leaves the chunker as it was. Empty pieces are accepted and ignored.
    """

    def __init__(self, fmt: AudioFormat = AudioFormat(), chunk_ms: float = 320.0):
        if chunk_ms <= 0 or chunk_ms > 60_000:
            raise ValueError(f"chunk_ms must be in (0, 60000], got {chunk_ms}")
        self.fmt = fmt
        self.chunk_samples = int(round(chunk_ms * SAMPLE_RATE / 1000))
        self._pending = np.zeros(0, dtype=np.float32)  # 16 kHz samples not yet emitted
        self._buf = np.zeros(0, dtype=np.float32)  # input-rate samples kept for resampling
        self._buf_start = 0  # absolute input index of _buf[0]
        self._out_done = 0  # 16 kHz samples produced so far
        self.samples_in = 0  # input sample frames accepted so far

    def _to_mono(self, pcm: bytes | bytearray | memoryview | np.ndarray) -> np.ndarray:
        ch = self.fmt.channels
        if isinstance(pcm, (bytes, bytearray, memoryview)):
            raw = bytes(pcm)
            if len(raw) % self.fmt.frame_bytes:
                raise ValueError(
                    f"audio piece of {len(raw)} bytes is not a whole number of {self.fmt.frame_bytes}-byte sample "
                    f"frames ({self.fmt.encoding}, {ch} channel(s))"
                )
            samples = np.frombuffer(raw, dtype=ENCODINGS[self.fmt.encoding])
        elif isinstance(pcm, np.ndarray):
            samples = pcm
        else:
            raise ValueError(f"audio must be bytes or a numpy array, got {type(pcm).__name__}")
        if samples.dtype == np.int16:
            x = samples.astype(np.float32) / 32768.0
        elif np.issubdtype(samples.dtype, np.floating):
            x = samples.astype(np.float32, copy=False)
        else:
            raise ValueError(f"audio samples must be int16 or float, got {samples.dtype}")
        if x.ndim == 1:
            if x.size % ch:
                raise ValueError(f"{x.size} interleaved samples are not a whole number of {ch}-channel frames")
            x = x.reshape(-1, ch)
        if x.ndim != 2 or x.shape[1] != ch:
            raise ValueError(f"audio array shaped {tuple(x.shape)} does not match {ch} channel(s)")
        if not np.isfinite(x).all():
            raise ValueError("audio holds NaN or infinite samples")
        return x.mean(axis=1) if ch > 1 else x[:, 0]

    def _resample(self, x: np.ndarray, final: bool) -> np.ndarray:
        """Resample to 16 kHz on a window with enough context that piece edges do not change the result.

        Input positions are absolute: `_buf` holds input samples from `_buf_start` on, aligned to the
        rate-ratio period so torchaudio's polyphase filter keeps its phase.
        """
        sr = self.fmt.sample_rate
        if sr == SAMPLE_RATE:
            return x
        g = np.gcd(sr, SAMPLE_RATE)
        period_in, period_out = sr // g, SAMPLE_RATE // g
        self._buf = np.concatenate([self._buf, x]) if self._buf.size else x
        n_in = self._buf_start + self._buf.size  # absolute input samples so far
        context = sr // 50 + 64  # > the filter's half-width (6 zero crossings) in input samples
        if final:
            k_max = -(-n_in * SAMPLE_RATE // sr)
        else:
            k_max = max(0, (n_in - context) * SAMPLE_RATE // sr)
        if k_max <= self._out_done:
            return np.zeros(0, dtype=np.float32)
        y = AF.resample(torch.from_numpy(np.ascontiguousarray(self._buf)), sr, SAMPLE_RATE).numpy()
        first_k = self._buf_start // period_in * period_out  # output index of y[0]
        out = y[self._out_done - first_k:k_max - first_k]
        self._out_done = k_max
        keep_from = max(0, (self._out_done * sr // SAMPLE_RATE - context) // period_in * period_in)
        if keep_from > self._buf_start:
            self._buf = self._buf[keep_from - self._buf_start:]
            self._buf_start = keep_from
        return out.astype(np.float32)

    def push(self, pcm: bytes | np.ndarray) -> list[np.ndarray]:
        """Accept one piece; return the complete chunks it finished (possibly none)."""
        x = self._to_mono(pcm)
        if x.size == 0:
            return []
        self.samples_in += x.size
        y = self._resample(x, final=False)
        self._pending = np.concatenate([self._pending, y]) if self._pending.size else y
        n = self._pending.size // self.chunk_samples
        chunks = [self._pending[i * self.chunk_samples:(i + 1) * self.chunk_samples] for i in range(n)]
        self._pending = self._pending[n * self.chunk_samples:]
        return chunks

    def flush(self) -> list[np.ndarray]:
        """Emit everything still held: full chunks and a final shorter one."""
        if self.fmt.sample_rate != SAMPLE_RATE:
            y = self._resample(np.zeros(0, dtype=np.float32), final=True)
            self._pending = np.concatenate([self._pending, y])
        n = -(-self._pending.size // self.chunk_samples)
        chunks = [self._pending[i * self.chunk_samples:(i + 1) * self.chunk_samples] for i in range(n)]
        self._pending = np.zeros(0, dtype=np.float32)
        return chunks


def read_audio(path: str | Path) -> tuple[np.ndarray, int]:
    """A wav/flac/ogg file as float32 [samples, channels] and its sample rate (soundfile)."""
    import soundfile as sf

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such audio file: {path}")
    try:
        audio, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError) as e:
        raise ValueError(f"cannot read audio {path}: {e}") from None
    return np.ascontiguousarray(audio), int(rate)
