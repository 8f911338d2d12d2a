"""Hostile input: thousands of malformed messages into the protocol core, then a storm over the wire while a
well-behaved stream keeps its words."""
from __future__ import annotations

import asyncio
import json
import random
import time

import numpy as np
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from streamst.server.protocol import (
    ERROR_CLOSE, Audio, Close, CloseConnection, Finish, Limits, Marker, ModelInfo, Open, Reconfigure, Send,
    ServerProtocol, State,
)
from test_server import ServeProcess, offline_words, tiny_model, tiny_wavs

MODEL = ModelInfo(name="tiny", task="asr", source_lang="en")
LIMITS = Limits(max_message_bytes=4096, max_text_bytes=2048, max_session_s=5.0)
ERROR_TYPES = set(ERROR_CLOSE)

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
    max_leaves=10)
config_fields = st.fixed_dictionaries({}, optional={
    "sample_rate": json_values | st.integers(-10**12, 10**12), "encoding": json_values | st.sampled_from(
        ["pcm_s16le", "f32le", "mp3"]), "channels": json_values | st.integers(-5, 100), "task": json_values,
    "policy": json_values | st.sampled_from(["waitk:k=2", "waitk:k=-1", "la:n=2", "nope", "waitk:zz=1"]),
    "chunk_ms": json_values, "beam": json_values, "source_lang": json_values, "extra": json_values})
text_messages = st.one_of(
    st.text(max_size=200),
    config_fields.map(lambda d: json.dumps({"type": "config", **d})),
    st.sampled_from(["eos", "marker", "ping", "nonsense", "config"]).flatmap(
        lambda t: st.dictionaries(st.text(max_size=8), json_values, max_size=3).map(
            lambda d: json.dumps({**d, "type": t}))),
    json_values.map(json.dumps),
    st.sampled_from(['{"type":"config","sample_rate":NaN}', '{"type":"marker","id":Infinity}', "{" * 5000]),
)
binary_frames = st.one_of(
    st.binary(max_size=64),
    st.integers(0, 6000).map(lambda n: b"\x01" * n),
    st.sampled_from([np.array([np.nan, 1.0], "<f4").tobytes(), np.array([np.inf] * 4, "<f4").tobytes()]),
)
messages = st.lists(st.one_of(text_messages, binary_frames), max_size=40)


def check_actions(p: ServerProtocol, actions: list, closed_before: bool) -> None:
    for a in actions:
        assert isinstance(a, (Send, CloseConnection, Open, Audio, Marker, Reconfigure, Finish))
        if isinstance(a, Send):
            json.dumps(a.message, allow_nan=False)  # everything the server says is valid JSON
            if a.message["type"] == "error":
                assert a.message["error"] in ERROR_TYPES and isinstance(a.message["fatal"], bool)
        if isinstance(a, Audio):
            assert 0 < len(a.pcm) and len(a.pcm) % p.config.frame_bytes == 0
    if closed_before:
        assert actions == []
    closes = [a for a in actions if isinstance(a, CloseConnection)]
    assert len(closes) <= 1
    if closes:
        assert actions[-1] is closes[0] and p.state is State.CLOSED
        errors = [a.message for a in actions if isinstance(a, Send) and a.message["type"] == "error"]
        done = [a.message for a in actions if isinstance(a, Send) and a.message["type"] == "done"]
        if done:  # a flushed stream: `done`, then the close its reason calls for
            assert closes[0].code in (Close.NORMAL, Close.GOING_AWAY, Close.TIMEOUT)
        else:
            assert errors and closes[0].code == ERROR_CLOSE[errors[-1]["error"]]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages)
def test_every_malformed_sequence_gets_a_typed_answer_or_is_ignored(seq):
    p = ServerProtocol(model=MODEL, session_id="f", limits=LIMITS)
    for m in seq:
        closed = p.state is State.CLOSED
        if isinstance(m, str):
            actions = p.receive_text(m)
        else:
            actions = p.receive_bytes(m)
        check_actions(p, actions, closed)
        if any(isinstance(a, Open) for a in actions):
            p.on_opened()
        for a in actions:  # feed work results back as the server would
            if isinstance(a, Finish):
                check_actions(p, p.on_finished([], {"audio_s": 0.0}, a.reason), False)


def test_a_flood_of_tiny_frames_is_coalesced():
    p = ServerProtocol(model=MODEL, session_id="f")
    p.receive_text('{"type":"config"}')
    p.on_opened()
    audio = [a for _ in range(10_000) for a in p.receive_bytes(b"\0\0")]
    assert len(audio) == 10_000 * 2 // Limits().coalesce_bytes  # 31 pieces, not 10,000 model calls


def _garbage(rng: random.Random) -> list:
    """A seeded generator of hostile connections (what each sends after connecting)."""
    kinds = [
        lambda: ["not json"],
        lambda: [b"\0" * 100],  # binary before config
        lambda: [json.dumps({"type": "config", "sample_rate": rng.choice([0, -1, 10**9, "x", 1.5])})],
        lambda: [json.dumps({"type": "config", "channels": rng.choice([0, 99])})],
        lambda: ['{"type":"config"}', b"\0" * 641],  # odd bytes
        lambda: ['{"type":"config","encoding":"f32le"}', np.array([np.nan], "<f4").tobytes()],
        lambda: ['{"type":"config"}', b"\0" * (LIMITS.max_message_bytes * 100)],  # over the size limit
        lambda: ['{"type":"config"}'] + ["{bad"] * 40,  # soft errors until capped
        lambda: ['{"type":"config"}'] + [b"\0\0"] * 2000 + ['{"type":"eos"}'],  # flood of tiny frames
    ]
    return rng.choice(kinds)()


def test_hostile_clients_do_not_change_a_good_stream(request, tmp_path):
    model = tiny_model(request, tmp_path)
    wav = tiny_wavs(request, tmp_path, n=1)[0]
    policy = "waitk:k=2"
    expected = offline_words(model, wav, policy)
    srv = ServeProcess(tmp_path, model, "--policy", policy, "--max-streams", "64", "--max-streams-per-client", "64",
                       "--catch-up-lag-s", "inf")  # no catch-up: the good stream's words equal a lone Session's
    rng = random.Random(1234)

    async def hostile(i: int) -> tuple[str, int | None]:
        first = None
        try:
            async with connect(srv.url, max_size=None) as ws:
                for m in _garbage(rng):
                    await ws.send(m)
                async for raw in ws:
                    msg = json.loads(raw)
                    if msg["type"] == "error":
                        first = first or msg["error"]
                code = ws.close_code
        except ConnectionClosed as e:
            code = e.rcvd.code if e.rcvd else None
        return first, code

    async def good_stream():
        """The file at real-time pace with a marker after every 100 ms piece: (result, marker round trips, ms)."""
        from streamst.server.client import paced, stream_audio
        from streamst.server.replay import pieces_of, read_audio

        audio, rate = read_audio(wav)
        sent: dict = {}
        result = await stream_audio(
            srv.url, paced(pieces_of(audio, rate, 100), lambda p: len(p) / 4 / rate),
            {"sample_rate": rate, "encoding": "f32le", "policy": policy},
            marker_every=1, marker_sent=lambda i: sent.__setitem__(i, time.perf_counter()))
        return result, [(result.markers[i] - sent[i]) * 1000 for i in sent if i in result.markers]

    async def main():
        quiet = await good_stream()  # the same stream alone, for the record
        good = asyncio.create_task(good_stream())
        results = await asyncio.gather(*(hostile(i) for i in range(120)))
        return quiet, await good, results

    try:
        (_, quiet_delays), (good, delays), results = asyncio.run(asyncio.wait_for(main(), 240))
    finally:
        assert srv.terminate() == 0, srv.output()
    assert [w["text"] for w in good.words] == expected and good.done["reason"] == "eos"
    # every chunk came back, and in time: the documented bound is one scheduling round of the open streams
    # (a few tiny-model steps, ~10 ms each); 1 s is loose for a shared 2-core machine
    assert len(delays) == len(quiet_delays) and float(np.percentile(delays, 95)) < 1000, (delays, quiet_delays)
    for error, code in results:
        # every hostile connection got a typed error and its close code, or finished normally (tiny frames + eos)
        assert (error in ERROR_TYPES and code in (*map(int, ERROR_CLOSE.values()), 1009)) or code == Close.NORMAL, \
            (error, code)
    assert "Traceback" not in srv.output()
