"""`streamst stream AUDIO --url ws://...`: send an audio file through a streamst server and print its words.

The file goes as float32 at its own rate and channel count (exactly what `streamst translate` reads), so the
committed words equal the CLI's on the same file.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import sys
from pathlib import Path

import numpy as np

from streamst.audio import read_audio  # noqa: F401  (the clients import it from here too)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("audio", nargs="+", help="audio file(s) soundfile can read (wav, flac, ogg)")
    parser.add_argument("--url", default="ws://127.0.0.1:8765/", help="server URL (ws://, wss://, or the http(s):// URL `streamst serve` prints)")
    parser.add_argument("--realtime", action="store_true", help="send no faster than real time")
    parser.add_argument("--policy", help="policy spec (default: the server's)")
    parser.add_argument("--chunk-ms", type=int, help="chunk length (default: the server's)")
    parser.add_argument("--piece-ms", type=float, default=100.0, help="audio per WebSocket frame")
    parser.add_argument("--token", help="server token (or env STREAMST_TOKEN)")
    parser.add_argument("--jsonl", action="store_true", help="print every server message as JSON lines")
    parser.add_argument("--srt", help="also write the committed words as SRT/VTT (by suffix); one file only")


def pieces_of(audio: np.ndarray, rate: int, piece_ms: float) -> list[bytes]:
    step = max(1, int(rate * piece_ms / 1000))
    return [audio[i:i + step].astype("<f4").tobytes() for i in range(0, len(audio), step)]


def stream_config(rate: int, channels: int, policy: str | None, chunk_ms: int | None) -> dict:
    config: dict = {"sample_rate": rate, "encoding": "f32le", "channels": channels}
    if policy:
        config["policy"] = policy
    if chunk_ms:
        config["chunk_ms"] = chunk_ms
    return config


async def stream_file(url: str, path: str | Path, *, realtime: bool = False, policy: str | None = None,
                      chunk_ms: int | None = None, piece_ms: float = 100.0, token: str | None = None,
                      on_message=None):
    """Send one file; returns the client's StreamResult."""
    from streamst.server.client import paced, stream_audio

    audio, rate = read_audio(path)
    pieces = pieces_of(audio, rate, piece_ms)
    frame_bytes = 4 * audio.shape[1]
    source = paced(pieces, lambda p: len(p) / frame_bytes / rate) if realtime else pieces
    return await stream_audio(url, source, stream_config(rate, audio.shape[1], policy, chunk_ms), token=token,
                              on_message=on_message)


def run(args: argparse.Namespace) -> int:
    import os

    from streamst.server.client import ServerError

    from streamst.server.client import websocket_url

    token = args.token or os.environ.get("STREAMST_TOKEN")
    args.url = websocket_url(args.url)  # a bad URL is a one-line error before any file is read
    if args.srt and len(args.audio) > 1:
        raise ValueError("--srt takes one audio file")
    printer = (lambda m: print(json.dumps(m), flush=True)) if args.jsonl else None
    for path in args.audio:
        try:
            result = asyncio.run(stream_file(args.url, path, realtime=args.realtime, policy=args.policy,
                                             chunk_ms=args.chunk_ms, piece_ms=args.piece_ms, token=token,
                                             on_message=printer))
        except ServerError as e:
            raise ValueError(f"server refused {path}: {e}") from None
        except OSError as e:
            raise ValueError(f"cannot reach {args.url}: {e}") from None
        if not args.jsonl:
            print(result.text, flush=True)
        if args.srt:
            from streamst.captions import write_captions

            write_captions(args.srt, result.words)
        if result.done is None:
            print(f"streamst stream: {path}: the server closed without 'done' (code {result.close_code})",
                  file=sys.stderr)
            return 1
    return 0
