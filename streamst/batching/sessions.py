"""One chunk step for many `Session`s at once: the same phases as `Session._step`, with the encoder run as one
batch over every stream that has a chunk, and greedy decoding as one batch over every stream whose policy
decides now. Policies run per stream, on each stream's own view, so the committed words are those of the
stream alone.

Models that declare `batches` run `encode_batch` / `decode_batch`; the others (the ONNX backend, fairseq's
re-encoding S2T) and beam search fall back to each stream's own calls. A failure in one stream's work is that
stream's result; the others still get theirs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from streamst.events import Event
from streamst.session import DecodeRequest, Session


@dataclass
class _Work:
    session: Session
    audio: np.ndarray
    final: bool
    shared_s: float = 0.0  # this stream's share of batched compute so far
    request: DecodeRequest | None = None
    hyp: Any = None
    decoded_state: Any = None  # the model state `decode` returned
    error: BaseException | None = None
    events: list[Event] = field(default_factory=list)


def step_sessions(rows: list[tuple[Session, np.ndarray, bool]], clock=time.perf_counter) -> list[list[Event] | BaseException]:
    """Run one (audio, final) chunk through each session (distinct sessions); each row's events or its exception."""
    work = [_Work(s, a, f) for s, a, f in rows]
    if len(work) == 1:  # nothing to share: exactly the session's own step
        w = work[0]
        try:
            return [w.session._step(w.audio, w.final)]
        except Exception as e:  # noqa: BLE001 - returned to this stream
            return [e]
    for group in _by_model(work):
        _encode(group, clock)
    for w in work:
        if w.error is None:
            try:
                w.request = w.session.decode_request(w.final)
            except Exception as e:  # noqa: BLE001
                w.error = e
    for group in _by_model([w for w in work if w.error is None and w.request is not None]):
        _decode(group, clock)
    for w in work:
        if w.error is None:
            t0 = clock()
            try:
                if w.request is not None:
                    w.events = w.session.commit(w.request, w.hyp, w.decoded_state, w.final, t0, w.shared_s)
            except Exception as e:  # noqa: BLE001
                w.error = e
            w.session.compute_s += w.shared_s + clock() - t0
    return [w.error if w.error is not None else w.events for w in work]


def _by_model(work: list[_Work]) -> list[list[_Work]]:
    groups: dict[int, list[_Work]] = {}
    for w in work:
        groups.setdefault(id(w.session.model), []).append(w)
    return list(groups.values())


def _encode(group: list[_Work], clock) -> None:
    model = group[0].session.model
    audios = [torch.from_numpy(np.require(w.audio, np.float32, ['C', 'W'])) for w in group]
    if len(group) > 1 and model.batches:
        t0 = clock()
        try:
            outs = model.encode_batch(audios, [w.session.model_state for w in group], [w.final for w in group])
        except Exception:  # noqa: BLE001 - find the stream at fault by running each alone
            outs = None
        if outs is not None:
            share = (clock() - t0) / len(group)
            for w, (frames, state) in zip(group, outs):
                w.shared_s += share
                _absorb(w, frames, state)
            return
    for w, audio in zip(group, audios):
        t0 = clock()
        try:
            frames, state = model.encode(audio, w.session.model_state, w.final)
        except Exception as e:  # noqa: BLE001
            w.error = e
            continue
        finally:
            w.shared_s += clock() - t0
        _absorb(w, frames, state)


def _absorb(w: _Work, frames: torch.Tensor, state: Any) -> None:
    try:
        w.session.absorb(w.audio, frames, state)
    except Exception as e:  # noqa: BLE001
        w.error = e


def _decode(group: list[_Work], clock) -> None:
    model = group[0].session.model
    greedy = [w for w in group if w.request.beam == 1] if model.batches else []
    if len(greedy) > 1:
        t0 = clock()
        try:
            rs = [w.request for w in greedy]
            outs = model.decode_batch([r.memory for r in rs], [r.prefix for r in rs], [r.state for r in rs],
                                      [r.max_tokens for r in rs], [r.stop for r in rs])
        except Exception:  # noqa: BLE001 - find the stream at fault by decoding each alone
            outs = None
        if outs is not None:
            share = (clock() - t0) / len(greedy)
            for w, (hyp, state) in zip(greedy, outs):
                w.hyp, w.decoded_state, w.shared_s = hyp, state, w.shared_s + share
    for w in group:
        if w.hyp is not None:
            continue
        t0 = clock()
        try:
            r = w.request
            w.hyp, w.decoded_state = model.decode(r.memory, r.prefix, r.state, beam=r.beam, max_tokens=r.max_tokens,
                                                  stop=r.stop)
        except Exception as e:  # noqa: BLE001
            w.error = e
        w.shared_s += clock() - t0
