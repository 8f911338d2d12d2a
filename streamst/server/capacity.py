"""How many real-time streams the server carries: compute seconds per second of audio, measured as streams run.

Model- and scheduler-agnostic: every stream step reports the audio it took and the compute it cost (a batched
step's shared work is split between its streams, so the costs add up to the worker's busy time). The meter keeps
the last `window_s` seconds of audio; the capacity is the number of streams whose summed cost fits `headroom` of
the scheduler's `parallelism` (worker threads that really run at once). `calibrate` gives the first figure, from
the bundled English sample, before any client connects.
"""
from __future__ import annotations

import math
import time
from collections import deque
from pathlib import Path
from typing import Any

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample-en.wav"


class CapacityMeter:
    """Compute per second of audio over a sliding window of audio; `capacity()` real-time streams."""

    def __init__(self, parallelism: float = 1.0, headroom: float = 0.8, window_s: float = 120.0):
        if parallelism <= 0 or not 0 < headroom <= 1:
            raise ValueError("parallelism must be > 0 and headroom within (0, 1]")
        self.parallelism, self.headroom, self.window_s = parallelism, headroom, window_s
        self._samples: deque[tuple[float, float]] = deque()  # (audio_s, compute_s)
        self._audio_s = 0.0
        self._compute_s = 0.0

    def record(self, audio_s: float, compute_s: float) -> None:
        """One step of one stream: the audio it took through the model and the compute it cost."""
        if audio_s <= 0 or compute_s < 0 or not math.isfinite(compute_s):
            return
        self._samples.append((audio_s, compute_s))
        self._audio_s += audio_s
        self._compute_s += compute_s
        while len(self._samples) > 1 and self._audio_s - self._samples[0][0] >= self.window_s:
            a, c = self._samples.popleft()
            self._audio_s -= a
            self._compute_s -= c

    @property
    def cost(self) -> float | None:
        """Compute seconds per second of audio (None before any measurement)."""
        return self._compute_s / self._audio_s if self._audio_s > 0 else None

    def capacity(self) -> int | None:
        """Streams served in real time (at least 1), or None before any measurement."""
        cost = self.cost
        if cost is None:
            return None
        return max(1, int(self.parallelism * self.headroom / max(cost, 1e-6)))

    def describe(self) -> str:
        cost = self.cost
        if cost is None:
            return "capacity not measured yet"
        return f"{self.capacity()} real-time streams ({cost:.3f} s of compute per s of audio)"


def calibrate(meter: CapacityMeter, model: Any, make_session: Any, config: Any, audio_path: Path = SAMPLE,
              seconds: float = 1.5) -> float:
    """Stream the first `seconds` of the bundled sample through one session with the server's defaults (after a
    warm-up chunk); records and returns its cost."""
    from streamst.server.replay import read_audio

    audio, rate = read_audio(audio_path)
    audio = audio[: int(seconds * rate)]
    warm = make_session(model, config(rate, audio.shape[1]))  # first calls pay for lazy set-up: not the cost
    warm.push(audio[: rate // 3].astype("float32"))
    session = make_session(model, config(rate, audio.shape[1]))
    started = time.perf_counter()
    session.push(audio.astype("float32"))
    stats = session.stats()  # the steps of a running stream (a stream's one final flush is not its steady cost)
    session.finish()
    compute_s = stats["compute_s"] or time.perf_counter() - started
    meter.record(stats["audio_s"], compute_s)
    return compute_s / stats["audio_s"]
