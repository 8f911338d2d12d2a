"""Many streams on one device (a GPU, or the CPU in bf16): every stream's state lives in one slab of tensors on
the device, and one step serves any subset of streams end to end with no per-stream python:

    audio [b, 5120] -> batched Kaldi fbank on the device -> CMVN -> encoder step (cached, bf16; CUDA graph per
    batch bucket on a GPU) -> memory window -> greedy decoder (4 tokens) -> AlignAtt (vectorised) -> prefix

The step graphs are the ones exported to ONNX (`streamst.onnx_export`), so rows of different ages share a batch.
`streamst bench --device cuda` measures how many real-time streams this carries; nothing here needs a GPU.
"""
from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import torch
import torchaudio.compliance.kaldi as kaldi
from torch import Tensor

from streamst.features import LEAD, N_MELS, SAMPLE_RATE, SHIFT, WINDOW
from streamst.model import SpeechTranslator

CHUNK_SAMPLES = 5120  # 320 ms
FFT = 512
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_device(device: str, dtype: str) -> tuple[torch.device, torch.dtype]:
    """Check the device and dtype asked for; a clear error when CUDA is asked and absent."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}: choose from {', '.join(DTYPES)}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: CUDA is not available on this machine (torch {torch.__version__}, "
                         f"built with CUDA {torch.version.cuda}); use --device cpu")
    if device != "cpu" and not device.startswith("cuda"):
        raise ValueError(f"unknown device {device!r}: use cpu or cuda[:N]")
    return torch.device(device), DTYPES[dtype]


class BatchedFbank:
    """Kaldi fbank (torchaudio.compliance.kaldi defaults as streamst.features sets them) over [B, samples] at
    once on any device: frames of 25 ms every 10 ms, DC removal, pre-emphasis 0.97, Povey window, 512-point
    power spectrum, 80 mel bins from 20 Hz to Nyquist, log floored at float32 eps."""

    def __init__(self, device: torch.device):
        banks, _ = kaldi.get_mel_banks(N_MELS, FFT, float(SAMPLE_RATE), 20.0, 0.0, 100.0, -500.0, 1.0)
        self.banks = torch.nn.functional.pad(banks, (0, 1)).T.contiguous().to(device)  # [257, 80]
        self.window = torch.hann_window(WINDOW, periodic=False).pow(0.85).to(device)
        self.eps = torch.finfo(torch.float32).eps

    def __call__(self, audio: Tensor) -> Tensor:
        """audio [B, n] float32 in [-1, 1] (lead already in front) -> [B, 1 + (n - 400) // 160, 80]."""
        frames = (audio * 32768.0).unfold(1, WINDOW, SHIFT)  # [B, F, 400]
        frames = frames - frames.mean(-1, keepdim=True)
        prev = torch.cat([frames[..., :1], frames[..., :-1]], dim=-1)
        frames = (frames - 0.97 * prev) * self.window
        power = torch.fft.rfft(frames, n=FFT).abs().pow(2)  # [B, F, 257]
        return (power @ self.banks).clamp_min(self.eps).log()


@dataclass
class Slab:
    """Every stream's state, one row per stream (row `capacity` is scratch that padded batch rows write to)."""

    tail: Tensor  # [N, LEAD] float32 audio not yet covered by a frame
    sub1: Tensor
    sub2: Tensor
    kv: Tensor  # [layers, N, 2, left, d]
    conv: Tensor  # [layers, N, d, kernel - 1]
    frames: Tensor  # [N] encoder frames so far
    memory: Tensor  # [N, M, d] right-aligned window of encoder frames
    mem_len: Tensor  # [N]
    prefix: Tensor  # [N, P] right-aligned committed tokens
    prefix_len: Tensor  # [N]


class DeviceScheduler:
    """One batched step for any rows of the slab: features, encoder, greedy decoder and AlignAtt, on `device`."""

    def __init__(self, net: SpeechTranslator, mean: Tensor, std: Tensor, *, bos: int, eos: int,
                 device: str = "cpu", dtype: str = "float32", memory_frames: int = 250, prefix_tokens: int = 16,
                 new_tokens: int = 4, alignatt_frames: int = 4, cuda_graphs: bool | None = None,
                 graph_max_batch: int = 1024):
        from streamst.onnx_export import DecoderStepGraph, EncoderStepGraph, MemoryGraph

        self.device, self.dtype = resolve_device(device, dtype)
        cfg = self.cfg = net.cfg
        feats_per_tick = CHUNK_SAMPLES // SHIFT
        if feats_per_tick % (4 * cfg.chunk_frames):
            raise ValueError(f"the device scheduler steps 320 ms at a time: chunk_frames={cfg.chunk_frames} "
                             f"must divide {feats_per_tick // 4}")
        self.enc_frames = feats_per_tick // 4
        net = copy.deepcopy(net).eval()  # .to(dtype) below must not change the caller's model
        self.encoder_graph = EncoderStepGraph(net, cfg.chunk_frames, cfg.left_frames).to(self.device, self.dtype)
        self.memory_graph = MemoryGraph(net).to(self.device, self.dtype)
        self.decoder_graph = DecoderStepGraph(net).to(self.device, self.dtype)
        self.fbank = BatchedFbank(self.device)
        self.mean, self.std = mean.float().to(self.device), std.float().to(self.device)
        self.bos, self.eos = bos, eos
        self.memory_frames, self.prefix_tokens, self.new_tokens = memory_frames, prefix_tokens, new_tokens
        self.alignatt_frames = alignatt_frames
        self.cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        if self.cuda_graphs and self.device.type != "cuda":
            raise ValueError("CUDA graphs need --device cuda")
        # a graph pays where launches dominate (small batches); above this many rows the encoder runs eagerly, so
        # graphs' static copies of the caches stay small next to the slab
        self.graph_max_batch = graph_max_batch
        self._graphs: dict[int, tuple] = {}
        self._pool = None
        self.slab: Slab | None = None

    # ------------------------------------------------------------------ state

    def allocate(self, n: int, *, steady: bool = False, seed: int = 0) -> None:
        """State for n streams. steady=True starts them mid-stream (full memory window, full prefix, full
        encoder cache) so the cost is that of the bounded steady state from the first step."""
        c, dev, dt = self.cfg, self.device, self.dtype
        self.slab = None  # free the previous streams' memory first
        if dev.type == "cuda":
            torch.cuda.empty_cache()
        rows = n + 1
        f1 = (c.n_mels - 3) // 2 + 1
        self.slab = Slab(
            tail=torch.zeros(rows, LEAD, device=dev),
            sub1=torch.zeros(rows, 1, 2, c.n_mels, device=dev, dtype=dt),
            sub2=torch.zeros(rows, c.sub_channels, 2, f1, device=dev, dtype=dt),
            kv=torch.zeros(c.enc_layers, rows, 2, c.left_frames, c.d_model, device=dev, dtype=dt),
            conv=torch.zeros(c.enc_layers, rows, c.d_model, c.conv_kernel - 1, device=dev, dtype=dt),
            frames=torch.zeros(rows, dtype=torch.long, device=dev),
            memory=torch.zeros(rows, self.memory_frames, c.d_model, device=dev, dtype=dt),
            mem_len=torch.zeros(rows, dtype=torch.long, device=dev),
            prefix=torch.zeros(rows, self.prefix_tokens, dtype=torch.long, device=dev),
            prefix_len=torch.zeros(rows, dtype=torch.long, device=dev),
        )
        if steady:  # random values drawn on the device (no host copy of gigabytes at large n)
            s = self.slab
            g = torch.Generator(device=dev).manual_seed(seed)
            s.frames.fill_(100 * c.chunk_frames)
            s.memory.normal_(generator=g)
            s.mem_len.fill_(self.memory_frames)
            s.prefix.random_(4, c.tgt_vocab, generator=g)
            s.prefix_len.fill_(self.prefix_tokens)
            s.kv.normal_(generator=g)

    @property
    def capacity(self) -> int:
        return 0 if self.slab is None else self.slab.tail.shape[0] - 1

    # ------------------------------------------------------------------ one step

    @torch.inference_mode()
    def step(self, rows: Tensor, audio: Tensor) -> tuple[Tensor, Tensor]:
        """rows [b] stream indices (distinct), audio [b, 5120] float32 on the device: 320 ms for each.
        Returns (tokens [b, new_tokens], committed [b]): the greedy tokens and how many AlignAtt committed."""
        s = self.slab
        b = rows.shape[0]
        bucket = self._bucket(b)
        if bucket > b:  # pad to a bucket size with the scratch row: one CUDA graph per bucket, not per size
            rows = torch.cat([rows, rows.new_full((bucket - b,), self.capacity)])
            audio = torch.cat([audio, audio.new_zeros(bucket - b, audio.shape[1])])
        buf = torch.cat([s.tail[rows], audio], dim=1)
        s.tail[rows] = buf[:, -LEAD:]
        feats = ((self.fbank(buf) - self.mean) / self.std).to(self.dtype)  # [b, 32, 80]
        out, sub1, sub2, kv, conv = self._encode(feats, s.sub1[rows], s.sub2[rows], s.kv[:, rows], s.conv[:, rows],
                                                 s.frames[rows])
        s.sub1[rows], s.sub2[rows], s.kv[:, rows], s.conv[:, rows] = sub1, sub2, kv, conv
        s.frames[rows] += self.enc_frames
        memory = torch.cat([s.memory[rows, self.enc_frames:], out], dim=1)
        s.memory[rows] = memory
        mem_len = (s.mem_len[rows] + self.enc_frames).clamp_max(self.memory_frames)
        s.mem_len[rows] = mem_len
        tokens, committed = self._decode(memory, mem_len, s.prefix[rows], s.prefix_len[rows])
        self._extend_prefix(rows[:b], tokens[:b], committed[:b])
        return tokens[:b], committed[:b]

    def _bucket(self, b: int) -> int:
        """Batch size rounded up to 4 steps per power of two (at most 25% padding) where a CUDA graph runs it;
        exact on the CPU and above graph_max_batch."""
        if not self.cuda_graphs or b <= 8 or b > self.graph_max_batch:
            return b
        step = 1 << (b.bit_length() - 3)
        return -(-b // step) * step

    def _encode(self, *inputs: Tensor) -> tuple[Tensor, ...]:
        b = inputs[0].shape[0]
        if not self.cuda_graphs or b > self.graph_max_batch:
            return self.encoder_graph(*inputs)
        if b not in self._graphs:
            self._graphs[b] = self._capture(inputs)
        graph, static_in, static_out = self._graphs[b]
        for dst, src in zip(static_in, inputs):
            dst.copy_(src)
        graph.replay()
        return tuple(o.clone() for o in static_out)

    def _capture(self, inputs: tuple[Tensor, ...]):
        """CUDA graph of the encoder step for one batch size (warm-up on a side stream, then capture)."""
        static_in = [x.clone() for x in inputs]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(2):
                self.encoder_graph(*static_in)
        torch.cuda.current_stream().wait_stream(side)
        if self._pool is None:  # one pool for every bucket's graph: replays never overlap, and each replay's
            self._pool = torch.cuda.graph_pool_handle()  # outputs are cloned before the next one runs
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            static_out = self.encoder_graph(*static_in)
        return graph, static_in, static_out

    def _decode(self, memory: Tensor, mem_len: Tensor, prefix: Tensor, prefix_len: Tensor) -> tuple[Tensor, Tensor]:
        """Greedy continuation of [bos] + prefix for new_tokens steps, and AlignAtt's commit count."""
        b, m, _ = memory.shape
        cfg = self.cfg
        mem_mask = torch.arange(m, device=self.device)[None] >= (m - mem_len)[:, None]
        mem_k, mem_v = self.memory_graph(memory)
        p = self.prefix_tokens + 1
        tokens = torch.cat([torch.full((b, 1), self.bos, device=self.device, dtype=torch.long), prefix], dim=1)
        length = prefix_len + 1
        col = torch.arange(p, device=self.device)[None]
        self_mask = col >= (p - length)[:, None]
        tokens = torch.where(self_mask, tokens, 0)
        tokens[torch.arange(b, device=self.device), p - length] = self.bos  # bos right before each prefix
        pos = (col - (p - length)[:, None]).clamp_min(0)
        h, dk = cfg.n_heads, cfg.d_model // cfg.n_heads
        self_k = self_v = torch.zeros(cfg.dec_layers, b, h, 0, dk, device=self.device, dtype=self.dtype)
        out, aligned = [], []
        for _ in range(self.new_tokens):
            logp, self_k, self_v, attn = self.decoder_graph(tokens, pos.clamp_max(cfg.max_target_len - 1), self_k,
                                                            self_v, self_mask, mem_k, mem_v, mem_mask)
            best = logp.argmax(-1)
            out.append(best)
            aligned.append(attn[-1, :, :, -1].float().mean(1).argmax(-1))  # last layer, heads averaged
            tokens, pos = best[:, None], length[:, None]
            length = length + 1
            self_mask = torch.cat([self_mask, self_mask.new_ones(b, 1)], dim=1)
        tokens, aligned = torch.stack(out, 1), torch.stack(aligned, 1)  # [b, T]
        # AlignAtt: commit tokens up to the first one attending to the last `frames` frames, or an eos
        ok = (aligned < m - self.alignatt_frames) & (tokens != self.eos)
        committed = ok.long().cumprod(1).sum(1)
        return tokens, committed

    def _extend_prefix(self, rows: Tensor, tokens: Tensor, committed: Tensor) -> None:
        s, p = self.slab, self.prefix_tokens
        both = torch.cat([s.prefix[rows], tokens], dim=1)  # right-aligned prefix, then the new tokens
        idx = committed[:, None] + torch.arange(p, device=self.device)[None]
        s.prefix[rows] = both.gather(1, idx)
        s.prefix_len[rows] = (s.prefix_len[rows] + committed).clamp_max(p)

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def audio_bank(device: torch.device, n: int = 8) -> Tensor:
    """n seeded speech-like 320 ms chunks [n, 5120] on the device."""
    from streamst.commands.bench import synthetic_chunk

    return torch.stack([synthetic_chunk(i) for i in range(n)]).to(device)


def time_batches(sched: DeviceScheduler, sizes: list[int], reps: int) -> dict[int, list[float]]:
    """Seconds per step of every stream at once (all aligned), for each batch size, steady state."""
    bank = audio_bank(sched.device)
    out = {}
    for n in sizes:
        sched.allocate(n, steady=True)
        rows = torch.arange(n, device=sched.device)
        times = []
        for k in range(reps + 2):  # two warm-up steps (and CUDA graph capture)
            sched.synchronize()
            t0 = time.perf_counter()
            sched.step(rows, bank[(rows + k) % bank.shape[0]])
            sched.synchronize()
            if k >= 2:
                times.append(time.perf_counter() - t0)
        out[n] = times
    return out


def simulate(sched: DeviceScheduler, n: int, ticks: int) -> float:
    """Single worker, virtual clock (as `streamst.batching.realtime.measure`): n staggered streams each send 320 ms
    in real time; each step serves every chunk that has arrived. Returns the p95 added delay in ms (inf when
    the device runs out of memory)."""
    try:
        sched.allocate(n, steady=True)
    except torch.cuda.OutOfMemoryError:
        return math.inf
    bank = audio_bank(sched.device)
    chunk_s = CHUNK_SAMPLES / SAMPLE_RATE
    offsets = np.arange(n) * chunk_s / n
    times = (offsets[None, :] + (np.arange(ticks)[:, None] + 1) * chunk_s).ravel()  # tick-major
    order = np.argsort(times, kind="stable")
    times, stream, tick = times[order], (order % n), (order // n)
    warm = torch.arange(min(n, 8), device=sched.device)
    sched.step(warm, bank[warm % bank.shape[0]])  # first-call costs out of the measurement
    clock, j, delays = 0.0, 0, []
    try:
        while j < len(times):
            clock = max(clock, times[j])
            k = int(np.searchsorted(times, clock, side="right"))
            batch_rows, batch_ticks = stream[j:k], tick[j:k]
            sched.synchronize()
            t0 = time.perf_counter()
            for sub in _distinct_rounds(batch_rows):  # a stream that fell behind has several chunks waiting
                rows = torch.from_numpy(batch_rows[sub]).to(sched.device)
                ids = torch.from_numpy((batch_rows[sub] + batch_ticks[sub]) % bank.shape[0]).to(sched.device)
                sched.step(rows, bank[ids])
            sched.synchronize()
            clock += time.perf_counter() - t0
            delays.append(clock - times[j:k])
            j = k
    except torch.cuda.OutOfMemoryError:
        return math.inf
    return float(np.percentile(np.concatenate(delays) * 1000.0, 95))


def _distinct_rounds(rows: np.ndarray) -> list[np.ndarray]:
    """Index sets, in arrival order, each holding every stream at most once."""
    if len(np.unique(rows)) == len(rows):
        return [np.arange(len(rows))]
    seen: dict[int, int] = {}
    rounds: list[list[int]] = []
    for i, r in enumerate(rows.tolist()):
        k = seen.get(r, 0)
        seen[r] = k + 1
        if k == len(rounds):
            rounds.append([])
        rounds[k].append(i)
    return [np.array(r) for r in rounds]
