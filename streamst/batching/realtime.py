"""How many real-time streams the server's batched step carries: real `Session`s (the policy, its stop rule, the
forced prefix, every stream's own memory) through `step_sessions`, as `streamst serve --scheduler batch` runs
them, on a virtual clock.

Streams start warmed up (`warm_chunks` chunks already heard, untimed) and evenly staggered over one chunk; each
then sends a 320 ms chunk in real time. The worker, as the server's `BatchingScheduler` does, takes one waiting
chunk from each stream that has one (oldest first, at most `max_batch`) and steps them as one batch; a round
costs its measured compute. The added delay of a chunk is its arrival to the end of the round that ran it.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from streamst.batching.sessions import step_sessions
from streamst.session import Session

CHUNK_SAMPLES = 5120  # 320 ms at 16 kHz
CHUNK_S = CHUNK_SAMPLES / 16000


@dataclass(frozen=True)
class Load:
    """One stream count's result: p95 added delay and compute per stream-chunk (ms), rounds and their sizes."""

    p95_ms: float
    stream_chunk_ms: float
    rounds: int
    mean_batch: float


def _piece(audio: np.ndarray, stream: int, k: int) -> np.ndarray:
    """Stream `stream`'s k-th 320 ms chunk: the audio looped, each stream starting at its own place."""
    n = len(audio) // CHUNK_SAMPLES
    i = (stream * 7 + k) % n
    return audio[i * CHUNK_SAMPLES:(i + 1) * CHUNK_SAMPLES]


def _run(rows: list[tuple[Session, np.ndarray]]) -> None:
    """One batched round of `step_sessions`; a stream's failure is the bench's failure."""
    work = []
    for session, pcm in rows:
        work += [(session, chunk, final) for chunk, final in session.take_chunks(pcm)]
    for out in step_sessions(work):
        if isinstance(out, BaseException):
            raise out


def measure(model, policy, n: int, audio: np.ndarray, *, ticks: int = 8, warm_chunks: int = 16,
            max_batch: int = 32, clock=time.perf_counter) -> Load:
    """`n` streams of `policy` (a Policy, shared: policies hold no state) on `model`, `ticks` timed chunks each."""
    sessions = [Session(model, policy) for _ in range(n)]
    for k in range(warm_chunks):
        for a in range(0, n, max_batch):
            _run([(s, _piece(audio, i, k)) for i, s in enumerate(sessions[a:a + max_batch], start=a)])
    offsets = np.arange(n) * CHUNK_S / n
    arrivals = sorted((offsets[i] + (k + 1) * CHUNK_S, i, warm_chunks + k) for i in range(n) for k in range(ticks))
    waiting: dict[int, list[tuple[float, int]]] = {}
    now, j, delays, spent, sizes = 0.0, 0, [], 0.0, []
    while j < len(arrivals) or waiting:
        if not waiting:
            now = max(now, arrivals[j][0])
        while j < len(arrivals) and arrivals[j][0] <= now:
            t, i, k = arrivals[j]
            waiting.setdefault(i, []).append((t, k))
            j += 1
        batch = sorted(waiting, key=lambda i: waiting[i][0][0])[:max_batch]
        taken = [(i, *waiting[i].pop(0)) for i in batch]
        for i in batch:
            if not waiting[i]:
                del waiting[i]
        t0 = clock()
        _run([(sessions[i], _piece(audio, i, k)) for i, _, k in taken])
        cost = clock() - t0
        now += cost
        spent += cost
        sizes.append(len(taken))
        delays += [now - t for _, t, _ in taken]
    return Load(float(np.percentile(np.asarray(delays) * 1000.0, 95)), spent * 1000.0 / len(delays), len(sizes),
                float(np.mean(sizes)))


def max_realtime_streams(run, cap: int = 1024, bound_ms: float = 300.0) -> tuple[int, dict[int, Load]]:
    """Largest N whose p95 added delay stays under the bound (doubling, then bisection to 1/8): `run(n) -> Load`.
    Returns N and every N tried."""
    tried: dict[int, Load] = {}

    def ok(n: int) -> bool:
        tried[n] = run(n)
        return tried[n].p95_ms < bound_ms

    if not ok(1):
        return 0, tried
    good, bad = 1, None
    while bad is None and good < cap:
        n = min(good * 2, cap)
        if ok(n):
            good = n
        else:
            bad = n
    while bad is not None and bad - good > max(1, good // 8):
        mid = (good + bad) // 2
        if ok(mid):
            good = mid
        else:
            bad = mid
    return good, tried
