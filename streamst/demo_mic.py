"""`streamst mic`: live captions from a microphone in the terminal; SRT/VTT written on Ctrl-C.

Audio comes from an `InputSource` (the sound card through sounddevice, or a file behind the same interface
for tests) and goes either into a local `Session` or to a streamst server (`--url`). The terminal shows the
stable text and the partial tail on one updating line.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import queue
import shutil
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Protocol

import numpy as np


class InputSource(Protocol):
    """Float32 audio blocks [frames, channels] at `sample_rate`; iteration ends when the source stops."""

    sample_rate: int
    channels: int

    def blocks(self) -> Iterator[np.ndarray]: ...

    def stop(self) -> None: ...


class SoundDeviceSource:
    """A sound card input through sounddevice (imported only here: tests and servers never need it)."""

    def __init__(self, device: int | str | None = None, sample_rate: int | None = None, block_ms: float = 40.0):
        sd = sounddevice()
        try:
            info = sd.query_devices(device, "input")
        except (sd.PortAudioError, ValueError) as e:
            found = input_devices(sd)
            hint = ("no input device found (is a microphone connected? `--file AUDIO` reads a file instead)"
                    if not found else f"input device {device!r} not usable ({e}); inputs: " +
                    ", ".join(f"{i}: {name}" for i, name in found))
            raise ValueError(hint) from None
        self.sample_rate = int(sample_rate or info["default_samplerate"])
        self.channels = 1 if info["max_input_channels"] >= 1 else 0
        if not self.channels:
            raise ValueError(f"device {device!r} has no input channels")
        self._queue: queue.Queue = queue.Queue(maxsize=500)
        try:
            self._stream = sd.InputStream(device=device, channels=self.channels, samplerate=self.sample_rate,
                                          dtype="float32", blocksize=int(self.sample_rate * block_ms / 1000),
                                          callback=self._callback)
        except sd.PortAudioError as e:
            raise ValueError(f"cannot open input device {device!r}: {e}") from None
        self._stopped = threading.Event()

    def _callback(self, data: np.ndarray, frames: int, time_info: Any, status: Any) -> None:
        try:
            self._queue.put_nowait(data.copy())
        except queue.Full:  # the consumer is far behind: drop rather than grow without bound
            pass

    def blocks(self) -> Iterator[np.ndarray]:
        self._stream.start()
        try:
            while not self._stopped.is_set():
                try:
                    yield self._queue.get(timeout=0.1)
                except queue.Empty:
                    continue
        finally:
            self._stream.stop()
            self._stream.close()

    def stop(self) -> None:
        self._stopped.set()


class FileSource:
    """A file played as if it were a microphone (optionally at real-time pace)."""

    def __init__(self, path: str | Path, block_ms: float = 40.0, realtime: bool = False):
        from streamst.server.replay import read_audio

        self.audio, self.sample_rate = read_audio(path)
        self.channels = self.audio.shape[1]
        self.block = max(1, int(self.sample_rate * block_ms / 1000))
        self.realtime = realtime
        self._stopped = threading.Event()

    def blocks(self) -> Iterator[np.ndarray]:
        start = time.perf_counter()
        for i in range(0, len(self.audio), self.block):
            if self._stopped.is_set():
                return
            if self.realtime:
                time.sleep(max(0.0, start + i / self.sample_rate - time.perf_counter()))
            yield self.audio[i:i + self.block]

    def stop(self) -> None:
        self._stopped.set()


PORTAUDIO_HINT = ("`streamst mic` needs the PortAudio library: `apt-get install libportaudio2` (Debian/Ubuntu), "
                  "`brew install portaudio` (macOS); or read a file with `--file AUDIO`")


def sounddevice() -> Any:
    """The sounddevice module; ValueError with how to install PortAudio when its library is missing."""
    try:
        import sounddevice as sd
    except OSError as e:  # sounddevice raises OSError("PortAudio library not found")
        raise ValueError(f"{e}: {PORTAUDIO_HINT}") from None
    return sd


def input_devices(sd: Any) -> list[tuple[int, str]]:
    """(index, name) of every device with an input channel."""
    try:
        devices = sd.query_devices()
    except Exception:  # noqa: BLE001 - PortAudio without a host API: no devices
        return []
    return [(i, d["name"]) for i, d in enumerate(devices) if d.get("max_input_channels", 0) > 0]


class CaptionLine:
    """Stable text plus the partial tail (and the server's lag) on one terminal line, rewritten in place.

    A `stable` message commits words that the previous `partial` still showed, so it clears the partial (the
    next `partial` follows it); at the end the whole text is printed, not just the line's tail.
    """

    def __init__(self, out: Any = sys.stderr, width: int | None = None):
        self.out, self.width = out, width or shutil.get_terminal_size((100, 20)).columns
        self.stable: list[str] = []
        self.partial = ""
        self.lag_ms: float | None = None

    def update(self, msg: dict) -> None:
        kind = msg.get("type")
        if isinstance(msg.get("lag_ms"), (int, float)):
            self.lag_ms = float(msg["lag_ms"])
        if kind == "stable":
            self.stable += [w["text"] for w in msg["words"]]
            self.partial = ""  # its words are now stable; the partial that follows replaces it
        elif kind == "partial":
            self.partial = msg["text"]
        elif kind == "done":
            self.partial = ""
        self.out.write("\r" + self.render())
        self.out.flush()

    def render(self) -> str:
        """The line as it is on screen: the end of the text, the partial in brackets, the lag when behind."""
        lag = f"  (lag {self.lag_ms / 1000:.1f} s)" if self.lag_ms is not None and self.lag_ms >= 1000 else ""
        line = " ".join(self.stable) + (f" [{self.partial}]" if self.partial else "")
        room = max(1, self.width - 1 - len(lag))
        return (line[-room:] + lag).ljust(self.width - 1)

    def end(self) -> None:
        """Replace the one-line view with the whole text, wrapped to the terminal."""
        import textwrap

        self.out.write("\r" + " " * (self.width - 1) + "\r")
        text = " ".join(self.stable)
        if text:
            self.out.write(textwrap.fill(text, max(20, self.width - 1)) + "\n")
        self.out.flush()


def caption_local(source: InputSource, model: Any, policy: str, chunk_ms: int,
                  on_message: Callable[[dict], None]) -> list[dict]:
    """Captions with an in-process Session; Ctrl-C (or the source ending) flushes every remaining word."""
    from streamst.audio import AudioFormat
    from streamst.policies import parse_policy
    from streamst.server.protocol import ModelInfo, ServerProtocol
    from streamst.session import Session

    session = Session(model, parse_policy(policy),
                      AudioFormat(sample_rate=source.sample_rate, channels=source.channels, encoding="f32le"),
                      chunk_ms=chunk_ms)
    to_messages = ServerProtocol(ModelInfo(name="local"), session_id="local")  # same message shapes as the server
    words: list[dict] = []

    def emit(events: list) -> None:
        for action in to_messages.on_events(events):
            words.extend(action.message.get("words", []))
            on_message(action.message)

    try:
        for block in source.blocks():
            emit(session.push(np.ascontiguousarray(block, dtype=np.float32)))
    except KeyboardInterrupt:
        source.stop()
    emit(session.finish())
    on_message({"type": "done", "stats": session.stats()})
    return words


def caption_remote(source: InputSource, url: str, config: dict, token: str | None,
                   on_message: Callable[[dict], None]) -> list[dict]:
    """Captions from a streamst server; Ctrl-C sends `eos` and waits for the last words."""
    from streamst.server.client import stream_audio

    async def pieces():
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGINT, stop.set)
        it = source.blocks()
        try:
            while not stop.is_set():
                block = await asyncio.to_thread(next, it, None)
                if block is None:
                    return
                yield np.ascontiguousarray(block, dtype="<f4").tobytes()
        finally:
            source.stop()
            loop.remove_signal_handler(signal.SIGINT)

    cfg = {"sample_rate": source.sample_rate, "channels": source.channels, "encoding": "f32le", **config}
    result = asyncio.run(stream_audio(url, pieces(), cfg, token=token, on_message=on_message, ping_every_s=1.0))
    return result.words


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.description = ("live captions from a microphone (needs the PortAudio library: apt-get install "
                          "libportaudio2), from a local model or a streamst server (--url)")
    parser.add_argument("--list-devices", action="store_true", help="list input devices and exit")
    parser.add_argument("--device", help="input device index or name (default: the system's)")
    parser.add_argument("--url", help="use a streamst server (ws://, wss://, or the http:// URL `serve` prints) "
                                      "instead of a local model")
    parser.add_argument("--token", help="server token (or env STREAMST_TOKEN)")
    parser.add_argument("--model", default=os.environ.get("STREAMST_MODEL"), help="local model name or path")
    parser.add_argument("--policy", default="waitk:k=3", help="policy spec")
    parser.add_argument("--chunk-ms", type=int, default=320)
    parser.add_argument("--srt", help="write captions here on exit (.srt or .vtt)")
    parser.add_argument("--file", help="read this audio file instead of a microphone (real-time pace)")


def run(args: argparse.Namespace) -> int:
    if args.srt and Path(args.srt).suffix.lower() not in (".srt", ".vtt"):
        raise ValueError("--srt must end in .srt or .vtt")
    if args.url:
        from streamst.server.client import websocket_url

        args.url = websocket_url(args.url)
    if args.list_devices:
        found = input_devices(sounddevice())
        for i, name in found:
            print(f"{i}: {name}")
        if not found:
            print("no input devices found (is a microphone connected? `--file AUDIO` reads a file instead)",
                  file=sys.stderr)
            return 1
        return 0
    device: int | str | None = int(args.device) if args.device and args.device.isdigit() else args.device
    source: InputSource = FileSource(args.file, realtime=True) if args.file else SoundDeviceSource(device)
    line = CaptionLine()
    if args.url:
        config = {"policy": args.policy, "chunk_ms": args.chunk_ms}
        words = caption_remote(source, args.url, config, args.token or os.environ.get("STREAMST_TOKEN"), line.update)
    else:
        from streamst.checkpoint import load_model
        from streamst.server.cli import default_model

        model = load_model(args.model or default_model())
        print("listening... Ctrl-C to stop", file=sys.stderr)
        words = caption_local(source, model, args.policy, args.chunk_ms, line.update)
    line.end()
    if args.srt:
        from streamst.captions import write_captions

        print(f"wrote {write_captions(args.srt, words)}", file=sys.stderr)
    return 0
