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

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from streamst.decoding import StopRule, StopTracker, repeats_at_end
from streamst.features import normalize, stream_features
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
    return [(frames, StreamState(fs, es)) for (frames, es), fs in zip(outs, fstates)]


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


@dataclass
class _Row:
    """One row's greedy continuation so far (mirrors `decoding._greedy`)."""

    frames: int
    budget: int
    tracker: StopTracker
    tokens: list
    rows: list
    last_attn: Tensor
    score: float = 0.0
    ended: bool = False


@torch.inference_mode()
def greedy_many(decoder: Decoder, memories: list[Tensor], prefixes: list[list[int]], bos: int, eos: int,
                max_tokens: list[int], stops: list[StopRule | None] | None = None,
                word_start_ids: frozenset[int] = frozenset()) -> list[Hypothesis]:
    """`decoding.decode(..., beam=1)` for every (memory [S_i, d], prefix, budget, stop rule) row, as one batch."""
    b = len(memories)
    lengths = [m.shape[0] for m in memories]
    s_max = max(lengths)
    memory = memories[0].new_zeros(b, s_max, memories[0].shape[1])
    for i, m in enumerate(memories):
        memory[i, : m.shape[0]] = m
    mem_mask = None
    if min(lengths) < s_max:
        mem_mask = torch.arange(s_max)[None, :] < torch.tensor(lengths)[:, None]
    mem_kv = decoder.project_memory(memory)
    starts = [[bos] + p for p in prefixes]
    t_max = max(len(s) for s in starts)
    tokens = torch.full((b, t_max), bos, dtype=torch.long)
    for i, s in enumerate(starts):
        tokens[i, : len(s)] = torch.tensor(s)
    last = torch.tensor([len(s) - 1 for s in starts])
    logits, caches, attn = _prefix_pass(decoder, tokens, last, mem_kv, mem_mask)
    logp = logits.log_softmax(-1)
    prefix_attn = [attn[:, i, :, : len(p), : lengths[i]] if p else None for i, p in enumerate(prefixes)]
    stops = stops or [None] * b
    state = [_Row(lengths[i], max_tokens[i], StopTracker(stops[i], word_start_ids), [], [],
                  attn[:, i, :, int(last[i]):int(last[i]) + 1, : lengths[i]]) for i in range(b)]
    # self-attention keys/values in fixed buffers: row i's next token writes slot lens[i] (no copy per token)
    room = t_max + max(max_tokens)
    buffers = []
    for k, v in caches:
        kb, vb = k.new_zeros(b, k.shape[1], room, k.shape[3]), v.new_zeros(b, v.shape[1], room, v.shape[3])
        kb[:, :, :t_max], vb[:, :, :t_max] = k, v
        buffers.append((kb, vb))
    mem_kv = [(k.contiguous(), v.contiguous()) for k, v in mem_kv]  # k.T @ q without a copy per token
    lens = last + 1  # per batch row: real keys so far == position of its next token
    slot = list(range(b))  # per batch row: its request, or -1 once finished (it rides along until compaction)
    step = 0
    while True:
        alive, next_tokens = [], []
        best = logp.argmax(-1)
        best_logp = logp.gather(1, best[:, None])[:, 0].tolist()
        best = best.tolist()
        for j, i in enumerate(slot):
            if i < 0:
                continue
            row = state[i]
            if step >= row.budget:
                continue
            tok = best[j]
            if tok == eos:
                row.ended = True
                continue
            row.score += best_logp[j]
            row.tokens.append(tok)
            row.rows.append(row.last_attn)
            if row.tracker.add(tok, row.last_attn) or repeats_at_end(row.tokens) or len(row.tokens) >= row.budget:
                continue
            alive.append(j)
            next_tokens.append(tok)
        if not alive:
            break
        if 4 * len(alive) <= 3 * len(slot):  # a quarter of the rows are done: stop computing them
            idx = torch.tensor(alive)
            buffers = [(k[idx], v[idx]) for k, v in buffers]
            mem_kv = [(k[idx], v[idx]) for k, v in mem_kv]
            mem_mask = None if mem_mask is None else mem_mask[idx]
            lens = lens[idx]
            slot, alive = [slot[j] for j in alive], list(range(len(alive)))
        toks = torch.full((len(slot), 1), bos, dtype=torch.long)
        toks[alive, 0] = torch.tensor(next_tokens)
        logits, w = _decoder_step(decoder, toks, lens, mem_kv, mem_mask, buffers)
        logp = logits[:, -1].log_softmax(-1)
        moved = torch.zeros(len(slot), dtype=torch.long)
        moved[alive] = 1
        lens = lens + moved
        still = set(alive)
        for j, i in enumerate(slot):
            if j in still:
                state[i].last_attn = w[:, j, :, :, : state[i].frames]
            else:
                slot[j] = -1
        step += 1
    hyps = []
    for i, row in enumerate(state):
        attention = torch.cat(row.rows, dim=2) if row.rows else row.last_attn[:, :, :0]
        hyps.append(Hypothesis(tokens=row.tokens, attention=attention, ended=row.ended, score=row.score,
                               prefix_attention=prefix_attn[i]))
    return hyps


def _prefix_pass(decoder: Decoder, tokens: Tensor, last: Tensor, mem_kv, mem_mask):
    """`Decoder.forward` over right-padded [B, T] tokens (causal queries never see the padding after them), with
    the logits [B, V] of each row's last real position only."""
    x = decoder.inputs(tokens, torch.arange(tokens.shape[1]))
    caches, attn = [], []
    for layer, layer_mem in zip(decoder.layers, mem_kv):
        x, cache, w = layer(x, layer_mem, mem_mask)
        caches.append(cache)
        attn.append(w)
    return decoder.logits(x[torch.arange(tokens.shape[0]), last]), caches, torch.stack(attn)


def _decoder_step(decoder: Decoder, tokens: Tensor, lens: Tensor, mem_kv, mem_mask, buffers):
    """`Decoder.forward` for one new token per row at position `lens[i]`; its key/value go into slot `lens[i]` of
    the row's buffers, and it attends to slots 0..lens[i]. Returns logits [B, 1, V] and cross-attention."""
    x = decoder.inputs(tokens, lens[:, None])
    attn = []
    for layer, (kb, vb), layer_mem in zip(decoder.layers, buffers, mem_kv):
        x, _, w = layer(x, layer_mem, mem_mask, slots=(kb, vb, lens))
        attn.append(w)
    return decoder.logits(x), torch.stack(attn)
