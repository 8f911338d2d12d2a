"""Reliability of the server and of long jobs (issue #9): faults over the wire, nothing lost, access limits, and
`streamst eval` killed at random points. Real tiny model, real loopback sockets, real subprocesses.

The fault tests drive the server through `scheduler.push` / `scheduler.finish` only, so they hold for any
scheduler behind that interface.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from streamst.server.protocol import Close, Limits
from streamst.server.replay import pieces_of, read_audio
from test_server import ServeProcess, messages_until_close, offline_words, open_stream

ROOT = Path(__file__).resolve().parents[1]
POLICY = "waitk:k=2"


def run(coro, timeout: float = 180):
    return asyncio.run(asyncio.wait_for(coro, timeout))


# ------------------------------------------------------------------------------------------- in-process server


class LocalServer:
    """A `StreamServer` on a free loopback port inside the test's event loop (custom limits and sessions)."""

    def __init__(self, model, limits: Limits, make_session=None, scheduler: str = "threads"):
        from dataclasses import replace

        from streamst.server.app import ServerConfig, StreamServer

        limits = replace(limits, catchup_lag_s=float("inf"))  # no catch-up: words equal a lone Session's exactly

        if scheduler == "batch":
            from streamst.server.batching import BatchingScheduler

            self.scheduler = BatchingScheduler(torch_threads=1)
        else:
            from streamst.server.scheduler import Scheduler

            self.scheduler = Scheduler(workers=1, torch_threads=1)
        self.server = StreamServer(model, ServerConfig(model_name="tiny", default_policy=POLICY, limits=limits),
                                   self.scheduler, make_session=make_session)
        self.url = ""

    async def __aenter__(self) -> "LocalServer":
        ws_server = await self.server.start("127.0.0.1", 0)
        self.url = f"ws://127.0.0.1:{next(iter(ws_server.sockets)).getsockname()[1]}/"
        return self

    async def __aexit__(self, *exc) -> None:
        await self.server.shutdown(timeout_s=10)
        self.scheduler.close()


async def good_stream(url: str, wav: Path, realtime: bool = True, policy: str = POLICY) -> tuple:
    """Stream a file with a marker after every 100 ms piece; returns (result, marker round trips in ms)."""
    from streamst.server.client import paced, stream_audio

    audio, rate = read_audio(wav)
    pieces = pieces_of(audio, rate, 100)
    source = paced(pieces, lambda p: len(p) / 4 / rate) if realtime else pieces
    sent: dict = {}
    result = await stream_audio(url, source, {"sample_rate": rate, "encoding": "f32le", "policy": policy},
                                marker_every=1, marker_sent=lambda i: sent.__setitem__(i, time.perf_counter()))
    delays = [(result.markers[i] - sent[i]) * 1000 for i in sent if i in result.markers]
    return result, delays


async def freed(server, timeout: float = 10.0) -> int:
    """Open streams once the server has seen every closed connection go (or after `timeout`)."""
    deadline = time.monotonic() + timeout
    while server.open_streams and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    return server.open_streams


@pytest.fixture(params=["threads", "batch"])
def scheduler(request) -> str:
    """Both schedulers behind `push` / `finish`: one thread per step, and cross-stream batches."""
    return request.param


@pytest.fixture(scope="module")
def wavs(tiny_corpus) -> list[Path]:
    return [Path(w) for w, _ in tiny_corpus[:3]]


@pytest.fixture(scope="module")
def expected(tiny_model_path, wavs) -> list[list[str]]:
    return [offline_words(tiny_model_path, w, POLICY) for w in wavs]


# ------------------------------------------------------------------------------------------- 3. nothing lost


def test_short_soak_loses_no_words_and_keeps_rss_flat(tiny_model_path, wavs):
    """bench/soak.py in its CI form: 8 concurrent streams, 40 s of audio each in 10 s streams (reconnecting)."""
    cmd = [sys.executable, str(ROOT / "bench" / "soak.py"), "--model", str(tiny_model_path), "--policy", POLICY,
           "--streams", "8", "--minutes", "0.67", "--session-s", "10", "--json",
           *[a for w in wavs[:2] for a in ("--wav", str(w))]]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    assert res["sessions"] == 8 * 4 and res["sessions_failed"] == 0 and res["server_tracebacks"] == 0
    assert res["words_reference"] > 0 and res["words_lost"] == 0 and res["sessions_mismatched"] == 0
    assert res["words_delivered"] == res["words_reference"] and res["done_count_mismatch"] == 0
    assert res["rss_end_mb"] <= 1.10 * res["rss_warm_mb"], res


# ------------------------------------------------------------------------------------------- 2. faults


def test_a_client_that_stops_reading_is_dropped_and_others_keep_their_words(tiny_model, wavs, expected, scheduler):
    limits = Limits(send_queue=8, send_timeout_s=1.0)
    big_id = "".join(random.Random(0).choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(8000))

    async def stalled(url: str) -> tuple[float, int]:
        """Opens a stream, then sends pings (8 KB answers each) and never reads: returns (seconds to drop, pings)."""
        sock = socket.create_connection(("127.0.0.1", int(url.rsplit(":", 1)[1].strip("/"))))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        ws = await connect(url, sock=sock, max_queue=1, compression=None)
        await ws.send(json.dumps({"type": "config"}))
        assert json.loads(await ws.recv())["type"] == "ready"
        started, sent = time.perf_counter(), 0
        try:
            while time.perf_counter() - started < 60:
                await ws.send(json.dumps({"type": "ping", "id": big_id}))
                sent += 1
                await asyncio.sleep(0.002)
        except (ConnectionClosed, OSError):
            return time.perf_counter() - started, sent
        finally:
            ws.transport.abort()
        raise AssertionError(f"a client that never reads was not dropped after {sent} pings")

    async def main():
        async with LocalServer(tiny_model, limits, scheduler=scheduler) as srv:
            good = asyncio.create_task(good_stream(srv.url, wavs[0]))
            drop_s, pings = await stalled(srv.url)
            result, delays = await good
            open_after = await freed(srv.server)
        return drop_s, pings, result, delays, open_after

    drop_s, pings, result, delays, open_after = run(main())
    # the stalled client was dropped by policy (its outgoing queue is bounded) while the other stream went on
    assert pings > limits.send_queue and drop_s < 30
    assert [w["text"] for w in result.words] == expected[0]
    assert result.done["reason"] == "eos" and result.close_code == Close.NORMAL
    assert len(delays) > 10 and max(delays) < 2000, delays  # loose: tiny-model steps take ~10 ms
    assert open_after == 0  # both slots were freed


def test_a_client_that_stops_reading_gets_a_typed_slow_consumer_when_it_reads_again(tiny_model):
    """Dropping a non-reading client is never a silent close: the error and close frame wait behind its unread
    messages, so a client that reads again within `send_timeout_s` learns why."""
    limits = Limits(send_queue=8, send_timeout_s=20.0)
    big_id = "x" * 8000

    async def main():
        async with LocalServer(tiny_model, limits) as srv:
            sock = socket.create_connection(("127.0.0.1", int(srv.url.rsplit(":", 1)[1].strip("/"))))
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            ws = await connect(srv.url, sock=sock, max_queue=1, compression=None)
            await ws.send(json.dumps({"type": "config"}))
            sent = 0
            deadline = time.monotonic() + 60
            while not any(c._dropping is not None for c in srv.server.connections):  # the server gave up on it
                assert time.monotonic() < deadline, f"not dropped after {sent} pings"
                await ws.send(json.dumps({"type": "ping", "id": big_id}))
                sent += 1
                await asyncio.sleep(0.002)
            msgs = await messages_until_close(ws)  # it reads again
            return msgs, ws.close_code, await freed(srv.server)

    msgs, code, open_after = run(main())
    assert msgs[0]["type"] == "ready" and {m["type"] for m in msgs[1:-1]} == {"pong"}
    assert msgs[-1]["type"] == "error" and msgs[-1]["error"] == "slow_consumer" and msgs[-1]["fatal"]
    assert code == Close.SLOW_CONSUMER and open_after == 0


class FailingPolicy:
    """Wraps a real policy; its third decision raises (a bug inside one stream's step)."""

    def __init__(self, inner):
        self.inner, self.calls = inner, 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def decide(self, view, state):
        self.calls += 1
        if self.calls == 3:
            raise RuntimeError("policy exploded")
        return self.inner.decide(view, state)


def test_an_exception_in_one_streams_step_is_reported_to_it_alone(tiny_model, wavs, expected, scheduler):
    from streamst.server.app import _make_session

    poison = "waitk:k=3"

    def make_session(model, config):
        session = _make_session(model, config)
        if config.policy == poison:
            session.policy = FailingPolicy(session.policy)
        return session

    async def poisoned(url: str) -> tuple[list[dict], int]:
        audio, rate = read_audio(wavs[1])
        ws, ready = await open_stream(url, {"sample_rate": rate, "encoding": "f32le", "policy": poison}, token=None)
        assert ready["type"] == "ready"
        with contextlib.suppress(ConnectionClosed):
            for piece in pieces_of(audio, rate, 100):
                await ws.send(piece)
            await ws.send(json.dumps({"type": "eos"}))
        return await messages_until_close(ws), ws.close_code

    async def main():
        async with LocalServer(tiny_model, Limits(), make_session=make_session, scheduler=scheduler) as srv:
            goods = [good_stream(srv.url, w, realtime=False) for w in wavs[:2]]
            *good, bad = await asyncio.gather(*goods, poisoned(srv.url))
            again, _ = await good_stream(srv.url, wavs[0], realtime=False)  # the server still serves
        return good, bad, again

    good, (msgs, code), again = run(main())
    assert msgs[-1]["type"] == "error" and msgs[-1]["error"] == "internal" and msgs[-1]["fatal"]
    assert "RuntimeError" in msgs[-1]["message"] and code == Close.INTERNAL
    for (result, _), words in zip(good, expected):
        assert [w["text"] for w in result.words] == words and result.done["reason"] == "eos"
    assert [w["text"] for w in again.words] == expected[0]


def test_a_message_that_cannot_be_encoded_ends_that_stream_with_internal(tiny_model, wavs, expected, scheduler):
    """A session whose clock gives NaN: its word timings are not JSON; the client gets `internal`, not silence."""
    from streamst.audio import AudioFormat
    from streamst.policies import parse_policy
    from streamst.session import Session

    def make_session(model, config):
        fmt = AudioFormat(sample_rate=config.sample_rate, channels=config.channels, encoding=config.encoding)
        clock = (lambda: float("nan")) if config.beam == 2 else time.perf_counter
        return Session(model, parse_policy(config.policy), fmt, chunk_ms=config.chunk_ms, clock=clock)

    async def broken(url: str):
        audio, rate = read_audio(wavs[0])
        ws, ready = await open_stream(url, {"sample_rate": rate, "encoding": "f32le", "beam": 2}, token=None)
        with contextlib.suppress(ConnectionClosed):
            await ws.send(audio.astype("<f4").tobytes())
            await ws.send(json.dumps({"type": "eos"}))
        return await messages_until_close(ws), ws.close_code

    async def main():
        async with LocalServer(tiny_model, Limits(), make_session=make_session, scheduler=scheduler) as srv:
            return await asyncio.gather(broken(srv.url), good_stream(srv.url, wavs[0], realtime=False))

    (msgs, code), (good, _) = run(main())
    assert msgs[-1]["error"] == "internal" and "could not be encoded" in msgs[-1]["message"]
    assert code == Close.INTERNAL
    assert [w["text"] for w in good.words] == expected[0]


def test_a_client_that_vanishes_mid_stream_frees_its_slot_and_can_reconnect(tiny_model, wavs, expected, scheduler):
    async def main():
        async with LocalServer(tiny_model, Limits(max_streams_per_client=1), scheduler=scheduler) as srv:
            audio, rate = read_audio(wavs[0])
            ws, ready = await open_stream(srv.url, {"sample_rate": rate, "encoding": "f32le"}, token=None)
            assert ready["type"] == "ready"
            pieces = pieces_of(audio, rate, 100)
            for piece in pieces[: len(pieces) // 2]:
                await ws.send(piece)
            ws.transport.abort()  # gone without a close handshake, mid-stream
            for attempt in range(40):  # reconnect, as a client would, honouring `busy`
                try:
                    result, _ = await good_stream(srv.url, wavs[0], realtime=False)
                    return result, attempt, await freed(srv.server)
                except Exception as e:  # noqa: BLE001
                    assert getattr(e, "kind", None) == "busy", e
                    await asyncio.sleep(0.25)
        raise AssertionError("could not reconnect")

    result, attempts, open_after = run(main())
    assert [w["text"] for w in result.words] == expected[0] and result.done["reason"] == "eos"
    assert open_after == 0


def test_sigterm_flushes_every_open_stream(tiny_model_path, wavs, tmp_path):
    policy = "waitk:k=100"  # holds every word until the end: only the flush can deliver them
    srv = ServeProcess(tmp_path, tiny_model_path, "--policy", policy, "--idle-timeout-s", "60")
    expected = [offline_words(tiny_model_path, w, policy) for w in wavs]

    async def stream_until_signal(wav: Path, sent: asyncio.Event) -> tuple[list[dict], int]:
        audio, rate = read_audio(wav)
        ws, ready = await open_stream(srv.url, {"sample_rate": rate, "encoding": "f32le"}, token=None)
        await ws.send(audio.astype("<f4").tobytes())
        await ws.send(json.dumps({"type": "marker", "id": "all-sent"}))
        msgs = [ready]
        while not any(m.get("id") == "all-sent" for m in msgs):
            msgs.append(json.loads(await ws.recv()))
        sent.set()
        return msgs + await messages_until_close(ws), ws.close_code

    async def main():
        events = [asyncio.Event() for _ in wavs]
        tasks = [asyncio.create_task(stream_until_signal(w, e)) for w, e in zip(wavs, events)]
        idle = await connect(srv.url)  # connected, no config yet
        await asyncio.gather(*(e.wait() for e in events))
        srv.proc.send_signal(signal.SIGTERM)  # no eos from any client: the server must flush them all
        results = await asyncio.gather(*tasks)
        await messages_until_close(idle)
        return results, idle.close_code

    try:
        results, idle_code = run(main())
        assert srv.proc.wait(60) == 0
    finally:
        srv.terminate()
    for (msgs, code), words in zip(results, expected):
        assert [w["text"] for m in msgs if m["type"] == "stable" for w in m["words"]] == words
        assert msgs[-1]["type"] == "done" and msgs[-1]["reason"] == "shutdown" and code == Close.GOING_AWAY
    assert any(expected) and idle_code == Close.GOING_AWAY
    assert "Traceback" not in srv.output()


# ------------------------------------------------------------------------------------------- 4. access


def listening_addresses(port: int) -> set[str]:
    """Local addresses in LISTEN state on `port` (from /proc/net/tcp and tcp6)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with contextlib.suppress(OSError), open(table) as f:
            for line in f.readlines()[1:]:
                local, _, state = line.split()[1:4]
                addr, hexport = local.split(":")
                if int(hexport, 16) == port and state == "0A":
                    found.add(addr)
    return found


def test_limits_from_the_command_line_and_loopback_only(tiny_model_path, wavs, tmp_path):
    srv = ServeProcess(tmp_path, tiny_model_path, "--policy", POLICY, "--max-session-s", "1",
                       "--max-message-bytes", "8000", "--max-streams-per-client", "1")
    audio, rate = read_audio(wavs[0])

    async def session_too_long():
        ws, ready = await open_stream(srv.url, {"sample_rate": rate, "encoding": "f32le"}, token=None)
        assert ready["limits"]["max_session_s"] == 1 and ready["limits"]["max_message_bytes"] == 8000
        with contextlib.suppress(ConnectionClosed):
            for piece in pieces_of(audio, rate, 100):
                await ws.send(piece)
        return await messages_until_close(ws), ws.close_code

    async def frame_too_big_and_busy():
        ws, ready = await open_stream(srv.url, {"sample_rate": rate, "encoding": "f32le"}, token=None)
        second, refused = await open_stream(srv.url, token=None)  # one stream per client address
        await messages_until_close(second)
        await ws.send(b"\0" * 8004)
        return refused, second.close_code, await messages_until_close(ws), ws.close_code

    try:
        assert listening_addresses(srv.port) == {"0100007F"}  # 127.0.0.1 only
        msgs, code = run(session_too_long())
        errors = [m for m in msgs if m["type"] == "error"]
        assert [e["error"] for e in errors] == ["timeout"] and "session length" in errors[0]["message"]
        assert msgs[-1]["type"] == "done" and msgs[-1]["reason"] == "session_limit" and code == Close.TIMEOUT
        assert 1.0 <= msgs[-1]["stats"]["audio_s"] < 1.2  # the audio up to the limit went through the model
        refused, busy_code, msgs, code = run(frame_too_big_and_busy())
        assert refused["error"] == "busy" and busy_code == Close.BUSY
        assert msgs[-1]["error"] == "bad_audio" and "8000" in msgs[-1]["message"] and code == Close.BAD_AUDIO
    finally:
        assert srv.terminate() == 0, srv.output()


# ------------------------------------------------------------------------------------------- 5. long jobs


def _records(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "instances.log").read_text().splitlines()]


def _deterministic(scores: dict) -> dict:
    """Scores that do not depend on wall-clock compute (the _CA ones and RTF do)."""
    return {k: v for k, v in scores["scores"].items() if not k.endswith("_CA")}


def test_eval_killed_at_random_points_resumes_with_identical_results(tiny_corpus, tiny_model_path, tmp_path):
    from streamst.cli import main
    from test_eval_runner import build_tiny_mustc

    mustc = build_tiny_mustc(tmp_path / "mustc", tiny_corpus, talks=2, per_talk=5)
    args = ["eval", "--mustc", str(mustc), "--pair", "en-en", "--model", str(tiny_model_path), "--task", "asr",
            "--policy", POLICY, "--no-progress"]
    straight = tmp_path / "straight"
    assert main([*args, "--out", str(straight)]) == 0
    rng = random.Random()
    seed = rng.randrange(1 << 30)
    rng.seed(seed)
    out = tmp_path / "killed"
    kills = []
    for target in sorted(rng.sample(range(1, 10), 2)):  # two SIGKILLs after a random number of segments
        proc = subprocess.Popen([sys.executable, "-m", "streamst.cli", *args, "--out", str(out)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        log = out / "instances.log"
        while proc.poll() is None and (not log.exists() or log.read_text().count("\n") < target):
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait() == -signal.SIGKILL, "the run ended before it was killed"
        kills.append(log.read_text().count("\n") if log.exists() else 0)
        for name in ("run.json", "scores.json"):  # every file present is whole
            if (out / name).exists():
                json.loads((out / name).read_text())
    assert main([*args, "--out", str(out)]) == 0
    ours, theirs = _records(out), _records(straight)
    assert [(r["index"], r["prediction"], r["delays"]) for r in ours] == \
        [(r["index"], r["prediction"], r["delays"]) for r in theirs], (seed, kills)
    a, b = (json.loads((d / "scores.json").read_text()) for d in (out, straight))
    assert _deterministic(a) == _deterministic(b) and a["instances"] == b["instances"] == 10, (seed, kills)
    assert not list(out.glob("*.tmp")), "a temporary file was left behind"
