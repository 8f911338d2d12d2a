"""Speed of the causal Whisper through the real `Session` on real speech: the real-time factor on one thread and
the per-chunk time over a long stream (LibriVox clips looped, with the encoder's restarts), for `streamst bench`."""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from streamst.events import Word

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
CHUNK = 5120  # 320 ms


def looped_speech(seconds: float) -> np.ndarray:
    """The LibriVox clips of pocketsphinx-testdata, 0.5 s apart, repeated to `seconds`."""
    from streamst.whisper.speech_pool import real_clips

    clips = real_clips(LIBRIVOX)
    if not clips:
        raise FileNotFoundError(f"no LibriVox clips in {LIBRIVOX}: apt-get install pocketsphinx-testdata")
    gap = np.zeros(8000, np.float32)
    one = np.concatenate([x for _, a, _ in clips for x in (a, gap)])
    return np.tile(one, int(np.ceil(seconds * 16000 / one.size)))[: int(seconds * 16000)]


def stream_chunk_times(model, policy: str, seconds: float) -> tuple[np.ndarray, int, float]:
    """Per-chunk compute (ms) of one stream of `seconds` of looped speech, its committed words, and its RTF."""
    from streamst.policies import parse_policy
    from streamst.session import Session

    audio = looped_speech(seconds)
    session = Session(model, parse_policy(policy), chunk_ms=320)
    times, words = [], 0
    for start in range(0, audio.size, CHUNK):
        t0 = time.perf_counter()
        words += sum(isinstance(e, Word) for e in session.push(audio[start: start + CHUNK]))
        times.append((time.perf_counter() - t0) * 1000)
    words += sum(isinstance(e, Word) for e in session.finish())
    return np.array(times), words, session.stats()["rtf"]


def bench_causal_whisper(model, minutes: float, log) -> dict:
    """RTF and per-chunk p50/p95 in the first and last minute of a `minutes`-long stream, for the server's default
    policy (StreamAtt) and AlignAtt."""
    out: dict = {}
    for policy in ("streamatt:frames=4,history_words=20", "alignatt:frames=4"):
        times, words, rtf = stream_chunk_times(model, policy, minutes * 60)
        minute = int(60 / 0.32)
        first, last = times[5:minute], times[-minute:]
        row = {"rtf": rtf, "words": words, "chunk_ms_p50_first_min": float(np.percentile(first, 50)),
               "chunk_ms_p95_first_min": float(np.percentile(first, 95)),
               "chunk_ms_p50_last_min": float(np.percentile(last, 50)),
               "chunk_ms_p95_last_min": float(np.percentile(last, 95))}
        out[policy.split(":")[0]] = row
        log(f"causal Whisper, {policy}, {minutes:.0f} min of real speech: RTF {rtf:.3f}, {words} words; chunk p50/p95 "
            f"{row['chunk_ms_p50_first_min']:.1f}/{row['chunk_ms_p95_first_min']:.1f} ms in the first minute, "
            f"{row['chunk_ms_p50_last_min']:.1f}/{row['chunk_ms_p95_last_min']:.1f} ms in the last")
    return out
