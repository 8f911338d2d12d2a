"""How many real-time streams does this machine carry? Added delay p95 must stay under 300 ms.

For each scheduler (`streamst serve --scheduler batch` and `--scheduler threads` by default, in the same run),
starts the real server on a free loopback port with the shipped default model, then runs N concurrent clients
that each send the same speech at real-time pace (starts spread over one piece, as independent clients would),
with a `marker` after every 320 ms piece. The added delay of a piece is the time from sending its marker to
getting the marker back: the server's queueing plus compute plus loopback. N doubles until the bound is broken,
then bisects. Prints one line per N tried and, per scheduler, the largest N whose p95 stays under the bound.

    python bench/load.py [--model en-de] [--schedulers batch,threads] [--policy waitk:k=3] [--audio FILE]
                         [--seconds 20] [--max-streams 64 | --streams 1,2,4,8] [--bound-ms 300] [--json]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from streamst.server.client import paced, stream_audio
from streamst.server.replay import read_audio

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")  # Debian's pocketsphinx-testdata: real read speech


async def one_stream(url: str, audio: np.ndarray, rate: int, piece_ms: int, policy: str | None,
                     start_s: float) -> tuple[list[float], int]:
    await asyncio.sleep(start_s)
    step = int(rate * piece_ms / 1000)
    pieces = [audio[i:i + step].astype("<f4").tobytes() for i in range(0, len(audio), step)]
    sent: dict[int, float] = {}
    config = {"sample_rate": rate, "encoding": "f32le", "channels": audio.shape[1]}
    if policy:
        config["policy"] = policy
    result = await stream_audio(url, paced(pieces, lambda p: len(p) / 4 / audio.shape[1] / rate), config,
                                marker_every=1, marker_sent=lambda i: sent.__setitem__(i, time.perf_counter()))
    return [(result.markers[i] - sent[i]) * 1000 for i in sent if i in result.markers], len(result.words)


async def load(url: str, n: int, audio: np.ndarray, rate: int, piece_ms: int, policy: str | None) -> tuple[np.ndarray, int]:
    runs = await asyncio.gather(*(one_stream(url, audio, rate, piece_ms, policy, i * piece_ms / 1000 / n)
                                  for i in range(n)))
    return np.array([d for ds, _ in runs for d in ds]), sum(w for _, w in runs)


def speech(path: str | None, seconds: float) -> tuple[np.ndarray, int]:
    """`seconds` of the given file (looped), else of the librivox clips, else seeded speech-like noise."""
    if path:
        clips = [read_audio(path)]
    elif (LIBRIVOX / "fileids").exists():
        clips = [read_audio(LIBRIVOX / f"{name.strip()}.wav") for name in (LIBRIVOX / "fileids").read_text().split()]
    else:
        rate = 16000
        rng = np.random.default_rng(0)
        t = np.arange(int(seconds * rate)) / rate
        audio = 0.2 * np.sin(2 * np.pi * 220 * t * (1 + 0.3 * np.sin(t))) + 0.02 * rng.standard_normal(t.size)
        return audio.astype(np.float32)[:, None], rate
    rate = clips[0][1]
    if any(r != rate for _, r in clips):
        raise SystemExit("the clips differ in sample rate")
    audio = np.concatenate([a[:, :1] for a, _ in clips])
    reps = int(np.ceil(seconds * rate / len(audio)))
    return np.tile(audio, (reps, 1))[: int(seconds * rate)], rate


class Server:
    """`streamst serve` in a subprocess on a free loopback port."""

    def __init__(self, model: str, scheduler: str, max_streams: int, tmp: Path, extra: list[str]):
        port_file = tmp / f"port-{scheduler}"
        self.proc = subprocess.Popen([sys.executable, "-m", "streamst.cli", "serve", "--model", model, "--port", "0",
                                      "--port-file", str(port_file), "--scheduler", scheduler, "--torch-threads", "1",
                                      "--max-streams", str(max_streams), "--max-streams-per-client", str(max_streams),
                                      "--idle-timeout-s", "600", "--log-level", "WARNING", *extra])
        while not port_file.exists():
            if self.proc.poll() is not None:
                raise SystemExit("streamst serve did not start")
            time.sleep(0.1)
        self.url = f"ws://127.0.0.1:{port_file.read_text()}/"

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def ramp(url: str, args, audio: np.ndarray, rate: int, log) -> tuple[int, dict]:
    """Largest N under the bound (doubling, then bisection); returns it and {N: (p50, p95, max, words)}."""
    tried: dict[int, tuple] = {}

    def ok(n: int) -> bool:
        d, words = asyncio.run(load(url, n, audio, rate, args.piece_ms, args.policy))
        p50, p95 = np.percentile(d, [50, 95]) if d.size else (float("inf"), float("inf"))
        tried[n] = (float(p50), float(p95), float(d.max()) if d.size else float("inf"), words)
        log(f"{n:>7} {p50:>8.0f} {p95:>8.0f} {tried[n][2]:>8.0f} {words:>7}")
        return p95 < args.bound_ms

    log(f"{'streams':>7} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'words':>7}")
    if args.streams:  # a fixed list: every N is run, the answer is the largest that kept the bound
        passed = [n for n in sorted(int(x) for x in args.streams.split(",")) if ok(n)]
        return max(passed, default=0), tried
    if not ok(1):
        return 0, tried
    good, bad = 1, None
    while bad is None and good < args.max_streams:
        n = min(good * 2, args.max_streams)
        good, bad = (n, None) if ok(n) else (good, n)
    while bad is not None and bad - good > max(1, good // 8):
        mid = (good + bad) // 2
        good, bad = (mid, bad) if ok(mid) else (good, mid)
    return good, tried


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="en-de", help="model name or checkpoint (default: the shipped en-de)")
    ap.add_argument("--schedulers", default="batch,threads", help="comma-separated: batch, threads")
    ap.add_argument("--audio", help="audio to stream, looped (default: pocketsphinx-testdata's librivox speech)")
    ap.add_argument("--seconds", type=float, default=20.0, help="audio per stream")
    ap.add_argument("--policy", default=None, help="policy spec (default: the server's, waitk:k=3)")
    ap.add_argument("--max-streams", type=int, default=64)
    ap.add_argument("--streams", help="run exactly these stream counts (e.g. 1,2,4,8) instead of the ramp")
    ap.add_argument("--bound-ms", type=float, default=300.0)
    ap.add_argument("--piece-ms", type=int, default=320, help="audio per frame; one marker per frame")
    ap.add_argument("--json", action="store_true", help="also print one JSON object")
    args = ap.parse_args()
    audio, rate = speech(args.audio, args.seconds)
    log = lambda *a: print(*a, file=sys.stderr if args.json else sys.stdout, flush=True)  # noqa: E731
    log(f"model {args.model}, {len(audio) / rate:.0f} s of audio per stream, piece {args.piece_ms} ms, "
        f"bound p95 < {args.bound_ms:.0f} ms")
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.schedulers.split(","):
            log(f"--scheduler {name}")
            server = Server(args.model, name, args.max_streams, Path(tmp), [])
            try:
                best, tried = ramp(server.url, args, audio, rate, log)
            finally:
                server.stop()
            results[name] = {"streams": best, "tried": {str(n): {"p50_ms": round(v[0], 1), "p95_ms": round(v[1], 1),
                                                                 "max_ms": round(v[2], 1), "words": v[3]}
                                                        for n, v in sorted(tried.items())}}
    for name, r in results.items():
        log(f"{name:>8}: real-time streams with p95 added delay < {args.bound_ms:.0f} ms: {r['streams']}")
    if args.json:
        print(json.dumps({"model": args.model, "bound_ms": args.bound_ms, "seconds": args.seconds, **results}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
