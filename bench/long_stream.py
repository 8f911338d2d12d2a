"""One endless stream under a policy: decoder memory, RSS and per-chunk time at the start and at the end.

    python bench/long_stream.py --model M --policy streamatt:frames=4,history_words=20 --minutes 60 [--wav-dir DIR]

The audio is the given wavs (default: the bundled sample) played one after another with short pauses, looped
until the stream is long enough.
"""
from __future__ import annotations

import argparse
import resource
import statistics
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    from streamst.checkpoint import load_model
    from streamst.commands.demo import SAMPLE
    from streamst.events import Word
    from streamst.policies import parse_policy
    from streamst.session import Session

    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--policy", default="streamatt:frames=4,history_words=20")
    ap.add_argument("--minutes", type=float, default=60.0)
    ap.add_argument("--wav-dir", default=None)
    ap.add_argument("--chunk-ms", type=float, default=320.0)
    args = ap.parse_args()
    torch.set_num_threads(1)
    wavs = sorted(Path(args.wav_dir).glob("*.wav")) if args.wav_dir else [SAMPLE]
    pause = np.zeros(8000, dtype=np.float32)
    clips = [np.concatenate([sf.read(w, dtype="float32")[0], pause]) for w in wavs]
    model = load_model(args.model)
    session = Session(model, parse_policy(args.policy), chunk_ms=args.chunk_ms)
    n = int(16000 * args.chunk_ms / 1000)
    total = int(args.minutes * 60 * 16000 / n)
    buf = np.concatenate(clips)
    times, mem, rss, words = [], [], [], 0
    t_start = time.perf_counter()
    for i in range(total):
        start = (i * n) % buf.size
        chunk = np.take(buf, np.arange(start, start + n), mode="wrap")
        t0 = time.perf_counter()
        words += sum(isinstance(e, Word) for e in session.push(chunk))
        times.append((time.perf_counter() - t0) * 1000)
        mem.append(session.memory.shape[0] if session.memory is not None else 0)
        if i % 500 == 0:
            rss.append(rss_mb())
    words += sum(isinstance(e, Word) for e in session.finish())
    k = max(10, total // 20)
    print(f"{args.minutes:.0f} min stream, {args.policy}, model {model.name}: {words} words, "
          f"wall {time.perf_counter() - t_start:.0f} s")
    print(f"per-chunk ms, first 5%: p50 {statistics.median(times[:k]):.1f}; last 5%: p50 {statistics.median(times[-k:]):.1f}")
    print(f"decoder memory frames: max {max(mem)}, last 5% max {max(mem[-k:])}")
    print(f"RSS MB: after 1st chunk {rss[0]:.0f}, at 10% {rss[len(rss) // 10]:.0f}, at end {rss[-1]:.0f}")


if __name__ == "__main__":
    main()
