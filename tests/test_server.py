"""The server end to end: `streamst serve` in a subprocess, real clients over loopback, a small real model."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest


def tiny_model(request: pytest.FixtureRequest, tmp_dir: Path) -> Path:
    """The tiny model trained by conftest (tmp_dir is unused; kept for the callers' signature)."""
    return Path(request.getfixturevalue("tiny_model_path"))


def tiny_wavs(request: pytest.FixtureRequest, tmp_dir: Path, n: int = 3) -> list[Path]:
    """The first n wavs of conftest's tiny corpus."""
    return [Path(wav) for wav, _ in request.getfixturevalue("tiny_corpus")[:n]]


def offline_words(model_path: Path, wav: Path, policy: str, chunk_ms: int = 320) -> list[str]:
    """Committed words of the file pushed straight into a Session (the reference for the server)."""
    from streamst.audio import AudioFormat
    from streamst.checkpoint import load_model
    from streamst.policies import parse_policy
    from streamst.server.replay import read_audio
    from streamst.session import Session

    audio, rate = read_audio(wav)
    session = Session(load_model(str(model_path)), parse_policy(policy),
                      AudioFormat(sample_rate=rate, channels=audio.shape[1], encoding="f32le"), chunk_ms=chunk_ms)
    events = session.push(audio) + session.finish()
    return [e.text for e in events if hasattr(e, "emitted_ms")]


class ServeProcess:
    """`streamst serve` on a free loopback port, in a subprocess."""

    def __init__(self, tmp_dir: Path, model: Path, *args: str):
        port_file = tmp_dir / f"port-{time.monotonic_ns()}"
        self.log_path = tmp_dir / f"serve-{time.monotonic_ns()}.log"
        self.log = open(self.log_path, "w")
        if "--max-streams" not in args:  # admission by measured capacity is tests/test_overload.py's subject
            args = (*args, "--max-streams", "16")
        cmd = [sys.executable, "-m", "streamst.cli", "serve", "--model", str(model), "--port", "0",
               "--port-file", str(port_file), *args]
        self.proc = subprocess.Popen(cmd, stdout=self.log, stderr=subprocess.STDOUT, env={**os.environ})
        deadline = time.monotonic() + 120
        while not port_file.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"streamst serve did not start:\n{self.output()}")
            time.sleep(0.1)
        self.port = int(port_file.read_text())
        self.url = f"ws://127.0.0.1:{self.port}/"

    def output(self) -> str:
        return self.log_path.read_text()

    def terminate(self, timeout: float = 60) -> int:
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
            self.log.close()


# ------------------------------------------------------------------------------------------------ tests

import asyncio  # noqa: E402
import json  # noqa: E402
import urllib.request  # noqa: E402

from websockets.asyncio.client import connect  # noqa: E402
from websockets.exceptions import ConnectionClosed, InvalidStatus  # noqa: E402

from streamst.server.client import stream_audio  # noqa: E402
from streamst.server.replay import read_audio, stream_file  # noqa: E402

TOKEN = "t0ken"
POLICY = "waitk:k=2"


@pytest.fixture(scope="module")
def model_path(request, tmp_path_factory) -> Path:
    return tiny_model(request, tmp_path_factory.mktemp("model"))


@pytest.fixture(scope="module")
def wavs(request, tmp_path_factory) -> list[Path]:
    return tiny_wavs(request, tmp_path_factory.mktemp("wavs"))


@pytest.fixture(scope="module")
def server(model_path, tmp_path_factory):
    # no catch-up: the words then equal a lone Session's exactly, however fast the files are sent
    srv = ServeProcess(tmp_path_factory.mktemp("serve"), model_path, "--policy", POLICY, "--token", TOKEN,
                       "--max-streams", "6", "--max-streams-per-client", "6", "--catch-up-lag-s", "inf")
    yield srv
    assert srv.terminate() == 0, srv.output()


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 120))


async def open_stream(url: str, config: dict | None = None, token: str | None = TOKEN, **kw):
    headers = {"Authorization": f"Bearer {token}"} if token else None
    ws = await connect(url, additional_headers=headers, **kw)
    with contextlib.suppress(ConnectionClosed):  # a refused client may be closed before its config goes out
        await ws.send(json.dumps({"type": "config", **(config or {})}))
    return ws, json.loads(await ws.recv())


async def messages_until_close(ws) -> list[dict]:
    out = []
    try:
        async for raw in ws:
            out.append(json.loads(raw))
    except ConnectionClosed:
        pass
    return out


def test_concurrent_clients_get_the_offline_words(server, model_path, wavs):
    expected = [offline_words(model_path, w, POLICY) for w in wavs]

    async def main():
        return await asyncio.gather(*(stream_file(server.url, w, token=TOKEN, piece_ms=70 + 30 * i)
                                      for i, w in enumerate(wavs + wavs)))

    results = run(main())
    for result, words in zip(results, expected + expected):
        assert [w["text"] for w in result.words] == words
        assert result.ready["protocol"] == 1 and result.ready["policy"] == POLICY
        assert result.done["reason"] == "eos" and result.done["words"] == len(words)
        assert result.done["stats"]["audio_s"] > 1.0 and result.close_code == 1000
        for w in result.words:
            assert set(w) == {"text", "start_ms", "end_ms", "emitted_ms", "compute_ms"}
    if any(expected):
        assert any(words for words in expected)


def test_markers_come_back_in_order_after_their_audio(server, wavs):
    audio, rate = read_audio(wavs[0])
    step = rate // 10
    pieces = [audio[i:i + step].astype("<f4").tobytes() for i in range(0, len(audio), step)]
    order = []

    def seen(msg):
        if msg["type"] in ("marker", "done"):
            order.append(msg.get("id", msg["type"]))

    result = run(stream_audio(server.url, pieces, {"sample_rate": rate, "encoding": "f32le"}, token=TOKEN,
                              marker_every=3, on_message=seen))
    assert order == list(range(3, len(pieces) + 1, 3)) + ["done"]
    assert result.done is not None


def test_unauthorized_before_any_model_work(server):
    async def main(token):
        ws, first = await open_stream(server.url, token=token)
        rest = await messages_until_close(ws)
        return first, rest, ws.close_code

    for token in (None, "wrong"):
        first, rest, code = run(main(token))
        assert first["type"] == "error" and first["error"] == "unauthorized" and first["fatal"]
        assert rest == [] and code == 4003
    # ?token= works too (browsers cannot set headers)
    first, _, _ = run(main_query(server))
    assert first["type"] == "ready"


async def main_query(server):
    ws, first = await open_stream(server.url + f"?token={TOKEN}", token=None)
    await ws.close()
    return first, [], None


def test_typed_errors_and_close_codes_over_the_wire(server):
    async def bad_config():
        ws, first = await open_stream(server.url, {"sample_rate": 5, "policy": "waitk:k=2"})
        await messages_until_close(ws)
        return first, ws.close_code

    first, code = run(bad_config())
    assert first["error"] == "bad_config" and "sample_rate" in first["message"] and code == 4001

    async def bad_audio(frame: bytes):
        ws, ready = await open_stream(server.url)
        assert ready["type"] == "ready"
        await ws.send(frame)
        msgs = await messages_until_close(ws)
        return msgs, ws.close_code

    msgs, code = run(bad_audio(b"\0" * 641))
    assert msgs[-1]["error"] == "bad_audio" and code == 4002
    msgs, code = run(bad_audio(b"\0" * (ready_limit() + 2)))
    assert msgs[-1]["error"] == "bad_audio" and "over the limit" in msgs[-1]["message"] and code == 4002
    msgs, code = run(bad_audio(b"\0" * (2 * ready_limit() + 2)))  # beyond the hard cap: the library closes
    assert code == 1009


def ready_limit() -> int:
    from streamst.server.protocol import Limits

    return Limits().max_message_bytes


def test_mid_stream_config_and_soft_errors(server, wavs):
    async def main():
        ws, ready = await open_stream(server.url, {"sample_rate": 16000, "encoding": "pcm_s16le"})
        await ws.send(b"\0\0" * 8000)
        await ws.send(json.dumps({"type": "config", "policy": "waitk:k=5"}))
        await ws.send(json.dumps({"type": "config", "sample_rate": 8000}))
        await ws.send("not json")
        await ws.send(json.dumps({"type": "eos"}))
        return await messages_until_close(ws), ws.close_code

    msgs, code = run(main())
    kinds = [m["type"] for m in msgs if m["type"] not in ("partial", "stable")]
    # errors answer at once; `configured` comes once the audio before it went through the session
    assert sorted(kinds[:3]) == ["configured", "error", "error"] and kinds[3:] == ["done"]
    assert msgs[[m["type"] for m in msgs].index("configured")]["policy"] == "waitk:k=5"
    assert all(not m["fatal"] for m in msgs if m["type"] == "error") and code == 1000


def test_busy_beyond_max_streams_and_a_disconnect_frees_the_slot(server):
    async def main():
        held = []
        for _ in range(6):
            ws, ready = await open_stream(server.url)
            assert ready["type"] == "ready"
            held.append(ws)
        ws, refused = await open_stream(server.url)
        await messages_until_close(ws)
        busy_code = ws.close_code
        held[0].transport.abort()  # vanish without a close handshake
        await asyncio.sleep(0.5)
        ws, again = await open_stream(server.url)
        for w in held[1:] + [ws]:
            await w.close()
        return refused, busy_code, again

    refused, code, again = run(main())
    assert refused["error"] == "busy" and refused["retry_after_s"] > 0 and code == 4004
    assert again["type"] == "ready"


def test_origin_allow_list_and_the_page(server):
    async def main():
        await connect(server.url, origin="http://evil.example", additional_headers={"Authorization": "Bearer x"})

    with pytest.raises(InvalidStatus) as e:
        run(main())
    assert e.value.response.status_code == 403
    page = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/", timeout=10).read().decode()
    assert "app.js" in page
    js = urllib.request.urlopen(f"http://127.0.0.1:{server.port}/worklet.js", timeout=10)
    assert "javascript" in js.headers["Content-Type"]
    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(f"http://127.0.0.1:{server.port}/../pyproject.toml", timeout=10)


# SIGTERM flushing every open stream: tests/test_reliability.py::test_sigterm_flushes_every_open_stream


def test_idle_timeout_flushes_and_closes(model_path, tmp_path):
    srv = ServeProcess(tmp_path, model_path, "--idle-timeout-s", "1")
    try:
        async def main():
            ws, ready = await open_stream(srv.url, token=None)
            await ws.send(b"\0\0" * 16000)
            return await messages_until_close(ws), ws.close_code

        msgs, code = run(main())
        errors = [m for m in msgs if m["type"] == "error"]  # words of the second of audio may come first
        assert [e["error"] for e in errors] == ["timeout"]
        assert msgs[-1]["type"] == "done" and msgs[-1]["reason"] == "timeout" and code == 4005
    finally:
        assert srv.terminate() == 0


def test_mic_demo_with_a_file_source_local_and_remote(server, model_path, wavs, tmp_path):
    import io

    from streamst.captions import write_captions
    from streamst.checkpoint import load_model
    from streamst.demo_mic import CaptionLine, FileSource, caption_local, caption_remote

    expected = offline_words(model_path, wavs[1], POLICY)
    out = io.StringIO()
    line = CaptionLine(out, width=400)
    words = caption_local(FileSource(wavs[1]), load_model(str(model_path)), POLICY, 320, line.update)
    assert [w["text"] for w in words] == expected
    assert out.getvalue().startswith("\r") and out.getvalue().rstrip().endswith(" ".join(expected)[-300:])
    remote = caption_remote(FileSource(wavs[1]), server.url, {"policy": POLICY}, TOKEN, lambda m: None)
    assert [w["text"] for w in remote] == expected
    srt = write_captions(tmp_path / "mic.srt", remote).read_text()
    assert " ".join(expected) == " ".join(l for l in srt.splitlines() if l and "-->" not in l and not l.isdigit())
