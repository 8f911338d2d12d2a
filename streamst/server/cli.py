"""`streamst serve`: the WebSocket API (protocol v1, docs/protocol.md) and the browser page on one port."""
from __future__ import annotations

import argparse
import asyncio
import logging
import os
import ssl as ssl_lib
import sys
from pathlib import Path

from streamst.server.protocol import DEFAULT_POLICY, Limits

LOOPBACK = ("127.0.0.1", "::1", "localhost")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    d = Limits()
    parser.add_argument("--host", default="127.0.0.1",
                        help="address to listen on (default: loopback only; give 0.0.0.0 to listen on all)")
    parser.add_argument("--port", type=int, default=8765, help="port for WebSocket and HTTP (0: any free port)")
    parser.add_argument("--model", default=os.environ.get("STREAMST_MODEL"),
                        help="model name (see `streamst models`) or checkpoint path")
    parser.add_argument("--pair", default="en", choices=["en", "en-de", "en-es"],
                        help="without --model: captions in English (en, the default) or translated into German or "
                             "Spanish (en-de, en-es), each by its default model")
    parser.add_argument("--cascade", metavar="TRANSLATOR", default=None,
                        help="translated captions by a cascade: the English recogniser (--model, default the English "
                             "one) commits words and TRANSLATOR translates each finished sentence or clause "
                             "(apertium: into Spanish, offline, rule-based)")
    parser.add_argument("--policy", default=DEFAULT_POLICY,
                        help=f"default policy spec (default {DEFAULT_POLICY}: bounded text and audio history, for "
                             "endless streams; e.g. waitk:k=3 for short ones)")
    parser.add_argument("--chunk-ms", type=int, default=320, help="default chunk length in ms")
    parser.add_argument("--max-streams", type=int, default=None,
                        help="open streams server-wide (default: the measured capacity: as many real-time streams as "
                             "the compute per second of audio, measured at start-up and as streams run, allows)")
    parser.add_argument("--max-streams-per-client", type=int, default=d.max_streams_per_client,
                        help="open streams per client IP address")
    parser.add_argument("--max-message-bytes", type=int, default=d.max_message_bytes, help="largest audio frame")
    parser.add_argument("--max-session-s", type=float, default=d.max_session_s, help="audio seconds per stream")
    parser.add_argument("--idle-timeout-s", type=float, default=d.idle_timeout_s,
                        help="close a stream (after flushing it) when no message came for this long")
    parser.add_argument("--catch-up-lag-s", type=float, default=d.catchup_lag_s,
                        help="a stream this far behind its received audio takes larger chunks to catch up (inf: never)")
    parser.add_argument("--max-lag-s", type=float, default=d.max_lag_s,
                        help="tell a stream (non-fatal `lagging` error) when it is this far behind")
    parser.add_argument("--max-backlog-s", type=float, default=d.max_backlog_s,
                        help="end a stream with `overloaded` (after flushing it) when this much received audio waits")
    parser.add_argument("--token", default=os.environ.get("STREAMST_TOKEN"),
                        help="require this token (Authorization: Bearer T, or ?token=T); env STREAMST_TOKEN")
    parser.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                        help="allow WebSocket connections from this browser origin (repeatable; '*' allows any); "
                             "the page's own origins on localhost are always allowed")
    parser.add_argument("--certfile", help="TLS certificate (PEM); needed for microphones on remote hosts")
    parser.add_argument("--keyfile", help="TLS private key (PEM)")
    parser.add_argument("--scheduler", choices=["batch", "threads"], default="batch",
                        help="batch: one worker steps every stream with a chunk ready as one batch (stacked encoder "
                             "states, batched greedy decoding); threads: each stream's step alone on a thread pool")
    parser.add_argument("--max-batch", type=int, default=32, help="streams per batched step (--scheduler batch)")
    parser.add_argument("--workers", type=int, default=1, help="model worker threads (--scheduler threads)")
    parser.add_argument("--torch-threads", type=int, default=None, help="torch threads per worker")
    parser.add_argument("--port-file", help="write the bound port to this file once listening (for scripts)")
    parser.add_argument("--log-level", default="INFO")


def limits_from_args(args: argparse.Namespace) -> Limits:
    if not 0 <= args.port <= 65535:
        raise ValueError(f"--port must be within 0..65535 (0: any free port), got {args.port}")
    for name in ("max_streams", "max_streams_per_client", "max_message_bytes"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("max_session_s", "idle_timeout_s", "catch_up_lag_s", "max_lag_s", "max_backlog_s"):
        value = getattr(args, name)
        if not value > 0:  # NaN too
            raise ValueError(f"--{name.replace('_', '-')} must be > 0")
    return Limits(max_streams=args.max_streams, max_streams_per_client=args.max_streams_per_client,
                  max_message_bytes=args.max_message_bytes, max_session_s=args.max_session_s,
                  idle_timeout_s=args.idle_timeout_s, catchup_lag_s=args.catch_up_lag_s, max_lag_s=args.max_lag_s,
                  max_backlog_s=args.max_backlog_s)


def ssl_context(certfile: str | None, keyfile: str | None) -> ssl_lib.SSLContext | None:
    if not certfile and not keyfile:
        return None
    if not (certfile and keyfile):
        raise ValueError("--certfile and --keyfile go together")
    ctx = ssl_lib.SSLContext(ssl_lib.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(certfile, keyfile)
    return ctx


def default_model(pair: str = "en") -> str:
    """Live captions of real speech: the default English recognition model, or the pair's translation model (the
    rule every command follows)."""
    from streamst.commands.common import default_model as rule

    return rule("asr") if pair == "en" else rule("st", pair)


def make_scheduler(args: argparse.Namespace):
    """The model scheduler `--scheduler` names (batching by default)."""
    if args.scheduler == "threads":
        from streamst.server.scheduler import Scheduler

        return Scheduler(workers=args.workers, torch_threads=args.torch_threads)
    from streamst.server.batching import BatchingScheduler

    return BatchingScheduler(torch_threads=args.torch_threads, max_batch=args.max_batch)


def measure_capacity(server, args: argparse.Namespace) -> None:
    """The first capacity figure: the bundled sample through one session with the server's defaults, on the
    worker's thread settings (later steps of real streams replace it)."""
    from streamst.server.app import _make_session
    from streamst.server.capacity import calibrate
    from streamst.server.protocol import StreamConfig

    def config(rate: int, channels: int) -> StreamConfig:
        return StreamConfig(sample_rate=rate, encoding="f32le", channels=channels, task=None, source_lang=None,
                            target_lang=None, policy=args.policy, chunk_ms=args.chunk_ms, beam=1)

    if args.torch_threads:
        import torch

        torch.set_num_threads(args.torch_threads)
    calibrate(server.meter, server.model, _make_session, config)


def run(args: argparse.Namespace) -> int:
    from streamst.checkpoint import load_model
    from streamst.policies import parse_policy
    from streamst.server.app import ServerConfig, StreamServer, default_origins, serve_forever

    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s")
    limits = limits_from_args(args)
    parse_policy(args.policy)  # a bad default policy fails here, before the model loads
    tls = ssl_context(args.certfile, args.keyfile)
    if args.host not in LOOPBACK and tls is None:
        print("streamst serve: warning: listening beyond loopback without TLS; browsers only give the "
              "microphone to https:// pages (or localhost)", file=sys.stderr)
    cascade = None
    if args.cascade:
        from streamst.cascade import Cascade, text_translator

        cascade = Cascade(text_translator(args.cascade))
        if args.pair not in ("en", f"en-{cascade.target_lang}"):
            raise ValueError(f"--cascade {args.cascade} translates into {cascade.target_lang}, not --pair {args.pair}")
    model_name = args.model or default_model("en" if cascade else args.pair)
    model = load_model(model_name)
    origins = None if "*" in args.allow_origin else default_origins(args.host, args.port) | set(args.allow_origin)
    name = display_name(model_name) + (f"+{args.cascade}" if cascade else "")
    config = ServerConfig(model_name=name, default_policy=args.policy, chunk_ms=args.chunk_ms, limits=limits,
                          token=args.token or None, allowed_origins=origins, cascade=cascade)
    scheduler = make_scheduler(args)
    server = StreamServer(model, config, scheduler)
    if limits.max_streams is None:
        measure_capacity(server, args)

    def ready(port: int) -> None:
        if args.port == 0 and origins is not None:
            origins.update(default_origins(args.host, port))
        scheme = "https" if tls else "http"
        streams = (f"at most {limits.max_streams} streams" if limits.max_streams is not None
                   else f"capacity {server.meter.describe()}")
        print(f"streamst serve: {scheme}://{args.host}:{port}/ (WebSocket on the same port), "
              f"model {config.model_name}, {streams}", file=sys.stderr, flush=True)
        if args.port_file:
            tmp = Path(args.port_file + ".tmp")
            tmp.write_text(str(port))
            tmp.replace(args.port_file)

    try:
        asyncio.run(serve_forever(server, args.host, args.port, tls, ready))
    finally:
        scheduler.close()
    return 0


def display_name(model: str) -> str:
    """The name a client sees: a shipped model's own name ("whisper-tiny.en-causal"), a file's stem, a folder's
    name."""
    path = Path(model)
    return path.stem if path.suffix in (".pt", ".onnx") else path.name
