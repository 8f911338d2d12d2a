"""Whisper's output projection from an fp16 copy of the token embedding: half the memory traffic of the fp32
matrix, which is what a token's logits cost on a CPU (51,864 x 384 weights read for every decoder step).

Where the torch build has fbgemm (x86), its fp16 GEMM widens the weights inside the kernel, so any number of
rows costs about what one does (2 threads, this project's 2-core machine: 4 rows 1.8 ms, against 8 ms for an
fp16 matrix product and 17 ms in fp32). Elsewhere the fp16 matrix is widened a block of rows at a time (the block
stays in cache, so the traffic stays that of fp16). Either way the arithmetic is fp16 weights times fp32 states
with fp32 sums.
"""
from __future__ import annotations

import torch
from torch import Tensor

BLOCK = 2048  # vocabulary rows widened at a time without fbgemm (3 MB in fp32)


class HalfLogits:
    """Logits [n, V] of final decoder states [n, D] (or [D] -> [V]) against an fp16 copy of `embedding` [V, D]."""

    def __init__(self, embedding: Tensor, fbgemm: bool = True):
        weight = embedding.detach().half()
        self.packed = None
        if fbgemm:
            try:  # fbgemm's fp16 GEMM (x86 builds of torch); it keeps its own fp16 copy
                self.packed = torch.ops.quantized.linear_prepack_fp16(weight.float(), None)
            except (RuntimeError, AttributeError):
                pass
        self.weight = weight if self.packed is None else None  # the fallback's matrix (not held twice)

    def __call__(self, hidden: Tensor) -> Tensor:
        rows = hidden.reshape(-1, hidden.shape[-1]).float()
        if self.packed is not None:
            out = torch.ops.quantized.linear_dynamic_fp16(rows, self.packed)
        else:
            out = rows.new_empty(rows.shape[0], self.weight.shape[0])
            for start in range(0, self.weight.shape[0], BLOCK):
                block = self.weight[start: start + BLOCK]
                torch.mm(rows, block.float().T, out=out[:, start: start + block.shape[0]])
        return out.reshape(*hidden.shape[:-1], -1)
