"""Protocol v1 as a pure state machine (sans-I/O): client messages in, outgoing messages and actions out.

`ServerProtocol` never touches a socket, a clock or the model. The I/O layer (`app.py`) feeds it what arrives
(`receive_text`, `receive_bytes`), what the stream's work produced (`on_events`, `on_marker`, `on_finished`)
and what happened around it (`on_idle_timeout`, `on_shutdown`), and carries out the returned actions in order:
`Send` and `Close` at once; `Open`, `Audio`, `Marker`, `Reconfigure` and `Finish` as one ordered work queue.
The wire format is documented in docs/protocol.md.
"""
from __future__ import annotations

import enum
import hmac
import json
from dataclasses import dataclass, field, replace
from typing import Any, Callable

import numpy as np

PROTOCOL_VERSION = 1
ENCODINGS = {"pcm_s16le": 2, "f32le": 4}  # encoding -> bytes per sample
TASKS = ("asr", "st")


class Close(enum.IntEnum):
    """Close codes (docs/protocol.md has the table)."""

    NORMAL = 1000  # after `done`
    GOING_AWAY = 1001  # server shutting down, after every stream was flushed
    BAD_MESSAGE = 4000
    BAD_CONFIG = 4001
    BAD_AUDIO = 4002
    UNAUTHORIZED = 4003
    BUSY = 4004
    TIMEOUT = 4005
    SLOW_CONSUMER = 4006
    OVERLOADED = 4007
    INTERNAL = 4011


ERROR_CLOSE = {
    "bad_message": Close.BAD_MESSAGE,
    "bad_config": Close.BAD_CONFIG,
    "bad_audio": Close.BAD_AUDIO,
    "unauthorized": Close.UNAUTHORIZED,
    "busy": Close.BUSY,
    "timeout": Close.TIMEOUT,
    "slow_consumer": Close.SLOW_CONSUMER,
    "overloaded": Close.OVERLOADED,
    "internal": Close.INTERNAL,
}


# Captions are endless streams: StreamAtt keeps both the forced text history and the audio memory bounded, so a
# stream's per-chunk cost stays flat; wait-k and AlignAtt re-read the whole committed text every chunk, and the
# decoder's position table (512 tokens) ends after a few minutes of speech.
DEFAULT_POLICY = "streamatt:frames=4,history_words=20"


@dataclass(frozen=True)
class Limits:
    """Every limit the server enforces; all configurable, all listed in docs/protocol.md."""

    max_message_bytes: int = 1 << 18  # one binary audio frame (256 KiB, 8 s of 16 kHz int16 mono)
    max_text_bytes: int = 1 << 14  # one JSON text message
    min_sample_rate: int = 8000
    max_sample_rate: int = 48000
    max_channels: int = 8
    max_session_s: float = 4 * 3600.0  # audio seconds per stream
    idle_timeout_s: float = 30.0  # no message at all for this long closes the stream (after a flush)
    config_timeout_s: float = 10.0  # the first `config` must arrive within this
    max_soft_errors: int = 32  # non-fatal errors per connection before it is closed
    coalesce_bytes: int = 640  # audio is handed to the session in pieces of at least 20 ms (int16 mono 16 kHz)
    max_streams: int | None = None  # server-wide open streams; None: as many as the measured capacity serves
    max_streams_per_client: int = 4  # open streams per client IP address
    work_queue: int = 256  # queued markers / configs per stream (audio is bounded by max_backlog_s)
    send_queue: int = 256  # outgoing messages per stream before a non-reading client is dropped
    send_timeout_s: float = 10.0  # one send blocked this long drops the client
    socket_send_bytes: int = 1 << 16  # the kernel's send buffer per connection (Linux doubles it): unread data
    # stays bounded there too, so a `slow_consumer` error is seconds, not megabytes, behind what a client read
    busy_retry_s: float = 5.0  # retry hint in `busy`
    catchup_lag_s: float = 1.5  # a stream this far behind its received audio takes larger chunks (inf: never)
    catchup_max_s: float = 8.0  # the largest chunk a lagging stream takes
    max_lag_s: float = 10.0  # a stream this far behind is told so (non-fatal `lagging`, once per crossing)
    max_backlog_s: float = 60.0  # received audio not yet through the model: past this, `overloaded` (flushed)

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


@dataclass(frozen=True)
class ModelInfo:
    """What the protocol may say about, and check against, the served model."""

    name: str
    task: str | None = None  # "asr" / "st"; None accepts any request
    source_lang: str | None = None
    target_lang: str | None = None
    default_policy: str = DEFAULT_POLICY
    default_chunk_ms: int = 320


@dataclass(frozen=True)
class StreamConfig:
    """A validated client configuration."""

    sample_rate: int
    encoding: str
    channels: int
    task: str | None
    source_lang: str | None
    target_lang: str | None
    policy: str
    chunk_ms: int
    beam: int

    @property
    def frame_bytes(self) -> int:
        return ENCODINGS[self.encoding] * self.channels


# ---- actions the I/O layer carries out --------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    message: dict


@dataclass(frozen=True)
class CloseConnection:
    code: int
    reason: str


@dataclass(frozen=True)
class Open:
    config: StreamConfig


@dataclass(frozen=True)
class Audio:
    pcm: bytes


@dataclass(frozen=True)
class Marker:
    id: Any


@dataclass(frozen=True)
class Reconfigure:
    config: StreamConfig


@dataclass(frozen=True)
class Finish:
    reason: str  # "eos", "timeout", "shutdown", "session_limit"


Action = Send | CloseConnection | Open | Audio | Marker | Reconfigure | Finish
WORK = (Open, Audio, Marker, Reconfigure, Finish)  # actions that go through the stream's ordered work queue


class State(enum.Enum):
    AWAIT_CONFIG = "await_config"
    STREAMING = "streaming"
    FINISHING = "finishing"  # Finish queued; waiting for `on_finished`
    CLOSED = "closed"


class ProtocolError(Exception):
    def __init__(self, kind: str, message: str, fatal: bool = True):
        super().__init__(message)
        self.kind, self.message, self.fatal = kind, message, fatal


def error_message(kind: str, message: str, fatal: bool, retry_after_s: float | None = None) -> dict:
    msg = {"type": "error", "error": kind, "message": message, "fatal": fatal}
    if retry_after_s is not None:
        msg["retry_after_s"] = retry_after_s
    return msg


def _default_policy_check(spec: str) -> str:
    from streamst.policies import parse_policy

    parse_policy(spec)
    return spec


@dataclass
class ServerProtocol:
    """One connection's protocol state. Methods return the actions to carry out, in order."""

    model: ModelInfo
    session_id: str
    limits: Limits = field(default_factory=Limits)
    token: str | None = None  # required token; None = open server
    check_policy: Callable[[str], str] = _default_policy_check  # raises ValueError on a bad spec
    state: State = State.AWAIT_CONFIG
    config: StreamConfig | None = None
    soft_errors: int = 0
    audio_bytes: int = 0
    words_sent: int = 0
    processed_ms: float = 0.0  # source audio through the model, as the I/O layer last reported it
    lag_warned: bool = False
    _pending: bytearray = field(default_factory=bytearray)
    _partial: tuple[str, float] = ("", 0.0)  # the last partial caption sent (text, source_ms)

    @property
    def received_ms(self) -> float:
        """Audio received on this stream, in ms."""
        c = self.config
        return 0.0 if c is None else self.audio_bytes * 1000.0 / (c.frame_bytes * c.sample_rate)

    @property
    def lag_ms(self) -> float:
        """How far the model is behind the received audio (ms): carried by every event the stream sends."""
        return round(max(0.0, self.received_ms - self.processed_ms), 1)

    # ---- connection lifecycle ----

    def on_connect(self, token: str | None) -> list[Action]:
        """Called once, before reading anything: checks the token (before any model work)."""
        if self.token is not None and (token is None or not hmac.compare_digest(token.encode(), self.token.encode())):
            return self._fatal("unauthorized", "missing or wrong token")
        return []

    def on_open_refused(self, kind: str, message: str, retry_after_s: float | None = None) -> list[Action]:
        """The I/O layer could not open the stream (`busy`, `internal`)."""
        return self._fatal(kind, message, retry_after_s=retry_after_s)

    def on_opened(self) -> list[Action]:
        """The stream exists: tell the client."""
        c = self.config
        assert c is not None
        return [Send({
            "type": "ready", "protocol": PROTOCOL_VERSION, "session_id": self.session_id, "model": self.model.name,
            "task": c.task or self.model.task, "source_lang": c.source_lang, "target_lang": c.target_lang,
            "policy": c.policy, "sample_rate": c.sample_rate, "encoding": c.encoding, "channels": c.channels,
            "chunk_ms": c.chunk_ms, "beam": c.beam,
            "limits": {"max_message_bytes": self.limits.max_message_bytes, "max_session_s": self.limits.max_session_s,
                       "idle_timeout_s": self.limits.idle_timeout_s},
        })]

    # ---- input from the client ----

    def receive_text(self, text: str | bytes) -> list[Action]:
        if self.state is State.CLOSED:
            return []
        try:
            if len(text) > self.limits.max_text_bytes:
                raise ProtocolError("bad_message", f"text message over {self.limits.max_text_bytes} bytes")
            msg = _parse_json(text)
            kind = msg.get("type")
            if not isinstance(kind, str):
                raise ProtocolError("bad_message", "a message must be a JSON object with a string 'type'", fatal=False)
            if kind == "config":
                return self._config(msg)
            if self.state is State.AWAIT_CONFIG:
                raise ProtocolError("bad_message", f"expected 'config' first, got {kind!r}")
            if self.state is State.FINISHING:
                return []  # documented: messages after eos are ignored
            if kind == "marker":
                return self._marker(msg)
            if kind == "eos":
                return self._finish("eos")
            if kind == "ping":
                return [Send({"type": "pong", "id": msg.get("id"), "lag_ms": self.lag_ms})]
            raise ProtocolError("bad_message", f"unknown message type {kind!r}", fatal=False)
        except ProtocolError as e:
            return self._error(e)

    def receive_bytes(self, data: bytes) -> list[Action]:
        if self.state is State.CLOSED:
            return []
        try:
            if self.state is State.AWAIT_CONFIG:
                raise ProtocolError("bad_message", "binary audio before 'config'")
            if self.state is State.FINISHING:
                return []
            c = self.config
            assert c is not None
            if len(data) > self.limits.max_message_bytes:
                raise ProtocolError("bad_audio", f"audio frame of {len(data)} bytes is over the limit of "
                                                 f"{self.limits.max_message_bytes}")
            if len(data) % c.frame_bytes:
                raise ProtocolError("bad_audio", f"audio frame of {len(data)} bytes is not a whole number of "
                                                 f"{c.encoding} x {c.channels} channel samples ({c.frame_bytes} bytes)")
            if c.encoding == "f32le" and data and not np.isfinite(np.frombuffer(data, dtype="<f4")).all():
                raise ProtocolError("bad_audio", "audio contains NaN or infinite samples")
            self._pending += data
            self.audio_bytes += len(data)
            if self.audio_bytes / (c.frame_bytes * c.sample_rate) > self.limits.max_session_s:
                return self._fatal_flush("timeout", f"session length limit of {self.limits.max_session_s:g} s reached",
                                         "session_limit")
            if self.lag_ms > self.limits.max_backlog_s * 1000.0:
                return self._fatal_flush("overloaded", f"the server is {self.lag_ms / 1000:.1f} s behind this "
                                         f"stream's audio (limit {self.limits.max_backlog_s:g} s): send no faster "
                                         "than real time; the audio received is flushed", "overloaded")
            return self._progress(None) + self._drain(force=False)
        except ProtocolError as e:
            return self._error(e)

    # ---- input from the stream's work ----

    def on_events(self, events: list, processed_ms: float | None = None) -> list[Action]:
        """Events from `Session.push` / `finish` -> `stable` and `partial` messages (each with `lag_ms`);
        `processed_ms` is the stream's source audio through the model now. A `stable` is always followed by the
        `partial` that replaces the one its words came from."""
        if self.state is State.CLOSED:
            return []
        out = self._progress(processed_ms)
        words = [e for e in events if hasattr(e, "emitted_ms")]
        if words:
            self.words_sent += len(words)
            out.append(Send({"type": "stable", "words": [_word_dict(w) for w in words],
                             "text": " ".join(w.text for w in words), "lag_ms": self.lag_ms}))
        partials = [e for e in events if hasattr(e, "source_ms") and not hasattr(e, "emitted_ms")]
        if partials:
            p = partials[-1]
            self._partial = (p.text, p.source_ms)
        if partials or (words and self._partial[0]):  # the tail after the new words, even if its text is unchanged
            text, source_ms = self._partial
            out.append(Send({"type": "partial", "text": text, "source_ms": source_ms, "lag_ms": self.lag_ms}))
        return out

    def on_marker(self, marker_id: Any, processed_ms: float | None = None) -> list[Action]:
        if self.state is State.CLOSED:
            return []
        return self._progress(processed_ms) + [Send({"type": "marker", "id": marker_id, "lag_ms": self.lag_ms})]

    def on_reconfigured(self) -> list[Action]:
        c = self.config
        assert c is not None
        return [Send({"type": "configured", "policy": c.policy, "beam": c.beam, "lag_ms": self.lag_ms})]

    def on_finished(self, events: list, stats: dict, reason: str, processed_ms: float | None = None) -> list[Action]:
        """`Session.finish()` returned: the last words, `done`, then the close that the reason calls for."""
        if self.state is State.CLOSED:
            return []
        if processed_ms is not None:  # the flush took everything received: nothing is behind any more
            self.processed_ms = max(processed_ms, self.received_ms)
        out = self.on_events(events)
        out.append(Send({"type": "done", "reason": reason, "words": self.words_sent,
                         "stats": {k: float(v) for k, v in stats.items()}, "lag_ms": self.lag_ms}))
        code = {"eos": Close.NORMAL, "shutdown": Close.GOING_AWAY, "overloaded": Close.OVERLOADED}.get(reason, Close.TIMEOUT)
        out.append(CloseConnection(int(code), reason))
        self.state = State.CLOSED
        return out

    def on_work_error(self, kind: str, message: str) -> list[Action]:
        """A step of this stream failed (`bad_audio` from the session, or `internal`); the stream ends."""
        return self._fatal(kind, message)

    # ---- input from the clock and the server ----

    def on_idle_timeout(self) -> list[Action]:
        if self.state is State.AWAIT_CONFIG:
            return self._fatal("timeout", f"no 'config' within {self.limits.config_timeout_s:g} s")
        if self.state is State.STREAMING:
            return self._fatal_flush("timeout", f"no message for {self.limits.idle_timeout_s:g} s", "timeout")
        return []

    def on_shutdown(self) -> list[Action]:
        """The server is stopping: flush an open stream (eos semantics), close the others."""
        if self.state is State.STREAMING:
            return self._finish("shutdown")
        if self.state is State.AWAIT_CONFIG:
            self.state = State.CLOSED
            return [CloseConnection(int(Close.GOING_AWAY), "server shutting down")]
        return []

    def on_slow_consumer(self) -> list[Action]:
        return self._fatal("slow_consumer", "client is not reading its messages")

    def on_overflow(self, what: str) -> list[Action]:
        """A bounded per-stream queue other than the audio backlog is full (e.g. a flood of markers)."""
        return self._fatal("overloaded", f"too many {what} waiting for the model")

    def _progress(self, processed_ms: float | None) -> list[Action]:
        """Take the I/O layer's progress report; tell the client (once per crossing) when it is past `max_lag_s`."""
        if processed_ms is not None:
            self.processed_ms = processed_ms
        lag = self.lag_ms
        if self.state is not State.STREAMING:
            return []
        if not self.lag_warned and lag > self.limits.max_lag_s * 1000.0:
            self.lag_warned = True
            msg = error_message("lagging", f"the server is {lag / 1000:.1f} s behind this stream's audio (warned past "
                                f"{self.limits.max_lag_s:g} s; the stream ends with 'overloaded' past "
                                f"{self.limits.max_backlog_s:g} s)", fatal=False)
            return [Send({**msg, "lag_ms": lag})]
        if self.lag_warned and lag < self.limits.max_lag_s * 500.0:
            self.lag_warned = False  # caught up to half the bound: warn again on the next crossing
        return []

    # ---- internals ----

    def _config(self, msg: dict) -> list[Action]:
        if self.state is State.AWAIT_CONFIG:
            self.config = _validate_config(msg, self.model, self.limits, self.check_policy)
            self.state = State.STREAMING
            return [Open(self.config)]
        if self.state is State.FINISHING:
            return []
        assert self.config is not None
        new = _validate_reconfig(msg, self.config, self.check_policy)
        self.config = new
        return self._drain(force=True) + [Reconfigure(new)]

    def _marker(self, msg: dict) -> list[Action]:
        marker_id = msg.get("id")
        if not (isinstance(marker_id, (str, int)) and not isinstance(marker_id, bool)) or \
                (isinstance(marker_id, str) and len(marker_id) > 256):
            raise ProtocolError("bad_message", "'marker' needs an 'id': a string (<= 256 chars) or an integer",
                                fatal=False)
        return self._drain(force=True) + [Marker(marker_id)]

    def _finish(self, reason: str) -> list[Action]:
        out = self._drain(force=True) + [Finish(reason)]
        self.state = State.FINISHING
        return out

    def _drain(self, force: bool) -> list[Action]:
        if not self._pending or (not force and len(self._pending) < self.limits.coalesce_bytes):
            return []
        pcm = bytes(self._pending)
        self._pending.clear()
        return [Audio(pcm)]

    def _error(self, e: ProtocolError) -> list[Action]:
        if e.fatal or self.state is State.AWAIT_CONFIG:  # before `config`, every error ends the connection
            return self._fatal(e.kind, e.message)
        self.soft_errors += 1
        if self.soft_errors > self.limits.max_soft_errors:
            return self._fatal(e.kind, f"{e.message} (more than {self.limits.max_soft_errors} errors)")
        return [Send(error_message(e.kind, e.message, fatal=False))]

    def _fatal(self, kind: str, message: str, retry_after_s: float | None = None) -> list[Action]:
        if self.state is State.CLOSED:
            return []
        self.state = State.CLOSED
        self._pending.clear()
        return [Send(error_message(kind, message, fatal=True, retry_after_s=retry_after_s)),
                CloseConnection(int(ERROR_CLOSE[kind]), kind)]

    def _fatal_flush(self, kind: str, message: str, reason: str) -> list[Action]:
        """A fatal condition that still delivers every held word: error, flush, done, close."""
        return [Send(error_message(kind, message, fatal=True))] + self._finish(reason)


def _word_dict(w: Any) -> dict:
    return {"text": w.text, "start_ms": w.start_ms, "end_ms": w.end_ms, "emitted_ms": w.emitted_ms,
            "compute_ms": w.compute_ms}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _parse_json(text: str | bytes) -> dict:
    try:
        msg = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, RecursionError, UnicodeDecodeError) as e:
        raise ProtocolError("bad_message", f"invalid JSON: {e}"[:200], fatal=False) from None
    if not isinstance(msg, dict):
        raise ProtocolError("bad_message", "a message must be a JSON object", fatal=False)
    return msg


def _get(msg: dict, key: str, types: tuple, default: Any) -> Any:
    value = msg.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        names = "/".join(t.__name__ for t in types)
        raise ProtocolError("bad_config", f"'{key}' must be {names}, got {type(value).__name__}")
    return value


def _int_in(msg: dict, key: str, default: int, lo: int, hi: int) -> int:
    value = _get(msg, key, (int,), default)
    if not lo <= value <= hi:
        raise ProtocolError("bad_config", f"'{key}' must be within {lo}..{hi}, got {value}")
    return value


def _lang(msg: dict, key: str, served: str | None) -> str | None:
    value = _get(msg, key, (str,), None)
    if value is not None and (len(value) > 16 or not value.replace("-", "").replace("_", "").isalnum()):
        raise ProtocolError("bad_config", f"'{key}' must be a language code such as 'en'")
    if value is not None and served is not None and value.lower() != served.lower():
        raise ProtocolError("bad_config", f"this server's model has {key}={served!r}, not {value!r}")
    return value if value is not None else served


def _policy(msg: dict, default: str, check: Callable[[str], str]) -> str:
    spec = _get(msg, "policy", (str,), default)
    if len(spec) > 256:
        raise ProtocolError("bad_config", "'policy' is longer than 256 characters")
    try:
        return check(spec)
    except ValueError as e:
        raise ProtocolError("bad_config", str(e)) from None


def _validate_config(msg: dict, model: ModelInfo, limits: Limits, check: Callable[[str], str]) -> StreamConfig:
    sample_rate = _int_in(msg, "sample_rate", 16000, limits.min_sample_rate, limits.max_sample_rate)
    encoding = _get(msg, "encoding", (str,), "pcm_s16le")
    if encoding not in ENCODINGS:
        raise ProtocolError("bad_config", f"'encoding' must be one of {', '.join(ENCODINGS)}, got {encoding!r}")
    channels = _int_in(msg, "channels", 1, 1, limits.max_channels)
    task = _get(msg, "task", (str,), None)
    if task is not None and task not in TASKS:
        raise ProtocolError("bad_config", f"'task' must be one of {', '.join(TASKS)}, got {task!r}")
    if task is not None and model.task is not None and task != model.task:
        raise ProtocolError("bad_config", f"this server's model does {model.task!r}, not {task!r}")
    return StreamConfig(
        sample_rate=sample_rate, encoding=encoding, channels=channels, task=task or model.task,
        source_lang=_lang(msg, "source_lang", model.source_lang),
        target_lang=_lang(msg, "target_lang", model.target_lang),
        policy=_policy(msg, model.default_policy, check),
        chunk_ms=_int_in(msg, "chunk_ms", model.default_chunk_ms, 40, 5000),
        beam=_int_in(msg, "beam", 1, 1, 8),
    )


_FIXED_MID_STREAM = ("sample_rate", "encoding", "channels", "task", "source_lang", "target_lang", "chunk_ms")


def _validate_reconfig(msg: dict, current: StreamConfig, check: Callable[[str], str]) -> StreamConfig:
    """Mid-stream `config`: only `policy` and `beam` may change; other fields, if given, must be unchanged."""
    try:
        for key in _FIXED_MID_STREAM:
            if key in msg and msg[key] is not None and msg[key] != getattr(current, key):
                raise ProtocolError("bad_config", f"'{key}' cannot change mid-stream (only 'policy' and 'beam' can)",
                                    fatal=False)
        beam = _int_in(msg, "beam", current.beam, 1, 8)
        return replace(current, policy=_policy(msg, current.policy, check), beam=beam)
    except ProtocolError as e:
        raise ProtocolError(e.kind, e.message, fatal=False) from None
