"""The own family's decoder runs under the one decode loop (`streamst.decoding.greedy`): the prefix pass that
gives the first logits, then one `step` per token.

`CallDecoder`: one row through anything called like `streamst.model.Decoder` (the torch decoder, the ONNX
graphs), its self-attention cache growing per token. `SlotDecoder`: many rows of the torch decoder as one batch:
the forced prefixes in one right-padded pass (causal attention never looks at the padding after a real token),
memories right-padded and masked, then one batched call per token with per-row positions, each row's new
key/value written into its slot of fixed buffers; finished rows ride along until a quarter of the batch is done,
then the batch is compacted.
"""
from __future__ import annotations

import torch
from torch import Tensor

from streamst.model import Decoder


class CallDecoder:
    """One row: `logits` [1, V] and `first_rows` after the prefix pass, `prefix_attention` [L, H, P, S] (None
    without a prefix), then `step`."""

    @torch.inference_mode()
    def __init__(self, decoder, memory: Tensor, prefix: list[int], bos: int, mem_kv=None):
        self.decoder = decoder
        self.mem_kv = decoder.project_memory(memory.unsqueeze(0)) if mem_kv is None else mem_kv
        start = torch.tensor([[bos] + prefix], device=memory.device)
        logits, self.caches, attn = decoder(start, self.mem_kv)
        self.prefix_attention = attn[:, 0, :, :-1] if prefix else None  # positions that predicted the prefix
        self.logits = logits[:, -1]
        self.first_rows = [attn[:, 0, :, -1:]]

    @torch.inference_mode()
    def step(self, rows: list[int], tokens: list[int]) -> tuple[Tensor, list[Tensor]]:
        toks = torch.tensor([tokens], device=self.logits.device)
        logits, self.caches, attn = self.decoder(toks, self.mem_kv, caches=self.caches)
        return logits[:, -1], [attn[:, 0]]


class SlotDecoder:
    """Many rows of the torch decoder: each row's memory keys/values (per layer [1, H, S_i, dk], from
    `streamst.memory_cache`) and forced prefix, with `room` tokens to write at most."""

    @torch.inference_mode()
    def __init__(self, decoder: Decoder, mem_kvs: list, prefixes: list[list[int]], bos: int, room: int):
        b = len(mem_kvs)
        self.decoder, self.bos = decoder, bos
        self.lengths = lengths = [kv[0][0].shape[2] for kv in mem_kvs]
        s_max = max(lengths)
        self.mem_mask = None
        if min(lengths) < s_max:
            self.mem_mask = torch.arange(s_max)[None, :] < torch.tensor(lengths)[:, None]
        mem_kv = [_padded([row[li] for row in mem_kvs], s_max) for li in range(len(decoder.layers))]
        starts = [[bos] + p for p in prefixes]
        t_max = max(len(s) for s in starts)
        tokens = torch.full((b, t_max), bos, dtype=torch.long)
        for i, s in enumerate(starts):
            tokens[i, : len(s)] = torch.tensor(s)
        last = torch.tensor([len(s) - 1 for s in starts])
        logits, caches, attn = self._prefix_pass(tokens, last, mem_kv)
        self.logits = logits
        self.prefix_attention = [attn[:, i, :, : len(p), : lengths[i]] if p else None for i, p in enumerate(prefixes)]
        self.first_rows = [attn[:, i, :, int(last[i]):int(last[i]) + 1, : lengths[i]] for i in range(b)]
        # self-attention keys/values in fixed buffers: row i's next token writes slot lens[i] (no copy per token)
        self.buffers = []
        for k, v in caches:
            kb, vb = k.new_zeros(b, k.shape[1], t_max + room, k.shape[3]), v.new_zeros(b, v.shape[1], t_max + room, v.shape[3])
            kb[:, :, :t_max], vb[:, :, :t_max] = k, v
            self.buffers.append((kb, vb))
        self.mem_kv = mem_kv
        self.lens = last + 1  # per batch row: real keys so far == position of its next token
        self.slot = list(range(b))  # batch row -> request row (rows that finished ride along until compaction)

    def _prefix_pass(self, tokens: Tensor, last: Tensor, mem_kv):
        """`Decoder.forward` over right-padded [B, T] tokens, with the logits [B, V] of each row's last real
        position only."""
        x = self.decoder.inputs(tokens, torch.arange(tokens.shape[1]))
        caches, attn = [], []
        for layer, layer_mem in zip(self.decoder.layers, mem_kv):
            x, cache, w = layer(x, layer_mem, self.mem_mask)
            caches.append(cache)
            attn.append(w)
        return self.decoder.logits(x[torch.arange(tokens.shape[0]), last]), caches, torch.stack(attn)

    @torch.inference_mode()
    def step(self, rows: list[int], tokens: list[int]) -> tuple[Tensor, list[Tensor]]:
        where = {r: j for j, r in enumerate(self.slot)}
        alive = [where[r] for r in rows]
        if 4 * len(alive) <= 3 * len(self.slot):  # a quarter of the rows are done: stop computing them
            idx = torch.tensor(alive)
            self.buffers = [(k[idx], v[idx]) for k, v in self.buffers]
            self.mem_kv = [(k[idx], v[idx]) for k, v in self.mem_kv]
            self.mem_mask = None if self.mem_mask is None else self.mem_mask[idx]
            self.lens = self.lens[idx]
            self.slot, alive = list(rows), list(range(len(rows)))
        toks = torch.full((len(self.slot), 1), self.bos, dtype=torch.long)
        toks[alive, 0] = torch.tensor(tokens)
        x = self.decoder.inputs(toks, self.lens[:, None])
        attn = []
        for layer, (kb, vb), layer_mem in zip(self.decoder.layers, self.buffers, self.mem_kv):
            x, _, w = layer(x, layer_mem, self.mem_mask, slots=(kb, vb, self.lens))
            attn.append(w)
        logits, w = self.decoder.logits(x)[:, -1], torch.stack(attn)
        moved = torch.zeros(len(self.slot), dtype=torch.long)
        moved[alive] = 1
        self.lens = self.lens + moved
        idx = torch.tensor(alive)
        return logits[idx], [w[:, j, :, :, : self.lengths[r]] for j, r in zip(alive, rows)]


def _padded(pairs: list[tuple[Tensor, Tensor]], frames: int) -> tuple[Tensor, Tensor]:
    """One layer's (keys, values) [1, H, S_i, dk] of every row, right-padded with zeros to `frames` and stacked."""
    def pad(t: Tensor) -> Tensor:
        return t if t.shape[2] == frames else torch.nn.functional.pad(t, (0, 0, 0, frames - t.shape[2]))

    return (torch.cat([pad(k) for k, _ in pairs]), torch.cat([pad(v) for _, v in pairs]))
