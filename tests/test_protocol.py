"""Protocol v1 state machine (sans-I/O): every message, every error, every close code, without sockets."""
from __future__ import annotations

import json

import numpy as np
import pytest

from streamst.captions import group_cues, to_srt, to_vtt, write_captions
from streamst.events import Partial, Word
from streamst.server.protocol import (
    Audio, Close, CloseConnection, Finish, Limits, Marker, ModelInfo, Open, Reconfigure, Send, ServerProtocol,
    State,
)

MODEL = ModelInfo(name="tiny", task="asr", source_lang="en", default_policy="waitk:k=2")


def make(**kw) -> ServerProtocol:
    return ServerProtocol(model=MODEL, session_id="s1", **kw)


def sends(actions) -> list[dict]:
    return [a.message for a in actions if isinstance(a, Send)]


def closes(actions) -> list[int]:
    return [a.code for a in actions if isinstance(a, CloseConnection)]


def config(p: ServerProtocol, **fields) -> list:
    return p.receive_text(json.dumps({"type": "config", **fields}))


def opened(**fields) -> ServerProtocol:
    p = make()
    acts = config(p, **fields)
    assert isinstance(acts[0], Open)
    assert sends(p.on_opened())[0]["type"] == "ready"
    return p


def test_config_then_ready_describes_the_stream():
    p = make()
    acts = config(p, sample_rate=48000, encoding="f32le", channels=2, task="asr", source_lang="en",
                  policy="waitk:k=3", future_field=1)  # unknown fields are ignored
    (op,) = acts
    assert op.config.sample_rate == 48000 and op.config.channels == 2 and op.config.policy == "waitk:k=3"
    ready = sends(p.on_opened())[0]
    assert ready["protocol"] == 1 and ready["session_id"] == "s1" and ready["model"] == "tiny"
    assert ready["policy"] == "waitk:k=3" and ready["task"] == "asr" and ready["encoding"] == "f32le"


def test_defaults_come_from_the_model():
    p = make()
    (op,) = config(p)
    assert op.config.policy == "waitk:k=2" and op.config.sample_rate == 16000 and op.config.encoding == "pcm_s16le"


@pytest.mark.parametrize("fields, needle", [
    ({"sample_rate": 1}, "sample_rate"),
    ({"sample_rate": 10**9}, "sample_rate"),
    ({"sample_rate": "16000"}, "sample_rate"),
    ({"sample_rate": 16000.5}, "sample_rate"),
    ({"sample_rate": True}, "sample_rate"),
    ({"channels": 0}, "channels"),
    ({"channels": 1000}, "channels"),
    ({"encoding": "mp3"}, "encoding"),
    ({"task": "st"}, "asr"),
    ({"task": "dance"}, "task"),
    ({"source_lang": "de"}, "source_lang"),
    ({"source_lang": "../../etc"}, "language"),
    ({"policy": "nope:k=1"}, "unknown policy"),
    ({"policy": "waitk:z=1"}, "valid keys"),
    ({"policy": "x" * 1000}, "256"),
    ({"chunk_ms": 1}, "chunk_ms"),
    ({"beam": 99}, "beam"),
])
def test_bad_config_is_a_typed_fatal_error(fields, needle):
    p = make()
    acts = config(p, **fields)
    (err,) = sends(acts)
    assert err["type"] == "error" and err["error"] == "bad_config" and err["fatal"] is True
    assert needle in err["message"]
    assert closes(acts) == [Close.BAD_CONFIG]
    assert p.state is State.CLOSED
    assert p.receive_bytes(b"\0\0") == [] and p.receive_text('{"type":"eos"}') == []


@pytest.mark.parametrize("text", ["not json", "[1,2]", '{"no_type": 1}', '{"type": 5}', '{"type":"config","x":NaN}',
                                  '{"type": "eos"}', '{"type": "marker", "id": 1}', "{" * 100000])
def test_anything_but_config_first_is_fatal(text):
    p = make()
    acts = p.receive_text(text)
    (err,) = sends(acts)
    assert err["error"] == "bad_message" and err["fatal"]
    assert closes(acts) == [Close.BAD_MESSAGE]


def test_binary_before_config_is_fatal():
    acts = make().receive_bytes(b"\0" * 640)
    assert sends(acts)[0]["error"] == "bad_message" and closes(acts) == [Close.BAD_MESSAGE]


def test_text_over_the_limit_is_rejected():
    p = make(limits=Limits(max_text_bytes=100))
    acts = config(p, policy="waitk:k=2", pad="y" * 200)
    assert sends(acts)[0]["error"] == "bad_message" and "100 bytes" in sends(acts)[0]["message"]


def test_audio_is_coalesced_and_flushed_at_marker_and_eos():
    p = opened()
    assert p.receive_bytes(b"\1\0" * 100) == []  # 200 bytes < 640: held back
    acts = p.receive_bytes(b"\2\0" * 300)  # 800 bytes now: handed over as one piece
    assert acts == [Audio(b"\1\0" * 100 + b"\2\0" * 300)]
    assert p.receive_bytes(b"\3\0" * 10) == []
    acts = p.receive_text('{"type": "marker", "id": "m1"}')
    assert acts == [Audio(b"\3\0" * 10), Marker("m1")]
    # 410 samples at 16 kHz received; lag_ms is what the model has not taken yet
    assert sends(p.on_marker("m1", processed_ms=0.0)) == [{"type": "marker", "id": "m1", "lag_ms": 25.6}]
    assert sends(p.on_marker("m1", processed_ms=20.0)) == [{"type": "marker", "id": "m1", "lag_ms": 5.6}]
    p.receive_bytes(b"\4\0" * 5)
    acts = p.receive_text('{"type": "eos"}')
    assert acts == [Audio(b"\4\0" * 5), Finish("eos")]
    assert p.state is State.FINISHING
    assert p.receive_bytes(b"\0\0" * 1000) == []  # after eos: ignored, as documented
    assert p.receive_text('{"type": "marker", "id": 2}') == []


def test_empty_frames_are_ignored():
    p = opened()
    assert p.receive_bytes(b"") == []
    assert p.receive_text('{"type":"eos"}') == [Finish("eos")]


@pytest.mark.parametrize("fields, frame, needle", [
    ({}, b"\0" * 641, "whole number"),
    ({"channels": 2}, b"\0" * 642, "whole number"),
    ({"encoding": "f32le"}, np.array([0.0, np.nan], "<f4").tobytes(), "NaN"),
    ({"encoding": "f32le"}, np.array([np.inf, 0.0], "<f4").tobytes(), "NaN or infinite"),
    ({"encoding": "f32le"}, b"\0" * 6, "whole number"),
    ({}, b"\0" * (Limits().max_message_bytes + 2), "over the limit"),
])
def test_bad_audio_is_fatal(fields, frame, needle):
    p = opened(**fields)
    acts = p.receive_bytes(frame)
    (err,) = sends(acts)
    assert err["error"] == "bad_audio" and needle in err["message"] and err["fatal"]
    assert closes(acts) == [Close.BAD_AUDIO]


def test_events_become_stable_and_partial_messages():
    p = opened()
    words = [Word("hello", 640.0, 12.0, 100.0, 400.0), Word("world", 640.0, 12.5)]
    msgs = sends(p.on_events(words + [Partial("and mo", 640.0), Partial("and more", 640.0)]))
    assert msgs[0] == {"type": "stable", "text": "hello world", "words": [
        {"text": "hello", "start_ms": 100.0, "end_ms": 400.0, "emitted_ms": 640.0, "compute_ms": 12.0},
        {"text": "world", "start_ms": None, "end_ms": None, "emitted_ms": 640.0, "compute_ms": 12.5}], "lag_ms": 0.0}
    assert msgs[1] == {"type": "partial", "text": "and more", "source_ms": 640.0, "lag_ms": 0.0}  # only the latest
    assert p.on_events([]) == []


def test_stable_is_always_followed_by_the_partial_that_replaces_the_old_one():
    """The session sends a partial only when its text changes; after new words the client must still get it, or
    it would keep showing the words just committed a second time (the stale-partial bug of `mic` and the page)."""
    p = opened()
    assert [m["type"] for m in sends(p.on_events([Partial("more", 320.0)]))] == ["partial"]
    msgs = sends(p.on_events([Word("more", 640.0, 1.0)]))  # committed; the session's tail text stayed "more"
    assert [m["type"] for m in msgs] == ["stable", "partial"] and msgs[1]["text"] == "more"
    p.on_events([Partial("", 960.0)])
    assert [m["type"] for m in sends(p.on_events([Word("x", 1280.0, 1.0)]))] == ["stable"]  # no tail: nothing to resend


def test_finish_sends_last_words_done_and_closes_normally():
    p = opened()
    p.on_events([Word("a", 1.0, 1.0)])
    p.receive_text('{"type":"eos"}')
    acts = p.on_finished([Word("b", 2.0, 2.0)], {"audio_s": 1.5, "compute_s": 0.3, "rtf": 0.2}, "eos")
    msgs = sends(acts)
    assert msgs[0]["type"] == "stable" and msgs[0]["text"] == "b"
    assert msgs[1] == {"type": "done", "reason": "eos", "words": 2,
                       "stats": {"audio_s": 1.5, "compute_s": 0.3, "rtf": 0.2}, "lag_ms": 0.0}
    assert closes(acts) == [Close.NORMAL] and p.state is State.CLOSED


def test_mid_stream_config_changes_policy_only():
    p = opened()
    p.receive_bytes(b"\0\0" * 10)
    acts = config(p, policy="waitk:k=5", sample_rate=16000)
    assert acts[0] == Audio(b"\0\0" * 10) and isinstance(acts[1], Reconfigure)
    assert acts[1].config.policy == "waitk:k=5" and p.config.policy == "waitk:k=5"
    assert sends(p.on_reconfigured()) == [{"type": "configured", "policy": "waitk:k=5", "beam": 1, "lag_ms": 0.6}]
    for fields in ({"sample_rate": 8000}, {"policy": "bogus"}, {"encoding": "f32le"}):
        (err,) = sends(config(p, **fields))
        assert err["error"] == "bad_config" and err["fatal"] is False
    assert p.config.policy == "waitk:k=5" and p.state is State.STREAMING


def test_soft_errors_are_reported_then_capped():
    p = make(limits=Limits(max_soft_errors=3))
    config(p)
    for text in ["junk", '{"type":"hello"}', '{"type":"marker"}']:
        (err,) = sends(p.receive_text(text))
        assert err["error"] == "bad_message" and err["fatal"] is False
    acts = p.receive_text("junk")
    assert sends(acts)[0]["fatal"] is True and closes(acts) == [Close.BAD_MESSAGE]


def test_ping_message_is_answered():
    p = opened()
    assert sends(p.receive_text('{"type":"ping","id":7}')) == [{"type": "pong", "id": 7, "lag_ms": 0.0}]


def lagging(p: ServerProtocol, seconds: float) -> list:
    """`seconds` of int16 16 kHz audio received, none of it through the model yet."""
    return p.receive_bytes(b"\0\0" * int(16000 * seconds))


def test_lag_past_max_lag_is_told_once_per_crossing():
    p = make(limits=Limits(max_lag_s=1.0, max_backlog_s=5.0))
    config(p)
    assert sends(lagging(p, 0.5)) == []
    (warn,) = sends(lagging(p, 0.75))
    assert warn["error"] == "lagging" and warn["fatal"] is False and warn["lag_ms"] == 1250.0
    assert sends(lagging(p, 0.5)) == []  # still behind: told once
    assert sends(p.on_events([], processed_ms=1600.0)) == []  # 150 ms behind: re-armed
    (again,) = sends(p.on_events([], processed_ms=0.0))
    assert again["error"] == "lagging" and p.soft_errors == 0  # a warning, not the client's fault
    assert p.state is State.STREAMING


def test_backlog_past_the_bound_ends_the_stream_with_overloaded_after_a_flush():
    p = make(limits=Limits(max_lag_s=1.0, max_backlog_s=2.0))
    config(p)
    acts = lagging(p, 1.9)
    assert [m["error"] for m in sends(acts)] == ["lagging"] and isinstance(acts[-1], Audio)
    acts = lagging(p, 0.2)
    (err,) = sends(acts)
    assert err["error"] == "overloaded" and err["fatal"] and "2 s" in err["message"]
    assert isinstance(acts[-1], Finish) and acts[-1].reason == "overloaded"  # every received word is still flushed
    assert p.receive_bytes(b"\0\0" * 100) == []  # finishing: later audio is ignored
    acts = p.on_finished([Word("a", 2000.0, 1.0)], {"audio_s": 2.1}, "overloaded", processed_ms=2100.0)
    assert [m["type"] for m in sends(acts)] == ["stable", "done"] and sends(acts)[1]["reason"] == "overloaded"
    assert sends(acts)[1]["lag_ms"] == 0.0 and closes(acts) == [Close.OVERLOADED]


def test_a_flood_of_markers_is_a_typed_overload():
    p = opened()
    acts = p.on_overflow("markers")
    assert sends(acts)[0]["error"] == "overloaded" and closes(acts) == [Close.OVERLOADED]


def test_token_is_checked_before_anything():
    p = make(token="s3cret")
    for bad in (None, "", "wrong"):
        q = make(token="s3cret")
        acts = q.on_connect(bad)
        assert sends(acts)[0]["error"] == "unauthorized" and closes(acts) == [Close.UNAUTHORIZED]
        assert q.receive_text('{"type":"config"}') == []  # closed: no Open, no model work
    assert p.on_connect("s3cret") == []
    assert make().on_connect(None) == []


def test_busy_carries_a_retry_hint():
    p = make()
    config(p)
    acts = p.on_open_refused("busy", "8 streams open", retry_after_s=5.0)
    assert sends(acts)[0] == {"type": "error", "error": "busy", "message": "8 streams open", "fatal": True,
                              "retry_after_s": 5.0}
    assert closes(acts) == [Close.BUSY]


def test_idle_timeout_flushes_an_open_stream():
    p = make()
    acts = p.on_idle_timeout()
    assert sends(acts)[0]["error"] == "timeout" and closes(acts) == [Close.TIMEOUT]
    p = opened()
    p.receive_bytes(b"\0\0" * 3)
    acts = p.on_idle_timeout()
    assert sends(acts)[0]["error"] == "timeout" and acts[1:] == [Audio(b"\0\0" * 3), Finish("timeout")]
    assert closes(p.on_finished([], {}, "timeout")) == [Close.TIMEOUT]


def test_session_length_limit_flushes_and_closes():
    p = make(limits=Limits(max_session_s=0.1))
    config(p)
    p.on_opened()
    assert p.receive_bytes(b"\0\0" * 1000) == [Audio(b"\0\0" * 1000)]
    acts = p.receive_bytes(b"\0\0" * 1000)
    assert sends(acts)[0]["error"] == "timeout" and "session length" in sends(acts)[0]["message"]
    assert isinstance(acts[-1], Finish) and acts[-1].reason == "session_limit"


def test_shutdown_flushes_open_streams_and_closes_idle_ones():
    p = opened()
    assert p.on_shutdown() == [Finish("shutdown")]
    assert closes(p.on_finished([], {}, "shutdown")) == [Close.GOING_AWAY]
    q = make()
    assert closes(q.on_shutdown()) == [Close.GOING_AWAY]


def test_work_errors_and_slow_consumers_end_the_stream():
    p = opened()
    acts = p.on_work_error("internal", "boom")
    assert sends(acts)[0]["error"] == "internal" and closes(acts) == [Close.INTERNAL]
    p = opened()
    assert closes(p.on_slow_consumer()) == [Close.SLOW_CONSUMER]


# ---- captions ----

WORDS = [Word("hello", 800, 5, 100, 500), Word("there", 800, 5, 520, 900), Word("general", 1600, 9, None, None),
         Word("kenobi", 3200, 12, 2900, 3400)]


def test_srt_and_vtt_text():
    srt = to_srt(WORDS, max_chars=12)
    assert srt.splitlines()[:3] == ["1", "00:00:00,100 --> 00:00:00,900", "hello there"]
    assert "00:00:01,600 --> 00:00:02,100\ngeneral" in srt  # no span: emission time, min 500 ms
    vtt = to_vtt(WORDS, max_chars=100)
    assert vtt.startswith("WEBVTT\n\n00:00:00.100 --> 00:00:03.400\nhello there general kenobi\n")


def test_cues_never_overlap_and_respect_limits():
    words = [{"text": f"w{i}", "emitted_ms": i * 300.0, "start_ms": i * 300.0, "end_ms": i * 300.0 + 250}
             for i in range(60)]
    cues = group_cues(words, max_chars=20, max_ms=2000)
    assert " ".join(c.text for c in cues) == " ".join(w["text"] for w in words)
    for a, b in zip(cues, cues[1:]):
        assert a.start_ms <= a.end_ms <= b.start_ms
    assert all(len(c.text) <= 20 for c in cues)


def test_write_captions_by_suffix(tmp_path):
    assert write_captions(tmp_path / "a.srt", WORDS).read_text().startswith("1\n")
    assert write_captions(tmp_path / "a.vtt", WORDS).read_text().startswith("WEBVTT")
    with pytest.raises(ValueError, match="srt or .vtt"):
        write_captions(tmp_path / "a.txt", WORDS)
