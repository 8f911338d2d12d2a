"""Cross-stream batching: the encoder states of many streams are stacked into one batch step, and their greedy
decoders run as one padded batch. The step graphs take per-row positions and key masks (see onnx_export), so
streams of different ages, memory lengths and prefixes share a batch.

`StepRunner` runs the three step graphs with onnxruntime or with torch eager (the same graph modules), so the
scheduler and the bench compare both backends on the same code.

This is `streamst bench`'s model of a batch (greedy tokens on a bounded context, no policy). The server batches
real `Session`s, policies included, through `streamst.batching.sessions` and `streamst.server.batching`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from streamst.features import FeatureState, init_feature_state, normalize, stream_features
from streamst.model import ModelConfig, SpeechTranslator


class StepRunner:
    """encoder(feeds), memory(feeds), decoder(feeds) -> lists of numpy arrays, by onnxruntime or torch."""

    def __init__(self, cfg: ModelConfig, *, onnx_dir: str | Path | None = None, net: SpeechTranslator | None = None,
                 threads: int = 0):
        self.cfg = cfg
        if onnx_dir is not None:
            from streamst.onnx_backend import make_session

            sessions = {n: make_session(Path(onnx_dir) / f"{n}.onnx", threads) for n in ("encoder", "memory", "decoder")}
            self._run = {n: (lambda feeds, s=s: s.run(None, feeds)) for n, s in sessions.items()}
            self.backend = "onnx"
        elif net is not None:
            from streamst.onnx_export import SPECS, DecoderStepGraph, EncoderStepGraph, MemoryGraph

            graphs = {"encoder": EncoderStepGraph(net.eval(), cfg.chunk_frames, cfg.left_frames),
                      "memory": MemoryGraph(net), "decoder": DecoderStepGraph(net)}
            self._run = {n: self._torch_runner(g, SPECS[f"{n}.onnx"][0]) for n, g in graphs.items()}
            self.backend = "torch"
        else:
            raise ValueError("StepRunner needs onnx_dir or net")

    @staticmethod
    def _torch_runner(graph, names):
        @torch.inference_mode()
        def run(feeds):
            outs = graph(*(torch.from_numpy(np.ascontiguousarray(feeds[n])) for n in names))
            return [o.numpy() for o in (outs if isinstance(outs, tuple) else (outs,))]

        return run

    def encoder(self, feeds: dict) -> list[np.ndarray]:
        return self._run["encoder"](feeds)

    def memory(self, feeds: dict) -> list[np.ndarray]:
        return self._run["memory"](feeds)

    def decoder(self, feeds: dict) -> list[np.ndarray]:
        return self._run["decoder"](feeds)


@dataclass
class StreamSlot:
    """One stream's encoder state (batch row of size 1) and its bounded decoding context."""

    features: FeatureState
    pending: np.ndarray
    sub1: np.ndarray
    sub2: np.ndarray
    kv: np.ndarray
    conv: np.ndarray
    frames: int = 0
    memory: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.float32))  # [S, d] window
    prefix: list[int] = field(default_factory=list)


class BatchScheduler:
    """Runs one batched step for every stream that has a new chunk: features, encoder, greedy decoder."""

    def __init__(self, runner: StepRunner, mean: torch.Tensor, std: torch.Tensor, *, bos: int, eos: int,
                 memory_frames: int = 250, prefix_tokens: int = 16, new_tokens: int = 4):
        self.runner, self.cfg = runner, runner.cfg
        self.mean, self.std, self.bos, self.eos = mean, std, bos, eos
        self.memory_frames, self.prefix_tokens, self.new_tokens = memory_frames, prefix_tokens, new_tokens

    def new_stream(self) -> StreamSlot:
        c = self.cfg
        f1 = (c.n_mels - 3) // 2 + 1
        return StreamSlot(init_feature_state(), np.zeros((0, c.n_mels), np.float32),
                          np.zeros((1, 1, 2, c.n_mels), np.float32), np.zeros((1, c.sub_channels, 2, f1), np.float32),
                          np.zeros((c.enc_layers, 1, 2, c.left_frames, c.d_model), np.float32),
                          np.zeros((c.enc_layers, 1, c.d_model, c.conv_kernel - 1), np.float32),
                          memory=np.zeros((0, c.d_model), np.float32))

    def step(self, slots: list[StreamSlot], audio: list[torch.Tensor]) -> list[list[int]]:
        """Feed each slot its new audio; returns each slot's new greedy tokens (slots are updated in place)."""
        groups: dict[int, list[int]] = {}
        for i, (slot, a) in enumerate(zip(slots, audio)):
            feats, slot.features = stream_features(a, slot.features)
            feats = normalize(feats, self.mean, self.std).numpy()
            slot.pending = np.concatenate([slot.pending, feats]) if slot.pending.size else feats
            n = slot.pending.shape[0] // 4 // self.cfg.chunk_frames * self.cfg.chunk_frames
            if n:
                groups.setdefault(n, []).append(i)
        for n, rows in groups.items():  # usually one group: every stream got one chunk
            self._encode(n, [slots[i] for i in rows])
        ready = [i for i, s in enumerate(slots) if s.memory.shape[0]]
        tokens = [[] for _ in slots]
        for i, toks in zip(ready, greedy_batch(self.runner, [slots[i].memory for i in ready],
                                               [slots[i].prefix for i in ready], self.bos, self.eos,
                                               self.new_tokens)):
            tokens[i] = toks
            slots[i].prefix = (slots[i].prefix + toks)[-self.prefix_tokens:]
        return tokens

    def _encode(self, n: int, group: list[StreamSlot]) -> None:
        feeds = {"feats": np.stack([s.pending[: 4 * n] for s in group]),
                 "sub1": np.concatenate([s.sub1 for s in group]), "sub2": np.concatenate([s.sub2 for s in group]),
                 "kv": np.concatenate([s.kv for s in group], axis=1), "conv": np.concatenate([s.conv for s in group], axis=1),
                 "frames": np.array([s.frames for s in group], np.int64)}
        out, sub1, sub2, kv, conv = self.runner.encoder(feeds)
        for r, s in enumerate(group):
            s.pending = s.pending[4 * n:]
            s.sub1, s.sub2 = sub1[r:r + 1], sub2[r:r + 1]
            s.kv, s.conv = kv[:, r:r + 1], conv[:, r:r + 1]
            s.frames += n
            s.memory = np.concatenate([s.memory, out[r]])[-self.memory_frames:]


def greedy_batch(runner: StepRunner, memories: list[np.ndarray], prefixes: list[list[int]], bos: int, eos: int,
                 max_tokens: int) -> list[list[int]]:
    """Greedy continuation of each (memory [S_i, d], prefix) in one padded batch; prefixes are left-padded."""
    if not memories:
        return []
    b = len(memories)
    s_max = max(m.shape[0] for m in memories)
    d = memories[0].shape[1]
    memory = np.zeros((b, s_max, d), np.float32)
    mem_mask = np.zeros((b, s_max), bool)
    for i, m in enumerate(memories):
        memory[i, : m.shape[0]] = m
        mem_mask[i, : m.shape[0]] = True
    mem_k, mem_v = runner.memory({"memory": memory})
    starts = [[bos] + p for p in prefixes]
    p_max = max(len(s) for s in starts)
    tokens = np.zeros((b, p_max), np.int64)
    self_mask = np.zeros((b, p_max), bool)
    pos = np.zeros((b, p_max), np.int64)
    for i, s in enumerate(starts):
        pad = p_max - len(s)
        tokens[i, pad:] = s
        self_mask[i, pad:] = True
        pos[i, pad:] = np.arange(len(s))
    cfg = runner.cfg
    h, dk = cfg.n_heads, cfg.d_model // cfg.n_heads
    self_k = self_v = np.zeros((cfg.dec_layers, b, h, 0, dk), np.float32)
    lengths = np.array([len(s) for s in starts])
    out: list[list[int]] = [[] for _ in range(b)]
    done = np.zeros(b, bool)
    for _ in range(max_tokens):
        logp, self_k, self_v, _ = runner.decoder({"tokens": tokens, "pos": np.minimum(pos, cfg.max_target_len - 1),
                                                  "self_k": self_k, "self_v": self_v, "self_mask": self_mask,
                                                  "mem_k": mem_k, "mem_v": mem_v, "mem_mask": mem_mask})
        best = logp.argmax(-1)
        for i in range(b):
            if not done[i]:
                if best[i] == eos:
                    done[i] = True
                else:
                    out[i].append(int(best[i]))
        if done.all():
            break
        tokens = best[:, None].astype(np.int64)
        pos = lengths[:, None].copy()
        lengths = lengths + 1
        self_mask = np.concatenate([self_mask, np.ones((b, 1), bool)], axis=1)
    return out
