"""The batching scheduler: many streams share the tiny model through stacked encoder states and batched greedy
decoding, and every stream commits exactly the words it commits alone in a plain `Session`."""
from __future__ import annotations

import asyncio
import gc
import weakref
from dataclasses import dataclass
from typing import Any

import numpy as np
import pytest
import torch

from streamst.audio import read_audio
from streamst.batching.steps import encode_many, greedy_many
from streamst.decoding import decode
from streamst.events import Word
from streamst.policies import parse_policy
from streamst.policies.base import PolicyBase
from streamst.server.batching import BatchingScheduler
from streamst.session import Session

POLICIES = ["waitk:k=2", "la", "edatt", "alignatt", "streamatt", "offline"]


@pytest.fixture(scope="module")
def clips(tiny_corpus) -> list[np.ndarray]:
    """Four different utterances, each led by a different stretch of silence (so the streams differ in age)."""
    out, seen = [], set()
    for wav, text in tiny_corpus:
        if text in seen:
            continue
        seen.add(text)
        audio = read_audio(wav)[0][:, 0]
        out.append(np.concatenate([np.zeros(1700 * len(out), np.float32), audio]))
        if len(out) == 4:
            break
    return out


def pieces(audio: np.ndarray, size: int) -> list[np.ndarray]:
    return [audio[i:i + size] for i in range(0, len(audio), size)]


def words(events: list) -> list[str]:
    return [e.text for e in events if isinstance(e, Word)]


def alone(model: Any, policy: str, audio: np.ndarray, size: int, beam: int = 1) -> list[str]:
    session = Session(model, parse_policy(policy), beam=beam)
    events = []
    for p in pieces(audio, size):
        events += session.push(p)
    return words(events + session.finish())


async def through(scheduler: BatchingScheduler, session: Session, audio: np.ndarray, size: int) -> list[str]:
    events = []
    for p in pieces(audio, size):
        events += await scheduler.push(session, p)
        await asyncio.sleep(0)
    return words(events + await scheduler.finish(session))


# ------------------------------------------------------------------------------------------ the batched steps


def test_batched_encoder_and_greedy_rows_equal_single_stream_calls(tiny_model, clips):
    """Streams of different ages in one encoder batch, then one greedy batch with different memories and prefixes."""
    m = tiny_model
    states = [m.init_state() for _ in clips]
    alone_states = [m.init_state() for _ in clips]
    memories: list[list[torch.Tensor]] = [[] for _ in clips]
    for step in range(12):
        audios = [torch.from_numpy(c[(step + i) * 5120:(step + i + 1) * 5120].copy()) for i, c in enumerate(clips)]
        outs = encode_many(m, audios, states, [False] * len(clips))
        for i, (frames, state) in enumerate(outs):
            ref, alone_states[i] = m.encode(audios[i], alone_states[i])
            assert frames.shape == ref.shape
            torch.testing.assert_close(frames, ref, atol=1e-5, rtol=1e-5)
            states[i] = state
            memories[i].append(frames)
    assert len({s.encoder.frames for s in states}) > 1  # the rows really were of different ages
    mems = [torch.cat(f) for f in memories]
    prefixes = [[], [5, 9], [7], [4, 8, 12, 6]]
    budgets = [0, 3, 12, 20]
    tok = m.tokenizer
    hyps, _ = greedy_many(m.net.decoder, mems, prefixes, tok.bos, tok.eos, budgets)
    for mem, prefix, budget, hyp in zip(mems, prefixes, budgets, hyps):
        ref = decode(m.net.decoder, mem, prefix, tok.bos, tok.eos, beam=1, max_tokens=budget)
        assert (hyp.tokens, hyp.ended) == (ref.tokens, ref.ended)
        torch.testing.assert_close(hyp.attention, ref.attention, atol=1e-5, rtol=1e-5)
        if prefix:
            torch.testing.assert_close(hyp.prefix_attention, ref.prefix_attention, atol=1e-5, rtol=1e-5)
        else:
            assert hyp.prefix_attention is None
    assert any(h.tokens for h in hyps)


# ------------------------------------------------------------------------------------------ the scheduler


@pytest.mark.parametrize("policy", POLICIES)
def test_concurrent_streams_commit_the_words_of_a_plain_session(tiny_model, clips, policy):
    sizes = [5120, 3000, 7000, 1234]  # different piece sizes: some pushes complete no chunk, some two
    expected = [alone(tiny_model, policy, c, size) for c, size in zip(clips, sizes)]

    async def main():
        scheduler = BatchingScheduler()
        try:
            sessions = [Session(tiny_model, parse_policy(policy)) for _ in clips]
            got = await asyncio.gather(*(through(scheduler, s, c, size) for s, c, size in zip(sessions, clips, sizes)))
            return got, max(scheduler.batch_sizes), scheduler.pending
        finally:
            scheduler.close()

    got, biggest, pending = asyncio.run(main())
    assert got == expected
    assert any(expected)
    assert biggest > 1  # the streams really did share batched steps
    assert pending == 0


def test_beam_search_streams_fall_back_to_their_own_decoder_in_a_mixed_batch(tiny_model, clips):
    expected = [alone(tiny_model, "alignatt", c, 5120, beam=2 if i % 2 else 1) for i, c in enumerate(clips)]

    async def main():
        scheduler = BatchingScheduler()
        try:
            sessions = [Session(tiny_model, parse_policy("alignatt"), beam=2 if i % 2 else 1) for i in range(len(clips))]
            return await asyncio.gather(*(through(scheduler, s, c, 5120) for s, c in zip(sessions, clips)))
        finally:
            scheduler.close()

    assert asyncio.run(main()) == expected


@dataclass(frozen=True)
class FailsAtChunk(PolicyBase):
    """A real policy (wait-k) that raises once the stream has read `chunk` chunks: a bug in one stream."""

    chunk: int
    name: str = "fails"

    def init_state(self) -> Any:
        return parse_policy("waitk:k=2").init_state()

    def decide(self, view, state):
        if view.chunks >= self.chunk:
            raise RuntimeError("policy bug in this stream")
        return parse_policy("waitk:k=2").decide(view, state)

    def spec(self) -> str:
        return "fails"


def test_an_error_in_one_stream_reaches_that_stream_only(tiny_model, clips):
    expected = [alone(tiny_model, "waitk:k=2", c, 5120) for c in clips[1:3]]

    async def main():
        scheduler = BatchingScheduler()
        try:
            bad = Session(tiny_model, FailsAtChunk(3))
            bad_audio = Session(tiny_model, parse_policy("waitk:k=2"))
            good = [Session(tiny_model, parse_policy("waitk:k=2")) for _ in clips[1:3]]

            async def broken_audio():
                await scheduler.push(bad_audio, clips[3][:5120])
                await scheduler.push(bad_audio, b"\x00\x01\x02")  # not whole float32 samples

            return await asyncio.gather(through(scheduler, bad, clips[0], 5120), broken_audio(),
                                        *(through(scheduler, s, c, 5120) for s, c in zip(good, clips[1:3])),
                                        return_exceptions=True), max(scheduler.batch_sizes)
        finally:
            scheduler.close()

    (policy_error, audio_error, *good), biggest = asyncio.run(main())
    assert isinstance(policy_error, RuntimeError) and "policy bug" in str(policy_error)
    assert isinstance(audio_error, ValueError)
    assert good == expected
    assert biggest > 1


def test_states_are_freed_at_finish_and_at_disconnect(tiny_model, clips):
    async def main():
        scheduler = BatchingScheduler()
        try:
            done = Session(tiny_model, parse_policy("waitk:k=2"))
            gone = Session(tiny_model, parse_policy("waitk:k=2"))
            other = Session(tiny_model, parse_policy("waitk:k=2"))
            refs = [weakref.ref(done), weakref.ref(gone)]
            await through(scheduler, done, clips[0], 5120)
            long_audio = np.tile(clips[1], 4)  # one push of many chunks, cut off by a disconnect
            task = asyncio.create_task(scheduler.push(gone, long_audio))
            other_words = asyncio.create_task(through(scheduler, other, clips[2], 5120))
            while gone.chunks == 0:
                await asyncio.sleep(0.005)
            task.cancel()
            read = gone.chunks
            del done, gone, task
            result = await other_words
            while scheduler.pending:
                await asyncio.sleep(0.005)
            gc.collect()
            return [r() for r in refs], read, len(long_audio) // 5120, result, scheduler.pending
        finally:
            scheduler.close()

    alive, read, total, other_words, pending = asyncio.run(main())
    assert alive == [None, None]  # nothing in the scheduler holds a finished or disconnected stream
    assert read < total  # the disconnected stream's remaining chunks were never run
    assert other_words == alone(tiny_model, "waitk:k=2", clips[2], 5120)
    assert pending == 0


# ------------------------------------------------------------------------------------------ through the server


async def _serve(model: Any, scheduler: Any, policy: str, made: list):
    from streamst.server.app import ServerConfig, StreamServer, _make_session

    def make_session(m, config):
        session = _make_session(m, config)
        made.append(weakref.ref(session))
        return session

    server = StreamServer(model, ServerConfig(model_name="tiny", default_policy=policy), scheduler, make_session)
    ws_server = await server.start("127.0.0.1", 0)
    return server, f"ws://127.0.0.1:{next(iter(ws_server.sockets)).getsockname()[1]}/"


@pytest.mark.parametrize("kind", ["batch", "threads"])
def test_server_streams_get_their_own_words_with_either_scheduler(tiny_model, clips, kind):
    from streamst.server.client import stream_audio
    from streamst.server.scheduler import Scheduler

    expected = [alone(tiny_model, "alignatt", c, 5120) for c in clips[:3]]
    config = {"sample_rate": 16000, "encoding": "f32le", "channels": 1}

    async def main():
        scheduler = BatchingScheduler() if kind == "batch" else Scheduler()
        made: list = []
        server, url = await _serve(tiny_model, scheduler, "alignatt", made)
        try:
            results = await asyncio.gather(*(stream_audio(url, [p.tobytes() for p in pieces(c, 5120)], config)
                                             for c in clips[:3]))
        finally:
            await server.shutdown()
            scheduler.close()
        gc.collect()
        return [[w["text"] for w in r.words] for r in results], [r() for r in made]

    got, alive = asyncio.run(main())
    assert got == expected
    assert alive == [None] * 3  # finished streams leave nothing behind


def test_a_disconnect_frees_the_stream_while_the_others_go_on(tiny_model, clips):
    from websockets.asyncio.client import connect

    from streamst.server.client import stream_audio

    config = {"type": "config", "sample_rate": 16000, "encoding": "f32le", "channels": 1}

    async def main():
        scheduler = BatchingScheduler()
        made: list = []
        server, url = await _serve(tiny_model, scheduler, "waitk:k=2", made)
        try:
            other = asyncio.create_task(stream_audio(url, [p.tobytes() for p in pieces(clips[1], 5120)],
                                                     {k: v for k, v in config.items() if k != "type"}))
            ws = await connect(url)
            await ws.send(__import__("json").dumps(config))
            await ws.recv()  # ready
            await ws.send(np.tile(clips[0], 3).tobytes())  # many chunks at once, then the client vanishes
            while not made or made[0]() is None or made[0]().chunks == 0:
                await asyncio.sleep(0.005)
            ws.transport.abort()
            result = await other
            for _ in range(400):
                gc.collect()
                if made[0]() is None:
                    break
                await asyncio.sleep(0.01)
            return made[0]() is None, [w["text"] for w in result.words], scheduler.pending
        finally:
            await server.shutdown()
            scheduler.close()

    freed, other_words, pending = asyncio.run(main())
    assert freed
    assert other_words == alone(tiny_model, "waitk:k=2", clips[1], 5120)
    assert pending == 0


def test_models_whose_states_do_not_stack_run_their_streams_one_by_one_in_the_same_rounds(tiny_model, clips, tmp_path):
    """The ONNX backend declares no batch calls (`batches` False): its streams take their own calls, next to torch
    streams that are batched, and every stream still gets its own words."""
    from streamst.onnx_backend import load_onnx_model
    from streamst.onnx_export import export_onnx

    onnx_model = load_onnx_model(export_onnx(tiny_model, tmp_path / "onnx"))
    models = [tiny_model, onnx_model, tiny_model, onnx_model]
    expected = [alone(m, "alignatt", c, 5120) for m, c in zip(models, clips)]

    async def main():
        scheduler = BatchingScheduler()
        try:
            sessions = [Session(m, parse_policy("alignatt")) for m in models]
            got = await asyncio.gather(*(through(scheduler, s, c, 5120) for s, c in zip(sessions, clips)))
            return got, max(scheduler.batch_sizes)
        finally:
            scheduler.close()

    got, biggest = asyncio.run(main())
    assert got == expected
    assert biggest == 4
