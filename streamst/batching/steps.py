"""Batched model steps for many streams of one `StreamingSpeechModel`, each row computing what its stream's own
`model.encode` / `model.decode` (greedy) would.

Encoder: the fixed-size caches of every stream with new audio are stacked along the batch dimension and go
through `Encoder.step_frames`, the one encoder step (a lone stream's `Encoder.step` is a batch of one of it, and
the ONNX export writes it): slots before a young stream's start are masked, so streams of any ages share a call.
Decoder: the forced prefixes go through in one right-padded pass (causal attention never looks at the padding
after a real token), memories are right-padded and masked, then every row continues greedily, one batched call
per token, with its own position; finished rows leave the batch. Each row keeps the cross-attention of its
tokens, so the attention policies work as on a single stream.

Rows agree with the single-stream calls up to float rounding (padding changes the order of a few sums); the
committed words are the same in tests/test_batching.py.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from streamst.decoder_batch import SlotDecoder
from streamst.decoding import Family, StopRule, StopTracker, greedy
from streamst.features import normalize, stream_features
from streamst.memory_cache import MemoryKV, memory_kv
from streamst.model import Decoder, Encoder, EncoderState, ready_frames
from streamst.speech_model import Hypothesis


@torch.inference_mode()
def encode_many(model: Any, audios: list[Tensor], states: list[Any], finals: list[bool]) -> list[tuple[Tensor, Any]]:
    """`model.encode(audio, state, final)` for every row, with the encoder run as one batch per chunk."""
    from streamst.streaming_model import StreamState

    feats, fstates = [], []
    for audio, state in zip(audios, states):
        f, fs = stream_features(audio, state.features)
        feats.append(normalize(f, model.mean, model.std).unsqueeze(0))
        fstates.append(fs)
    outs = encoder_step_many(model.net.encoder, feats, [s.encoder for s in states], model.chunk_frames,
                             model.left_frames, finals)
    return [(frames, StreamState(fs, es, st.memory)) for (frames, es), fs, st in zip(outs, fstates, states)]


def encoder_step_many(encoder: Encoder, feats: list[Tensor], states: list[EncoderState], chunk: int, left: int,
                      finals: list[bool]) -> list[tuple[Tensor, EncoderState]]:
    """`Encoder.step` for many streams: feats [1, F_i, mels] each; returns frames [n_i, d] and the new states.

    The caches have a fixed size, so they stack as they are and rows that produce the same number of frames
    share one `Encoder.step_frames` call; a row's new state owns its tensors (nothing keeps the batch alive once
    the stream's state is dropped).
    """
    out: list[tuple[Tensor, EncoderState] | None] = [None] * len(feats)
    groups: dict[int, list[int]] = {}
    pendings = []
    d = encoder.cfg.d_model
    for r, (f, st, final) in enumerate(zip(feats, states, finals)):
        pending = torch.cat([st.pending, f], dim=1)
        pendings.append(pending)
        n = ready_frames(pending.shape[1], chunk, final)
        if n == 0:
            out[r] = (pending.new_zeros(0, d), EncoderState(st.sub, st.kv, st.conv, pending, st.frames, st.extra))
        else:
            groups.setdefault(n, []).append(r)
    for n, rows in groups.items():
        group = [states[r] for r in rows]
        frames = torch.tensor([s.frames for s in group])
        x, sub1, sub2, kv, conv = encoder.step_frames(
            torch.cat([pendings[r][:, : n * 4] for r in rows]),
            (torch.cat([s.sub[0] for s in group]), torch.cat([s.sub[1] for s in group])),
            torch.cat([s.kv for s in group], dim=1), torch.cat([s.conv for s in group], dim=1), frames, chunk, left)
        for i, r in enumerate(rows):
            rest = pendings[r][:, :0] if finals[r] else pendings[r][:, n * 4:]
            st = EncoderState((sub1[i:i + 1].clone(), sub2[i:i + 1].clone()), kv[:, i:i + 1].clone(),
                              conv[:, i:i + 1].clone(), rest.clone(), states[r].frames + n, states[r].extra)
            out[r] = (x[i].clone(), st)
    return out  # type: ignore[return-value]


@torch.inference_mode()
def greedy_many(decoder: Decoder, memories: list[Tensor], prefixes: list[list[int]], bos: int, eos: int,
                max_tokens: list[int], stops: list[StopRule | None] | None = None,
                word_start_ids: frozenset[int] = frozenset(),
                caches: list[MemoryKV | None] | None = None) -> tuple[list[Hypothesis], list[MemoryKV]]:
    """`decoding.decode(..., beam=1)` for every (memory [S_i, d], prefix, budget, stop rule) row, as one batch:
    the one greedy loop over the slot-buffer decoder. `caches` are the rows' memory keys/values so far (a stream's
    model state keeps them); the extended ones come back with the hypotheses."""
    caches = [memory_kv(decoder, m, c) for m, c in zip(memories, caches or [None] * len(memories))]
    run = SlotDecoder(decoder, [c.kv for c in caches], prefixes, bos, max(max_tokens))
    stops = stops or [None] * len(memories)
    hyps = greedy(run.logits, run.first_rows, run.step, max_tokens,
                  [StopTracker(s, word_start_ids) for s in stops], Family(eos))
    for hyp, pre in zip(hyps, run.prefix_attention):
        hyp.prefix_attention = pre
    return hyps, caches
