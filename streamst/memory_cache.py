"""The decoder's cross-attention keys/values of a stream's memory frames, kept in the stream's model state between
chunks: an appending encoder's frames never change, so each chunk projects only its new frames (exact), and
StreamAtt's drops cut the same frames off the front. A memory that does not continue the cached one (another
caller's, or a re-encoded one) is projected afresh."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class MemoryKV:
    """Per decoder layer (keys, values) [1, heads, frames, dk] of `frames` memory frames, with the last frame they
    were projected from (to tell whether a memory continues them)."""

    kv: tuple[tuple[Tensor, Tensor], ...]
    last: Tensor

    @property
    def frames(self) -> int:
        return self.kv[0][0].shape[2]


def continues(cache: MemoryKV | None, memory: Tensor) -> bool:
    """True when `memory` [T, d] starts with the frames `cache` was projected from."""
    if cache is None or cache.frames == 0 or cache.frames > memory.shape[0]:
        return False
    return bool(torch.equal(memory[cache.frames - 1], cache.last))


@torch.inference_mode()
def memory_kv(decoder, memory: Tensor, cache: MemoryKV | None) -> MemoryKV:
    """The keys/values of every frame of `memory` [T, d] (T > 0), projecting only those `cache` lacks."""
    have = cache.frames if continues(cache, memory) else 0
    if have == memory.shape[0]:
        return cache
    fresh = decoder.project_memory(memory[None, have:])
    if have:
        kv = tuple((torch.cat([k, nk], 2), torch.cat([v, nv], 2)) for (k, v), (nk, nv) in zip(cache.kv, fresh))
    else:
        kv = tuple((k.contiguous(), v.contiguous()) for k, v in fresh)
    return MemoryKV(kv, memory[-1].clone())


def drop(cache: MemoryKV | None, n: int) -> MemoryKV | None:
    """The cache without its first n frames (StreamAtt's drop); None when nothing is left."""
    if cache is None or n <= 0:
        return cache
    if n >= cache.frames:
        return None
    kv = tuple((k[:, :, n:], v[:, :, n:]) for k, v in cache.kv)
    return MemoryKV(kv, cache.last)
