"""Soak `streamst serve`: N concurrent clients stream for a while; prints words lost, the server's RSS after
warm-up vs at the end, and the per-chunk time at the start vs at the end.

    python bench/soak.py --streams 32 --minutes 10                 # 32 clients, 10 min of audio each, 60 s streams
    python bench/soak.py --streams 1 --minutes 60 --session-s 0    # one stream of an hour

Each client opens a stream, sends `--session-s` seconds of audio (the wavs, default the bundled sample, looped
with pauses) and `eos`, checks the words against the same audio pushed straight into a `Session` (the reference),
then reconnects, until it has sent `--minutes` of audio (`--session-s 0`: one stream for all of it). Without
`--realtime` a client sends one chunk, then a `marker`, and waits for the marker to come back before the next
chunk, so the marker's round trip is the per-chunk time through the server (queueing among the streams, compute,
loopback) and the soak runs as fast as the server can. With `--realtime` the chunks go at real-time pace and the
round trip is the added delay.

Words lost = reference words not delivered (before `done`); a stream that ends without `done` counts all its
reference words as lost. RSS is the server process's VmRSS, sampled every second; "after warm-up" is the sample
when 10% of all chunks were done, "end" the last sample while streams were open.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import difflib
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

SAMPLE_RATE = 16000


@dataclass
class Chunk:
    t: float  # seconds since the soak started, when the chunk's marker came back
    ms: float  # the marker's round trip


@dataclass
class Tally:
    """What every client reports, summed."""

    sessions: int = 0
    failed: int = 0  # streams that ended without `done` (or with another close code than 1000)
    mismatched: int = 0  # streams whose words differ from the reference
    words_reference: int = 0
    words_delivered: int = 0
    words_lost: int = 0
    done_count_mismatch: int = 0  # `done.words` differs from the words this client received
    chunks: list[Chunk] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def rss_mb(pid: int) -> float | None:
    """VmRSS of a process, in MB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def session_audio(wavs: list[str], seconds: float) -> np.ndarray:
    """The wavs one after another with 0.5 s pauses, looped to `seconds` (16 kHz mono float32)."""
    from streamst.audio import read_audio

    clips = []
    for w in wavs:
        audio, rate = read_audio(w)
        if rate != SAMPLE_RATE:
            raise SystemExit(f"{w}: {rate} Hz; the soak needs 16 kHz wavs")
        clips += [audio.mean(axis=1), np.zeros(SAMPLE_RATE // 2, np.float32)]
    loop = np.concatenate(clips).astype(np.float32)
    n = int(seconds * SAMPLE_RATE)
    return np.resize(loop, n) if n > loop.size else loop[:n]


def reference_words(model: str, policy: str, chunk_ms: int, audio: np.ndarray) -> list[str]:
    """Committed words of the audio pushed straight into a Session: what the server must deliver."""
    import torch

    from streamst.checkpoint import load_model
    from streamst.events import Word
    from streamst.policies import parse_policy
    from streamst.session import Session

    torch.set_num_threads(1)
    session = Session(load_model(model), parse_policy(policy), chunk_ms=chunk_ms)
    events = session.push(audio) + session.finish()
    return [e.text for e in events if isinstance(e, Word)]


def words_lost(reference: list[str], delivered: list[str]) -> int:
    """Reference words missing from what was delivered (in order)."""
    matcher = difflib.SequenceMatcher(a=reference, b=delivered, autojunk=False)
    return len(reference) - sum(block.size for block in matcher.get_matching_blocks())


async def one_session(url: str, audio: np.ndarray, chunk_ms: int, realtime: bool, t0: float,
                      tally: Tally, reference: list[str] | None) -> None:
    """One stream: config, chunks (each followed by a marker), eos; checks the words at `done`."""
    from websockets.asyncio.client import connect
    from websockets.exceptions import ConnectionClosed

    step = SAMPLE_RATE * chunk_ms // 1000
    pieces = [audio[i:i + step].astype("<f4").tobytes() for i in range(0, audio.size, step)]
    sent: dict[int, float] = {}
    echoed: dict[int, asyncio.Future] = {}
    words: list[str] = []
    done: dict | None = None
    loop = asyncio.get_running_loop()
    async with connect(url, max_size=1 << 24, open_timeout=60, close_timeout=30) as ws:
        await ws.send(json.dumps({"type": "config", "sample_rate": SAMPLE_RATE, "encoding": "f32le"}))
        ready = json.loads(await ws.recv())
        if ready.get("type") != "ready":
            tally.failed += 1
            tally.errors.append(f"refused: {ready}")
            return

        async def read() -> None:
            nonlocal done
            with contextlib.suppress(ConnectionClosed):
                async for raw in ws:
                    msg = json.loads(raw)
                    kind = msg.get("type")
                    if kind == "stable":
                        words.extend(w["text"] for w in msg["words"])
                    elif kind == "marker":
                        now = time.perf_counter()
                        tally.chunks.append(Chunk(now - t0, (now - sent[msg["id"]]) * 1000.0))
                        fut = echoed.pop(msg["id"], None)
                        if fut is not None and not fut.done():
                            fut.set_result(None)
                    elif kind == "done":
                        done = msg
                    elif kind == "error":
                        tally.errors.append(f"{msg.get('error')}: {msg.get('message')}")

        reader = asyncio.create_task(read())
        start = time.perf_counter()
        try:
            for i, piece in enumerate(pieces):
                if realtime:
                    delay = start + i * chunk_ms / 1000 - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                else:
                    echoed[i] = loop.create_future()
                await ws.send(piece)
                sent[i] = time.perf_counter()
                await ws.send(json.dumps({"type": "marker", "id": i}))
                if not realtime:
                    await asyncio.wait_for(echoed[i], 120)
            await ws.send(json.dumps({"type": "eos"}))
        except ConnectionClosed:
            pass
        await asyncio.wait_for(reader, 300)
        code = ws.close_code
    tally.sessions += 1
    tally.words_delivered += len(words)
    if done is None or code != 1000:
        tally.failed += 1
        tally.errors.append(f"stream ended without done (close {code})")
    elif done["words"] != len(words):
        tally.done_count_mismatch += 1
    if reference is not None:
        tally.words_reference += len(reference)
        lost = len(reference) if done is None else words_lost(reference, words)
        tally.words_lost += lost
        tally.mismatched += words != reference
    elif done is None:
        tally.words_lost += len(words)


async def client(url: str, audio: np.ndarray, sessions: int, chunk_ms: int, realtime: bool, t0: float,
                 tally: Tally, reference: list[str] | None, delay_s: float) -> None:
    await asyncio.sleep(delay_s)
    for _ in range(sessions):
        try:
            await one_session(url, audio, chunk_ms, realtime, t0, tally, reference)
        except (OSError, asyncio.TimeoutError) as e:
            tally.sessions += 1
            tally.failed += 1
            tally.errors.append(f"{type(e).__name__}: {e}")
            if reference is not None:
                tally.words_reference += len(reference)
                tally.words_lost += len(reference)


async def sample_rss(pid: int, t0: float, samples: list[tuple[float, float]], stop: asyncio.Event,
                     tally: Tally, planned: int) -> None:
    """Every second: the server's RSS; every minute a progress line on stderr."""
    while not stop.is_set():
        value = rss_mb(pid)
        if value is not None:
            samples.append((time.perf_counter() - t0, value))
            if len(samples) % 60 == 0:
                print(f"soak: {samples[-1][0]:.0f} s, {len(tally.chunks)}/{planned} chunks, "
                      f"{tally.sessions} streams done, RSS {value:.0f} MB", file=sys.stderr, flush=True)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)


async def soak(url: str, pid: int, args: argparse.Namespace, audio: np.ndarray, sessions: int,
               reference: list[str] | None, planned: int) -> tuple[Tally, list[tuple[float, float]], float]:
    tally = Tally()
    samples: list[tuple[float, float]] = []
    t0 = time.perf_counter()
    stop = asyncio.Event()
    sampler = asyncio.create_task(sample_rss(pid, t0, samples, stop, tally, planned))
    await asyncio.gather(*(client(url, audio, sessions, args.chunk_ms, args.realtime, t0, tally, reference,
                                  0.05 * i) for i in range(args.streams)))
    samples.append((time.perf_counter() - t0, rss_mb(pid) or float("nan")))
    stop.set()
    await sampler
    return tally, samples, time.perf_counter() - t0


def start_server(args: argparse.Namespace, tmp: Path) -> tuple[subprocess.Popen, str]:
    port_file = tmp / "port"
    cmd = [sys.executable, "-m", "streamst.cli", "serve", "--model", args.model, "--port", "0",
           "--port-file", str(port_file), "--policy", args.policy, "--chunk-ms", str(args.chunk_ms),
           "--max-streams", str(args.streams), "--max-streams-per-client", str(args.streams),
           "--idle-timeout-s", "600", "--torch-threads", "1", "--scheduler", args.scheduler, "--log-level", "WARNING",
           "--catch-up-lag-s", "inf"]  # every stream's words are checked against a lone Session's: no merged chunks
    server = subprocess.Popen(cmd, stderr=open(tmp / "serve.log", "w"), stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 300
    while not port_file.exists():
        if server.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"streamst serve did not start:\n{(tmp / 'serve.log').read_text()}")
        time.sleep(0.1)
    return server, f"ws://127.0.0.1:{port_file.read_text()}/"


def summarize(args: argparse.Namespace, tally: Tally, samples: list[tuple[float, float]], wall_s: float,
              planned_chunks: int) -> dict:
    chunks = sorted(tally.chunks, key=lambda c: c.t)
    tenth = max(1, len(chunks) // 10)
    warm_t = chunks[min(len(chunks) - 1, planned_chunks // 10)].t if chunks else 0.0
    warm = next((mb for t, mb in samples if t >= warm_t), samples[-1][1] if samples else float("nan"))
    open_samples = [mb for t, mb in samples[:-1]] or [s[1] for s in samples]
    end = open_samples[-1]
    after = [mb for t, mb in samples if t >= warm_t] or [end]

    def pct(values: list[float], q: float) -> float:
        return float(np.percentile(values, q)) if values else float("nan")

    first = [c.ms for c in chunks[:tenth]]
    last = [c.ms for c in chunks[-tenth:]]
    return {
        "streams": args.streams, "minutes_audio_per_stream": args.minutes, "session_s": args.session_s,
        "realtime": args.realtime, "scheduler": args.scheduler, "policy": args.policy, "model": args.model,
        "wall_s": round(wall_s, 1),
        "sessions": tally.sessions, "sessions_failed": tally.failed, "sessions_mismatched": tally.mismatched,
        "done_count_mismatch": tally.done_count_mismatch,
        "words_reference": tally.words_reference, "words_delivered": tally.words_delivered,
        "words_lost": tally.words_lost, "chunks": len(chunks),
        "rss_warm_mb": round(warm, 1), "rss_end_mb": round(end, 1), "rss_max_after_warm_mb": round(max(after), 1),
        "rss_growth_pct": round(100.0 * (end - warm) / warm, 2) if warm else None,
        "chunk_ms_p50_start": round(pct(first, 50), 2), "chunk_ms_p95_start": round(pct(first, 95), 2),
        "chunk_ms_p50_end": round(pct(last, 50), 2), "chunk_ms_p95_end": round(pct(last, 95), 2),
        "errors": sorted(set(tally.errors))[:10],
    }


def main() -> int:
    from streamst.commands.demo import SAMPLE

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="en-de-espeak", help="model name or checkpoint (default: the shipped en-de-espeak)")
    ap.add_argument("--policy", default="streamatt:frames=4,history_words=20",
                    help="policy for every stream (default: StreamAtt, bounded memory on endless streams)")
    ap.add_argument("--streams", type=int, default=32, help="concurrent clients")
    ap.add_argument("--minutes", type=float, default=10.0, help="minutes of audio each client sends")
    ap.add_argument("--session-s", type=float, default=60.0,
                    help="audio seconds per stream before eos and a reconnect (0: one stream for all --minutes)")
    ap.add_argument("--chunk-ms", type=int, default=320)
    ap.add_argument("--scheduler", choices=["batch", "threads"], default="batch", help="the server's --scheduler")
    ap.add_argument("--wav", action="append", default=[], help="16 kHz wav(s) to loop (default: the bundled sample)")
    ap.add_argument("--realtime", action="store_true", help="send at real-time pace instead of chunk by chunk")
    ap.add_argument("--no-reference", action="store_true",
                    help="skip the reference run (then words lost counts only streams that ended without done)")
    ap.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = ap.parse_args()
    if args.streams < 1 or args.minutes <= 0 or args.session_s < 0:
        raise SystemExit("--streams >= 1, --minutes > 0, --session-s >= 0")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    total_s = args.minutes * 60.0
    session_s = total_s if args.session_s == 0 else min(args.session_s, total_s)
    sessions = max(1, round(total_s / session_s))
    audio = session_audio(args.wav or [str(SAMPLE)], session_s)
    reference = None if args.no_reference else reference_words(args.model, args.policy, args.chunk_ms, audio)
    planned = args.streams * sessions * math.ceil(audio.size / (SAMPLE_RATE * args.chunk_ms // 1000))
    print(f"soak: {args.streams} streams x {sessions} session(s) of {session_s:.0f} s, policy {args.policy}, "
          f"{len(reference) if reference is not None else '?'} reference words per session", file=sys.stderr)
    with tempfile.TemporaryDirectory() as tmp:
        server, url = start_server(args, Path(tmp))
        try:
            tally, samples, wall_s = asyncio.run(soak(url, server.pid, args, audio, sessions, reference, planned))
        finally:
            server.terminate()
            try:
                server.wait(120)
            except subprocess.TimeoutExpired:
                server.kill()
            log = (Path(tmp) / "serve.log").read_text()
    result = summarize(args, tally, samples, wall_s, planned)
    result["server_tracebacks"] = log.count("Traceback")
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:<26}{value}")
    ok = result["words_lost"] == 0 and result["sessions_failed"] == 0 and result["server_tracebacks"] == 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
