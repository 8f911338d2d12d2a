"""The I/O around `ServerProtocol`: a `websockets` asyncio server, the browser page over HTTP on the same port.

Per connection three parts run: the reader (socket -> protocol), the worker (the stream's ordered work queue
-> scheduler -> protocol) and the sender (a bounded outgoing queue -> socket). The reader never stops reading,
so pings are answered whatever the model's backlog: audio waits in a buffer bounded in seconds
(`max_backlog_s`, then a typed `overloaded`), a stream that falls behind takes larger chunks, outgoing messages
are bounded (a client that does not read gets `slow_consumer`), streams are admitted by measured capacity
(`CapacityMeter`), and the model is shared through one `Scheduler`.
"""
from __future__ import annotations

import asyncio
import contextlib
import http
import json
import logging
import mimetypes
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from streamst.server.protocol import (
    DEFAULT_POLICY, Audio, Close, CloseConnection, Finish, Limits, Marker, ModelInfo, Open, Reconfigure, Send,
    ServerProtocol, State, error_message,
)
from streamst.cascade import Cascade, CascadeState
from streamst.server.capacity import CapacityMeter
from streamst.server.scheduler import Scheduler
from streamst.server.workqueue import AudioRun, WorkQueue

log = logging.getLogger("streamst.server")
WEB_ROOT = Path(__file__).resolve().parents[1] / "web"  # package data: a wheel install serves the page too


def default_origins(host: str, port: int) -> set[str]:
    """Origins of the page this server itself serves (plus no Origin at all: non-browser clients)."""
    hosts = {"localhost", "127.0.0.1", "[::1]", host if ":" not in host else f"[{host}]"}
    return {f"{scheme}://{h}:{port}" for h in hosts for scheme in ("http", "https")}


@dataclass
class ServerConfig:
    model_name: str
    default_policy: str = DEFAULT_POLICY
    chunk_ms: int = 320
    limits: Limits = field(default_factory=Limits)
    token: str | None = None
    allowed_origins: set[str] | None = None  # None: any origin; else the set (a missing Origin header is allowed)
    web_root: Path = WEB_ROOT
    cascade: Cascade | None = None  # the model recognises; this translates its committed words (streamst.cascade)


class StreamServer:
    """One model, one scheduler, many connections."""

    def __init__(self, model: Any, config: ServerConfig, scheduler: Scheduler,
                 make_session: Callable[..., Any] | None = None, meter: CapacityMeter | None = None):
        self.model, self.config, self.scheduler = model, config, scheduler
        self.meter = meter or CapacityMeter(parallelism=getattr(scheduler, "parallelism", 1))
        self.make_session = make_session or _make_session
        cascade = config.cascade
        self.model_info = ModelInfo(
            name=config.model_name, task="st" if cascade else getattr(model, "task", None),
            source_lang=getattr(model, "src_lang", None),
            target_lang=cascade.target_lang if cascade else getattr(model, "tgt_lang", None),
            default_policy=config.default_policy, default_chunk_ms=config.chunk_ms,
        )
        self.open_streams = 0
        self.streams_per_client: Counter[str] = Counter()
        self.connections: set[Connection] = set()
        self.server: Server | None = None
        self._web_files = _list_web_files(config.web_root)

    # ---- admission ----

    def admit(self, client: str) -> tuple[str, str] | None:
        """Take a stream slot; returns (error, message) when none is free."""
        limits = self.config.limits
        if limits.max_streams is not None and self.open_streams >= limits.max_streams:
            return "busy", f"server is at its limit of {limits.max_streams} streams (--max-streams)"
        capacity = self.meter.capacity() if limits.max_streams is None else None
        if capacity is not None and self.open_streams >= capacity:
            return "busy", (f"server is at its measured capacity of {capacity} real-time streams "
                            f"({self.meter.cost:.3f} s of compute per s of audio)")
        if self.streams_per_client[client] >= limits.max_streams_per_client:
            return "busy", f"client {client} is at its limit of {limits.max_streams_per_client} streams"
        self.open_streams += 1
        self.streams_per_client[client] += 1
        return None

    def release(self, client: str) -> None:
        self.open_streams -= 1
        self.streams_per_client[client] -= 1
        if self.streams_per_client[client] <= 0:
            del self.streams_per_client[client]

    # ---- HTTP: the page, health, origin check ----

    def process_request(self, connection: ServerConnection, request: Request) -> Response | None:
        origin = request.headers.get("Origin")
        allowed = self.config.allowed_origins
        if origin is not None and allowed is not None and origin not in allowed:
            return _response(http.HTTPStatus.FORBIDDEN, b"origin not allowed\n", "text/plain")
        if "websocket" in request.headers.get("Upgrade", "").lower():
            return None  # the WebSocket handshake goes on
        path = urlsplit(request.path).path
        if path == "/healthz":
            return _response(http.HTTPStatus.OK, b"ok\n", "text/plain")
        name = "index.html" if path in ("/", "") else path.lstrip("/")
        if name not in self._web_files:
            return _response(http.HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
        file = self._web_files[name]
        ctype = mimetypes.guess_type(file.name)[0] or "application/octet-stream"
        if ctype.startswith("text/") or ctype.endswith("javascript"):
            ctype += "; charset=utf-8"
        return _response(http.HTTPStatus.OK, file.read_bytes(), ctype)

    # ---- lifecycle ----

    async def start(self, host: str, port: int, ssl: Any = None) -> Server:
        limits = self.config.limits
        self.server = await serve(
            self.handle, host, port, ssl=ssl, process_request=self.process_request,
            max_size=2 * limits.max_message_bytes,  # above the protocol's limit, so that one gets a typed error
            max_queue=16, write_limit=1 << 16, ping_interval=20, ping_timeout=20, close_timeout=5,
            open_timeout=10, server_header="streamst",
        )
        return self.server

    async def shutdown(self, timeout_s: float = 30.0) -> None:
        """SIGTERM: stop accepting, flush every open stream (eos semantics), close, then stop."""
        if self.server is None:
            return
        self.server.close(close_connections=False)
        for conn in list(self.connections):
            await conn.execute(conn.protocol.on_shutdown())
        pending = [c.done for c in self.connections]
        if pending:
            await asyncio.wait(pending, timeout=timeout_s)
        self.server.close(close_connections=True)
        await self.server.wait_closed()

    async def handle(self, ws: ServerConnection) -> None:
        _bound_send_buffer(ws, self.config.limits.socket_send_bytes)
        conn = Connection(self, ws)
        self.connections.add(conn)
        try:
            await conn.run()
        finally:
            self.connections.discard(conn)
            if not conn.done.done():
                conn.done.set_result(None)


class Connection:
    """One WebSocket connection carrying one stream."""

    def __init__(self, server: StreamServer, ws: ServerConnection):
        self.server, self.ws = server, ws
        cfg = server.config
        self.limits = cfg.limits
        self.protocol = ServerProtocol(model=server.model_info, session_id=uuid.uuid4().hex[:16], limits=cfg.limits,
                                       token=cfg.token)
        self.client = str(ws.remote_address[0]) if ws.remote_address else "?"
        self.session: Any = None
        self.admitted = False
        self.work = WorkQueue(self.limits.work_queue)
        self.catching_up = False
        self.cascade_state = CascadeState()
        self.outgoing: asyncio.Queue = asyncio.Queue(maxsize=self.limits.send_queue)
        self.closing = False
        self._dropping: asyncio.Task | None = None
        self.done: asyncio.Future = asyncio.get_running_loop().create_future()

    async def run(self) -> None:
        sender = asyncio.create_task(self._send_loop())
        worker = asyncio.create_task(self._work_loop())
        try:
            await self.execute(self.protocol.on_connect(_token(self.ws.request)))
            await self._read_loop()
            if self.closing:  # a close is queued behind the last messages: let the sender deliver them
                await asyncio.wait_for(sender, self.limits.send_timeout_s + 5)
        except (asyncio.TimeoutError, ConnectionClosed):
            pass
        except Exception as e:  # noqa: BLE001 - a bug on this connection's path ends this connection only
            log.exception("connection %s failed", self.client)
            await self._fail(f"server error: {type(e).__name__}")
        finally:  # the client is gone or was closed: stop this stream's work at once
            for task in (sender, worker):
                task.cancel()
            self._free()

    def _free(self) -> None:
        """A disconnect frees the stream's state and slot at once (a step in flight finishes and is dropped)."""
        self.session = None
        if self.admitted:
            self.admitted = False
            self.server.release(self.client)

    # ---- reader ----

    async def _read_loop(self) -> None:
        """Read until the connection closes. Once the stream is closing, messages are read and dropped (so the
        client's close frame, pongs and pings still get through), for at most `send_timeout_s` + 10 s."""
        closing_deadline: float | None = None
        loop = asyncio.get_running_loop()
        while True:
            if self.closing or self.protocol.state is State.CLOSED:
                closing_deadline = closing_deadline or loop.time() + self.limits.send_timeout_s + 10
                timeout: float | None = closing_deadline - loop.time()
                if timeout <= 0:
                    return
            else:
                timeout = {State.AWAIT_CONFIG: self.limits.config_timeout_s,
                           State.STREAMING: self.limits.idle_timeout_s}.get(self.protocol.state)
            try:
                message = await asyncio.wait_for(self.ws.recv(), timeout)
            except asyncio.TimeoutError:
                if closing_deadline is None:
                    await self.execute(self.protocol.on_idle_timeout())
                continue
            except ConnectionClosed:
                return
            if self.closing or self.protocol.state is State.CLOSED:
                continue
            if isinstance(message, str):
                await self.execute(self.protocol.receive_text(message))
            else:
                await self.execute(self.protocol.receive_bytes(message))
        # after `eos` (FINISHING) the loop above still reads, so that a vanished client is noticed

    # ---- carrying out the protocol's actions ----

    async def execute(self, actions: list) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._enqueue(action.message)
            elif isinstance(action, CloseConnection):
                self._enqueue(action)
                self.closing = True
            elif isinstance(action, Open):
                await self.execute(self._open(action))
            elif not self.work.put(action):  # never blocks: the reader keeps reading (pings are answered)
                await self.execute(self.protocol.on_overflow("markers and configs"))

    def _enqueue(self, item: Any) -> None:
        partial = isinstance(item, dict) and item.get("type") == "partial"
        if partial and self.outgoing.qsize() >= self.outgoing.maxsize // 2:
            return  # documented: partials are skipped while the client lags; stable text never is
        try:
            self.outgoing.put_nowait(item)
        except asyncio.QueueFull:
            log.warning("dropping %s: %d messages unread", self.client, self.outgoing.qsize())
            self._abort()

    async def _fail(self, message: str) -> None:
        """An unexpected server-side failure on this connection: `internal` error and close 4011, at once."""
        self.closing = True
        self.protocol.on_work_error("internal", message)  # the protocol is closed from here on
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.ws.send(json.dumps(error_message("internal", message, fatal=True))),
                                   self.limits.send_timeout_s)
            await self.ws.close(int(Close.INTERNAL), "internal")

    def _abort(self) -> None:
        """Drop a client that does not read: its typed `slow_consumer` error and close frame go behind what the
        socket already holds (a client that reads again within `send_timeout_s` sees them), then the TCP
        connection is aborted. The reader and the other streams never wait for it."""
        if self._dropping is not None:
            return
        self.closing = True
        self.protocol.on_slow_consumer()
        self._dropping = asyncio.create_task(self._drop())

    async def _drop(self) -> None:
        text = json.dumps(error_message("slow_consumer", "client is not reading its messages", fatal=True))
        try:
            try:  # written without waiting for the client to drain the socket
                self.ws.protocol.send_text(text.encode())
                self.ws.protocol.send_close(int(Close.SLOW_CONSUMER), "slow_consumer")
                self.ws.send_data()
            except Exception:  # noqa: BLE001 - the connection is already closing: nothing more to tell
                pass
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.ws.wait_closed(), self.limits.send_timeout_s)
        finally:
            transport = getattr(self.ws, "transport", None)
            if transport is not None:
                transport.abort()

    def _open(self, action: Open) -> list:
        refusal = self.server.admit(self.client)
        if refusal is not None:
            return self.protocol.on_open_refused(*refusal, retry_after_s=self.limits.busy_retry_s)
        self.admitted = True
        try:
            self.session = self.server.make_session(self.server.model, action.config)
        except ValueError as e:
            return self.protocol.on_open_refused("bad_config", str(e))
        except Exception as e:  # noqa: BLE001 - reported to this client only
            log.exception("opening a session failed")
            return self.protocol.on_open_refused("internal", f"could not open the stream: {type(e).__name__}")
        return self.protocol.on_opened()

    # ---- worker: this stream's ordered work ----

    def _piece_bytes(self) -> int:
        """How much audio the next step takes (and whether as one merged chunk, in `catching_up`): a chunk while
        the stream keeps up, up to `catchup_max_s` once it is `catchup_lag_s` behind (fewer decoder calls)."""
        c = self.protocol.config
        self.catching_up = False
        if c is None:
            return 1 << 30
        self.catching_up = self.protocol.lag_ms >= self.limits.catchup_lag_s * 1000.0
        seconds = self.limits.catchup_max_s if self.catching_up else c.chunk_ms / 1000.0
        return max(1, int(seconds * c.sample_rate)) * c.frame_bytes

    async def _work_loop(self) -> None:
        while True:
            item = await self.work.get(self._piece_bytes, lambda: self.catching_up)
            catch_up = self.catching_up
            if self.session is None:
                continue
            try:
                if isinstance(item, (Audio, AudioRun)):
                    session = self.session
                    audio_ms, compute_s = session.source_ms, session.compute_s
                    events = await self.server.scheduler.push(session, item.pcm, merge=catch_up)
                    self.server.meter.record((session.source_ms - audio_ms) / 1000.0, session.compute_s - compute_s)
                    events = await self._translated(events)
                    await self.execute(self.protocol.on_events(events, session.source_ms))
                    for marker in item.markers if isinstance(item, AudioRun) else ():  # passed by a catch-up run
                        await self.execute(self.protocol.on_marker(marker.id, session.source_ms))
                elif isinstance(item, Marker):
                    await self.execute(self.protocol.on_marker(item.id, self.session.source_ms))
                elif isinstance(item, Reconfigure):
                    _reconfigure(self.session, item.config)
                    await self.execute(self.protocol.on_reconfigured())
                elif isinstance(item, Finish):
                    events = await self._translated(await self.server.scheduler.finish(self.session), final=True)
                    stats = self.session.stats()
                    await self.execute(self.protocol.on_finished(events, stats, item.reason, self.session.source_ms))
                    return
            except ValueError as e:
                await self.execute(self.protocol.on_work_error("bad_audio", str(e)))
                return
            except Exception as e:  # noqa: BLE001 - one stream's failure is reported to it alone
                log.exception("stream step failed")
                await self.execute(self.protocol.on_work_error("internal", f"stream step failed: {type(e).__name__}"))
                return

    async def _translated(self, events: list, final: bool = False) -> list:
        """The events as the client gets them: a cascade's text translator runs off the event loop."""
        cascade = self.server.config.cascade
        if cascade is None:
            return events
        events, self.cascade_state = await asyncio.to_thread(cascade.step, self.cascade_state, events, final)
        return events

    # ---- sender ----

    async def _send_loop(self) -> None:
        while True:
            item = await self.outgoing.get()
            try:
                if isinstance(item, CloseConnection):
                    await self.ws.close(item.code, item.reason)
                    return
                try:
                    text = json.dumps(item, allow_nan=False)
                except (TypeError, ValueError) as e:  # e.g. a NaN timing: never hang the client, end its stream
                    log.error("cannot encode a %s message for %s: %s", item.get("type"), self.client, e)
                    await self._fail(f"a {item.get('type')} message could not be encoded")
                    return
                await asyncio.wait_for(self.ws.send(text), self.limits.send_timeout_s)
            except asyncio.TimeoutError:
                log.warning("dropping %s: a send blocked for %.0f s", self.client, self.limits.send_timeout_s)
                self._abort()
                return
            except ConnectionClosed:
                return


def _make_session(model: Any, config: Any) -> Any:
    from streamst.audio import AudioFormat
    from streamst.policies import parse_policy
    from streamst.session import Session

    fmt = AudioFormat(sample_rate=config.sample_rate, channels=config.channels, encoding=config.encoding)
    return Session(model, parse_policy(config.policy), fmt, chunk_ms=config.chunk_ms, beam=config.beam)


def _reconfigure(session: Any, config: Any) -> None:
    from streamst.policies import parse_policy

    session.set_policy(parse_policy(config.policy))
    session.beam = config.beam


def _bound_send_buffer(ws: ServerConnection, nbytes: int) -> None:
    """Fix the kernel's send buffer of a connection (loopback autotunes it to megabytes): what a client has not
    read stays within the server's own bounds, and an error queued behind it reaches the client when it reads."""
    import socket

    sock = ws.transport.get_extra_info("socket") if ws.transport is not None else None
    if sock is not None and nbytes > 0:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, nbytes)


def _token(request: Request | None) -> str | None:
    """The client's token: `Authorization: Bearer T` or `?token=T` (browsers cannot set headers)."""
    if request is None:
        return None
    auth = request.headers.get("Authorization", "")
    if auth.lower().startswith("bearer "):
        return auth[7:].strip()
    values = parse_qs(urlsplit(request.path).query).get("token")
    return values[0] if values else None


def _list_web_files(root: Path) -> dict[str, Path]:
    """The page's files by name (a fixed list: no path from the request ever reaches the file system)."""
    if not root.is_dir():
        return {}
    return {p.name: p for p in root.iterdir() if p.is_file() and p.suffix in (".html", ".js", ".css", ".svg")}


def _response(status: http.HTTPStatus, body: bytes, content_type: str) -> Response:
    headers = Headers([("Content-Type", content_type), ("Content-Length", str(len(body))),
                       ("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")])
    return Response(status.value, status.phrase, headers, body)


async def serve_forever(server: StreamServer, host: str, port: int, ssl: Any = None,
                        ready: Callable[[int], None] | None = None) -> None:
    """Run until SIGTERM/SIGINT, then flush every open stream and stop."""
    import signal

    ws_server = await server.start(host, port, ssl)
    bound = next(iter(ws_server.sockets)).getsockname()[1]
    if ready is not None:
        ready(bound)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    started = time.perf_counter()
    await server.shutdown()
    log.info("shut down in %.2f s", time.perf_counter() - started)
