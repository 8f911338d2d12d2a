"""A protocol v1 client: send audio pieces to a streamst server, collect what comes back.

Used by `streamst stream`, `streamst mic --url`, the load script and the tests.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import time
from dataclasses import dataclass, field
from typing import Any, AsyncIterable, Callable, Iterable

from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed


def websocket_url(url: str) -> str:
    """The WebSocket URL for what a user may type: `http(s)://` (what `serve` prints) becomes `ws(s)://`; a bare
    `host:port` gets `ws://`. ValueError for other schemes."""
    from urllib.parse import urlsplit, urlunsplit

    url = url.strip()
    if "://" not in url:
        url = "ws://" + url
    parts = urlsplit(url)
    scheme = {"http": "ws", "https": "wss", "ws": "ws", "wss": "wss"}.get(parts.scheme.lower())
    if scheme is None or not parts.netloc:
        raise ValueError(f"not a server URL: {url!r} (expected ws://HOST:PORT/ or http://HOST:PORT/)")
    return urlunsplit((scheme, parts.netloc, parts.path or "/", parts.query, ""))


class ServerError(Exception):
    """The server answered with a typed `error` message."""

    def __init__(self, message: dict):
        super().__init__(f"{message.get('error')}: {message.get('message')}")
        self.message = message
        self.kind = message.get("error")


@dataclass
class StreamResult:
    ready: dict | None = None
    words: list[dict] = field(default_factory=list)  # every committed word, in order
    partials: list[str] = field(default_factory=list)
    markers: dict[Any, float] = field(default_factory=dict)  # marker id -> perf_counter time it came back
    errors: list[dict] = field(default_factory=list)
    lags_ms: list[float] = field(default_factory=list)  # `lag_ms` of every message that carried one, in order
    done: dict | None = None
    close_code: int | None = None

    @property
    def text(self) -> str:
        return " ".join(w["text"] for w in self.words)


async def stream_audio(
    url: str,
    pieces: Iterable[bytes] | AsyncIterable[bytes],
    config: dict,
    *,
    token: str | None = None,
    on_message: Callable[[dict], None] | None = None,
    marker_every: int = 0,
    marker_sent: Callable[[Any], None] | None = None,
    eos: bool = True,
    open_timeout: float = 30.0,
    ping_every_s: float = 0.0,
) -> StreamResult:
    """Open a stream with `config`, send every piece, then `eos`; returns when the server closes.

    With `marker_every=n`, a marker (id = piece index) follows every n-th piece; `marker_sent(id)` is
    called as it goes out (the load script times the echo against it). With `ping_every_s`, a `ping` goes out
    that often (its `pong` carries the server's `lag_ms` at once, even while no words come).
    """
    result = StreamResult()
    headers = {"Authorization": f"Bearer {token}"} if token else None
    async with connect(websocket_url(url), additional_headers=headers, open_timeout=open_timeout, max_size=1 << 24) as ws:
        await ws.send(json.dumps({"type": "config", **config}))
        first = json.loads(await ws.recv())
        _record(result, first, on_message)
        if first.get("type") != "ready":
            await _drain(ws, result, on_message)
            raise ServerError(first) if first.get("type") == "error" else RuntimeError(f"unexpected {first}")

        async def send_all() -> None:
            i = 0
            try:
                async for piece in _aiter(pieces):
                    await ws.send(piece)
                    i += 1
                    if marker_every and i % marker_every == 0:
                        if marker_sent is not None:
                            marker_sent(i)
                        await ws.send(json.dumps({"type": "marker", "id": i}))
                if eos:
                    await ws.send(json.dumps({"type": "eos"}))
            except ConnectionClosed:
                pass

        async def ping_loop() -> None:
            with contextlib.suppress(ConnectionClosed):
                while True:
                    await asyncio.sleep(ping_every_s)
                    await ws.send(json.dumps({"type": "ping", "id": "lag"}))

        sender = asyncio.create_task(send_all())
        pinger = asyncio.create_task(ping_loop()) if ping_every_s > 0 else None
        try:
            await _drain(ws, result, on_message)
        finally:
            sender.cancel()
            if pinger is not None:
                pinger.cancel()
        result.close_code = ws.close_code
    fatal = [e for e in result.errors if e.get("fatal")]
    if fatal and result.done is None:
        raise ServerError(fatal[0])
    return result


async def _drain(ws: Any, result: StreamResult, on_message: Callable[[dict], None] | None) -> None:
    try:
        async for raw in ws:
            _record(result, json.loads(raw), on_message)
    except ConnectionClosed:
        pass
    result.close_code = ws.close_code


def _record(result: StreamResult, msg: dict, on_message: Callable[[dict], None] | None) -> None:
    kind = msg.get("type")
    if isinstance(msg.get("lag_ms"), (int, float)):
        result.lags_ms.append(float(msg["lag_ms"]))
    if kind == "ready":
        result.ready = msg
    elif kind == "stable":
        result.words.extend(msg["words"])
    elif kind == "partial":
        result.partials.append(msg["text"])
    elif kind == "marker":
        result.markers[msg["id"]] = time.perf_counter()
    elif kind == "error":
        result.errors.append(msg)
    elif kind == "done":
        result.done = msg
    if on_message is not None:
        on_message(msg)


async def _aiter(pieces: Iterable[bytes] | AsyncIterable[bytes]):
    if hasattr(pieces, "__aiter__"):
        async for p in pieces:  # type: ignore[union-attr]
            yield p
    else:
        for p in pieces:  # type: ignore[union-attr]
            yield p


async def paced(pieces: Iterable[bytes], seconds_per_piece: Callable[[bytes], float]) -> AsyncIterable[bytes]:
    """Yield pieces no faster than real time (each piece after the audio before it has 'played')."""
    start = time.perf_counter()
    played = 0.0
    for p in pieces:
        delay = start + played - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        yield p
        played += seconds_per_piece(p)
