"""How many real-time streams does this machine carry? Added delay p95 must stay under 300 ms.

Starts `streamst serve` on a free loopback port, then for N = 1, 2, 4, ... runs N concurrent clients that send
a file at real-time pace with a `marker` after every 320 ms of audio. The added delay of a chunk is the time
from sending its marker to getting the marker back: the server's queueing plus compute plus loopback. Prints one
line per N and the largest N whose p95 stays under the bound.

    python bench/load.py --model MODEL [--audio FILE] [--seconds 20] [--max-streams 32] [--bound-ms 300]
"""
from __future__ import annotations

import argparse
import asyncio
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from streamst.server.client import paced, stream_audio
from streamst.server.replay import read_audio


async def one_stream(url: str, audio: np.ndarray, rate: int, piece_ms: int, policy: str | None) -> list[float]:
    step = int(rate * piece_ms / 1000)
    pieces = [audio[i:i + step].astype("<f4").tobytes() for i in range(0, len(audio), step)]
    sent: dict[int, float] = {}
    config = {"sample_rate": rate, "encoding": "f32le", "channels": audio.shape[1]}
    if policy:
        config["policy"] = policy
    result = await stream_audio(url, paced(pieces, lambda p: len(p) / 4 / audio.shape[1] / rate), config,
                                marker_every=1, marker_sent=lambda i: sent.__setitem__(i, time.perf_counter()))
    return [(result.markers[i] - sent[i]) * 1000 for i in sent if i in result.markers]


async def load(url: str, n: int, audio: np.ndarray, rate: int, piece_ms: int, policy: str | None) -> np.ndarray:
    delays = await asyncio.gather(*(one_stream(url, audio, rate, piece_ms, policy) for _ in range(n)))
    return np.array([d for ds in delays for d in ds])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--audio", help="wav to stream (default: 20 s of seeded noise-like audio)")
    ap.add_argument("--seconds", type=float, default=20.0, help="audio per stream")
    ap.add_argument("--policy", default=None)
    ap.add_argument("--max-streams", type=int, default=32)
    ap.add_argument("--bound-ms", type=float, default=300.0)
    ap.add_argument("--piece-ms", type=int, default=320, help="audio per frame; one marker per frame")
    args = ap.parse_args()

    if args.audio:
        audio, rate = read_audio(args.audio)
        reps = int(np.ceil(args.seconds * rate / len(audio)))
        audio = np.tile(audio, (reps, 1))[: int(args.seconds * rate)]
    else:
        rate = 16000
        rng = np.random.default_rng(0)
        t = np.arange(int(args.seconds * rate)) / rate
        audio = (0.2 * np.sin(2 * np.pi * 220 * t * (1 + 0.3 * np.sin(t))) + 0.02 * rng.standard_normal(t.size))
        audio = audio.astype(np.float32)[:, None]

    with tempfile.TemporaryDirectory() as tmp:
        port_file = Path(tmp) / "port"
        server = subprocess.Popen([sys.executable, "-m", "streamst.cli", "serve", "--model", args.model, "--port", "0",
                                   "--port-file", str(port_file), "--max-streams", str(args.max_streams),
                                   "--max-streams-per-client", str(args.max_streams), "--log-level", "WARNING"])
        try:
            while not port_file.exists():
                if server.poll() is not None:
                    raise SystemExit("streamst serve did not start")
                time.sleep(0.1)
            url = f"ws://127.0.0.1:{port_file.read_text()}/"
            best = 0
            n = 1
            print(f"{'streams':>7} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}")
            while n <= args.max_streams:
                d = asyncio.run(load(url, n, audio, rate, args.piece_ms, args.policy))
                p50, p95 = np.percentile(d, [50, 95])
                print(f"{n:>7} {p50:>8.0f} {p95:>8.0f} {d.max():>8.0f}", flush=True)
                if p95 >= args.bound_ms:
                    break
                best = n
                n = n * 2 if n < 8 else n + 4
            print(f"real-time streams with p95 added delay < {args.bound_ms:.0f} ms: {best}")
        finally:
            server.terminate()
            server.wait(60)
    return 0


if __name__ == "__main__":
    sys.exit(main())
