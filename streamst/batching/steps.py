"""Batched model steps for many streams of one `StreamingSpeechModel`, each row computing what its stream's own
`model.encode` / `model.decode` (greedy) would.

Encoder: the caches of every stream with new audio are stacked along the batch dimension and go through the
trained Conformer blocks in one call per chunk. Streams younger than the attention window have shorter key/value
caches; they are left-padded and masked (only relative distances enter the attention, so positions line up).
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
import torch.nn.functional as F
from torch import Tensor

from streamst.decoder_batch import SlotDecoder
from streamst.decoding import Family, StopRule, StopTracker, greedy
from streamst.features import normalize, stream_features
from streamst.memory_cache import MemoryKV, memory_kv
from streamst.model import Decoder, Encoder, EncoderState
from streamst.speech_model import Hypothesis


def can_batch(model: Any) -> bool:
    """True for models whose states stack (streamst's own torch model); others run one stream at a time."""
    from streamst.streaming_model import StreamingSpeechModel

    return isinstance(model, StreamingSpeechModel)


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

    Rows that produce the same number of frames share the calls; a row's new state owns its tensors (nothing
    keeps the batch alive once the stream's state is dropped).
    """
    out: list[tuple[Tensor, EncoderState] | None] = [None] * len(feats)
    groups: dict[int, list[int]] = {}
    pendings = []
    d = encoder.cfg.d_model
    for r, (f, st, final) in enumerate(zip(feats, states, finals)):
        pending = torch.cat([st.pending, f], dim=1)
        pendings.append(pending)
        ready = pending.shape[1] // 4
        n = ready if final else ready // chunk * chunk
        if n == 0:
            out[r] = (pending.new_zeros(0, d), EncoderState(st.sub, st.kv, st.conv, pending, st.frames, st.extra))
        else:
            groups.setdefault(n, []).append(r)
    for n, rows in groups.items():
        frames, new_states = _encode_group(encoder, [pendings[r] for r in rows], [states[r] for r in rows],
                                           [finals[r] for r in rows], n, chunk, left)
        for r, fr, st in zip(rows, frames, new_states):
            out[r] = (fr, st)
    return out  # type: ignore[return-value]


def _encode_group(encoder: Encoder, pendings: list[Tensor], states: list[EncoderState], finals: list[bool], n: int,
                  chunk: int, left: int) -> tuple[list[Tensor], list[EncoderState]]:
    g = len(pendings)
    x, (c1, c2) = encoder.sub(torch.cat([p[:, : n * 4] for p in pendings]),
                              (torch.cat([s.sub[0] for s in states]), torch.cat([s.sub[1] for s in states])))
    kvs = [list(s.kv) for s in states]  # per row, per layer [1, 2, L_i, d]
    convs = [torch.cat([s.conv[li] for s in states]) for li in range(len(encoder.layers))]
    outs = []
    for c0 in range(0, n, chunk):
        xc = x[:, c0:c0 + chunk]
        t = xc.shape[1]
        lens = [row[0].shape[2] for row in kvs]
        longest = max(lens)
        q_pos = torch.arange(longest, longest + t)
        k_pos = torch.arange(0, longest + t)
        if min(lens) == longest:
            mask = torch.ones(1, t, longest + t, dtype=torch.bool)
        else:  # young streams: pad their caches at the front and mask the padding
            mask = torch.zeros(g, t, longest + t, dtype=torch.bool)
            for i, length in enumerate(lens):
                mask[i, :, longest - length:] = True
        for li, layer in enumerate(encoder.layers):
            cache = torch.cat([F.pad(row[li], (0, 0, longest - length, 0)) for row, length in zip(kvs, lens)])
            xc, kv, convs[li] = layer(xc, q_pos, k_pos, mask, cache, convs[li])
            for i, length in enumerate(lens):
                real = kv[i:i + 1, :, longest - length:]
                kvs[i][li] = real[:, :, -left:] if left > 0 else real[:, :, :0]
        outs.append(xc)
    frames = torch.cat(outs, dim=1)
    new_states = []
    for i, (p, st, final) in enumerate(zip(pendings, states, finals)):
        rest = p[:, :0] if final else p[:, n * 4:]
        new_states.append(EncoderState((c1[i:i + 1].clone(), c2[i:i + 1].clone()), [kv.clone() for kv in kvs[i]],
                                       [c[i:i + 1].clone() for c in convs], rest.clone(), st.frames + n, st.extra))
    return [frames[i].clone() for i in range(g)], new_states


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
