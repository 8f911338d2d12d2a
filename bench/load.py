"""How many real-time streams does this machine carry? Added delay p95 must stay under 300 ms.

For each scheduler (`streamst serve --scheduler batch` and `--scheduler threads` by default, in the same run),
starts the real server on a free loopback port with the shipped default model, then runs N concurrent clients
that each send speech at real-time pace (LibriVox clips, each client starting at a different clip; starts spread
over one piece), with a `marker` after every 320 ms piece. The added delay of a piece
is the time from sending its marker to getting the marker back: the server's queueing plus compute plus
loopback. The schedulers take turns at each N (both servers stay up, so a change in the machine's load hits
both); N grows by half (1, 2, 3, 4, 6, 9, ...) until each scheduler breaks the bound (or runs through `--streams`).
Prints one line per run and, per scheduler, the largest N whose p95 stays under the bound. (The ramp's servers
get `--max-streams`, so that admission does not cut the ramp short.)

Then, on a server with the default admission (measured capacity) and the first scheduler: the lag of one
real-time stream of real speech (every LibriVox clip in a row; `lag_ms` of every event and of a pong each
second, and how long after the speaker stopped the last words came), and what the N+1th client gets: clients
connect one after another, each streaming in real time, until one is refused (`busy`).

    python bench/load.py [--model M] [--schedulers batch,threads] [--policy waitk:k=3] [--audio FILE]
                         [--seconds 20] [--max-streams 64 | --streams 1,2,4,8] [--bound-ms 300] [--json]
                         [--no-ramp] [--no-lag] [--no-busy]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import signal
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
    fatal = [e for e in result.errors if e.get("fatal")]
    if result.done is None or fatal:
        raise RuntimeError(f"a stream did not finish cleanly: {fatal or 'no done message'}")
    return [(result.markers[i] - sent[i]) * 1000 for i in sent if i in result.markers], len(result.words)


async def load(url: str, n: int, variants: list[np.ndarray], rate: int, piece_ms: int,
               policy: str | None) -> tuple[np.ndarray, int]:
    runs = await asyncio.gather(*(one_stream(url, variants[i % len(variants)], rate, piece_ms, policy,
                                             i * piece_ms / 1000 / n) for i in range(n)))
    return np.array([d for ds, _ in runs for d in ds]), sum(w for _, w in runs)


def speech(path: str | None, seconds: float) -> tuple[list[np.ndarray], int]:
    """`seconds` of speech per variant: the librivox clips in each rotated order (so that clients start at
    different utterances, as independent speakers would, and the costly moments do not coincide), else the
    given file looped, else seeded speech-like noise."""
    if path:
        clips = [read_audio(path)]
    elif (LIBRIVOX / "fileids").exists():
        clips = [read_audio(LIBRIVOX / f"{name.strip()}.wav") for name in (LIBRIVOX / "fileids").read_text().split()]
    else:
        rate = 16000
        rng = np.random.default_rng(0)
        t = np.arange(int(seconds * rate)) / rate
        audio = 0.2 * np.sin(2 * np.pi * 220 * t * (1 + 0.3 * np.sin(t))) + 0.02 * rng.standard_normal(t.size)
        return [audio.astype(np.float32)[:, None]], rate
    rate = clips[0][1]
    if any(r != rate for _, r in clips):
        raise SystemExit("the clips differ in sample rate")
    mono = [a[:, :1] for a, _ in clips]
    variants = []
    for i in range(len(mono)):
        audio = np.concatenate(mono[i:] + mono[:i])
        reps = int(np.ceil(seconds * rate / len(audio)))
        variants.append(np.tile(audio, (reps, 1))[: int(seconds * rate)])
    return variants, rate


class Server:
    """`streamst serve` in a subprocess on a free loopback port."""

    def __init__(self, model: str | None, scheduler: str, max_streams: int | None, tmp: Path, extra: list[str]):
        port_file = tmp / f"port-{scheduler}-{max_streams}"
        self.log = tmp / f"serve-{scheduler}-{max_streams}.log"
        limit = [] if max_streams is None else ["--max-streams", str(max_streams)]
        self.proc = subprocess.Popen([sys.executable, "-m", "streamst.cli", "serve", *(["--model", model] if model else []),
                                      "--port", "0", "--port-file", str(port_file), "--scheduler", scheduler,
                                      "--torch-threads", "1", *limit, "--max-streams-per-client", "1000",
                                      "--idle-timeout-s", "600", "--log-level", "WARNING", *extra],
                                     stderr=open(self.log, "w"))
        while not port_file.exists():
            if self.proc.poll() is not None:
                raise SystemExit(f"streamst serve did not start:\n{self.log.read_text()}")
            time.sleep(0.1)
        self.url = f"ws://127.0.0.1:{port_file.read_text()}/"

    def banner(self) -> str:
        """The line `streamst serve` printed when it started listening (model, capacity)."""
        return next((line for line in self.log.read_text().splitlines() if line.startswith("streamst serve:")), "")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(60)


def measure(servers: dict[str, "Server"], args, variants: list[np.ndarray], rate: int, log) -> dict[str, tuple[int, dict]]:
    """Per scheduler, the largest N under the bound and {N: (p50, p95, max, words)}. The schedulers take turns at
    each N (so a change in the machine's load hits both); N doubles until every scheduler broke the bound, or
    runs through `--streams`."""
    tried: dict[str, dict[int, tuple]] = {name: {} for name in servers}
    best = {name: 0 for name in servers}
    live = set(servers)
    fixed = sorted(int(x) for x in args.streams.split(",")) if args.streams else None
    log(f"{'scheduler':>9} {'streams':>7} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8} {'words':>7}")
    n = fixed[0] if fixed else 1
    while live and n <= args.max_streams:
        for name in servers:
            if name not in live:
                continue
            d, words = asyncio.run(load(servers[name].url, n, variants, rate, args.piece_ms, args.policy))
            p50, p95 = np.percentile(d, [50, 95]) if d.size else (float("inf"), float("inf"))
            tried[name][n] = (float(p50), float(p95), float(d.max()) if d.size else float("inf"), words)
            log(f"{name:>9} {n:>7} {p50:>8.0f} {p95:>8.0f} {tried[name][n][2]:>8.0f} {words:>7}")
            if p95 < args.bound_ms:
                best[name] = max(best[name], n)
            elif not fixed:
                live.discard(name)
        if fixed:
            later = [m for m in fixed if m > n]
            if not later:
                break
            n = later[0]
        else:
            n = max(n + 1, n * 3 // 2)
    return {name: (best[name], tried[name]) for name in servers}


async def lag_of_one_stream(url: str, audio: np.ndarray, rate: int, piece_ms: int, policy: str | None) -> dict:
    """One real-time stream: its `lag_ms` figures and how long after the last audio went out `done` came."""
    step = int(rate * piece_ms / 1000)
    pieces = [audio[i:i + step].astype("<f4").tobytes() for i in range(0, len(audio), step)]
    config = {"sample_rate": rate, "encoding": "f32le", "channels": audio.shape[1], **({"policy": policy} if policy else {})}
    last_sent = [0.0]

    async def source():
        async for p in paced(pieces, lambda p: len(p) / 4 / audio.shape[1] / rate):
            yield p
        last_sent[0] = time.perf_counter()

    result = await stream_audio(url, source(), config, ping_every_s=1.0)
    finished = time.perf_counter()
    lags = np.array(result.lags_ms[:-1] or [0.0])  # the last figure is `done`'s 0
    return {"audio_s": round(len(audio) / rate, 1), "words": len(result.words),
            "lag_p50_ms": round(float(np.percentile(lags, 50)), 0), "lag_p95_ms": round(float(np.percentile(lags, 95)), 0),
            "lag_max_ms": round(float(lags.max()), 0), "done_after_speech_s": round(finished - last_sent[0], 2),
            "warnings": sorted({e["error"] for e in result.errors if not e.get("fatal")}),
            "rtf": round(result.done["stats"]["rtf"], 3) if result.done else None}


async def until_busy(url: str, audio: np.ndarray, rate: int, piece_ms: int, limit: int) -> dict:
    """Clients connect one after another (each streaming in real time) until one is refused: what it got."""
    from streamst.server.client import ServerError

    step = int(rate * piece_ms / 1000)
    pieces = [audio[i:i + step].astype("<f4").tobytes() for i in range(0, len(audio), step)]
    config = {"sample_rate": rate, "encoding": "f32le", "channels": audio.shape[1]}
    held: list[asyncio.Task] = []
    refusal: dict | None = None
    try:
        for _ in range(limit):
            first: asyncio.Future = asyncio.get_running_loop().create_future()

            def seen(msg: dict, first: asyncio.Future = first) -> None:
                if not first.done():
                    first.set_result(msg)

            task = asyncio.create_task(stream_audio(url, paced(pieces, lambda p: len(p) / 4 / audio.shape[1] / rate),
                                                    config, on_message=seen))
            await asyncio.wait([task, first], return_when=asyncio.FIRST_COMPLETED)
            if not first.done() or first.result().get("type") != "ready":
                try:
                    await task
                    refusal = {"error": "closed without ready"}
                except ServerError as e:
                    refusal = e.message
                except Exception as e:  # noqa: BLE001
                    refusal = {"error": repr(e)}
                break
            held.append(task)
            await asyncio.sleep(0.5)
    finally:
        for task in held:
            task.cancel()
        await asyncio.gather(*held, return_exceptions=True)
    return {"admitted": len(held), "refusal": refusal}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model name or checkpoint (default: the server's default model)")
    ap.add_argument("--schedulers", default="batch", help="comma-separated: batch, threads")
    ap.add_argument("--no-ramp", action="store_true", help="skip the stream-count ramp")
    ap.add_argument("--no-lag", action="store_true", help="skip the lag of one real-time stream")
    ap.add_argument("--no-busy", action="store_true", help="skip the N+1th client")
    ap.add_argument("--audio", help="audio to stream, looped (default: pocketsphinx-testdata's librivox speech)")
    ap.add_argument("--seconds", type=float, default=20.0, help="audio per stream")
    ap.add_argument("--policy", default=None, help="policy spec (default: the server's, streamatt:frames=4,history_words=20)")
    ap.add_argument("--max-streams", type=int, default=64)
    ap.add_argument("--streams", help="run exactly these stream counts (e.g. 1,2,4,8) instead of the ramp")
    ap.add_argument("--bound-ms", type=float, default=300.0)
    ap.add_argument("--piece-ms", type=int, default=320, help="audio per frame; one marker per frame")
    ap.add_argument("--json", action="store_true", help="also print one JSON object")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # so that the servers are stopped on the way out
    variants, rate = speech(args.audio, args.seconds)
    log = lambda *a: print(*a, file=sys.stderr if args.json else sys.stdout, flush=True)  # noqa: E731
    log(f"model {args.model or 'the server default'}, {len(variants[0]) / rate:.0f} s of audio per stream "
        f"({len(variants)} variants), piece {args.piece_ms} ms, bound p95 < {args.bound_ms:.0f} ms")
    names = args.schedulers.split(",")
    results: dict = {}
    extra = ["--policy", args.policy] if args.policy else []
    with tempfile.TemporaryDirectory() as tmp:
        if not args.no_ramp:
            servers: dict[str, Server] = {}
            try:
                for name in names:
                    servers[name] = Server(args.model, name, args.max_streams, Path(tmp), extra)
                results["model_banner"] = servers[names[0]].banner()
                found = measure(servers, args, variants, rate, log)
            finally:
                for server in servers.values():
                    server.stop()
            results.update({name: {"streams": best, "tried": {
                str(n): {"p50_ms": round(v[0], 1), "p95_ms": round(v[1], 1), "max_ms": round(v[2], 1), "words": v[3]}
                for n, v in sorted(tried.items())}} for name, (best, tried) in found.items()})
            for name in names:
                log(f"{name:>8}: real-time streams with p95 added delay < {args.bound_ms:.0f} ms: "
                    f"{results[name]['streams']}")
        if not (args.no_lag and args.no_busy):
            server = Server(args.model, names[0], None, Path(tmp), extra)
            try:
                results["admission_banner"] = server.banner()
                log(results["admission_banner"])
                if not args.no_lag:
                    clips = np.concatenate(one_pass(args.audio))
                    results["one_stream"] = asyncio.run(lag_of_one_stream(server.url, clips, rate, args.piece_ms,
                                                                          args.policy))
                    log(f"one real-time stream: {json.dumps(results['one_stream'])}")
                if not args.no_busy:
                    held_audio = np.tile(variants[0], (30, 1))  # the held clients must not end before the refusal
                    results["next_client"] = asyncio.run(until_busy(server.url, held_audio, rate, args.piece_ms,
                                                                    args.max_streams))
                    log(f"clients until busy: {json.dumps(results['next_client'])}")
            finally:
                server.stop()
    if args.json:
        print(json.dumps({"model": args.model, "bound_ms": args.bound_ms, "seconds": args.seconds, **results}))
    return 0


def one_pass(path: str | None) -> list[np.ndarray]:
    """The speech once through (every LibriVox clip in a row, or the given file), mono."""
    if path:
        return [read_audio(path)[0][:, :1]]
    if (LIBRIVOX / "fileids").exists():
        return [read_audio(LIBRIVOX / f"{n.strip()}.wav")[0][:, :1] for n in (LIBRIVOX / "fileids").read_text().split()]
    return speech(None, 20.0)[0][:1]


if __name__ == "__main__":
    sys.exit(main())
