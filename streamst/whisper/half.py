"""Whisper's linear layers and output projection with fp16 weights: on a CPU a decoder token step is bound by reading
its weights (51,864 x 384 of them for the logits alone), and fp16 halves that traffic.

Where the torch build has fbgemm (x86), its fp16 GEMM widens the weights inside the kernel, so several streams'
rows cost about one's (2 threads, this project's 2-core machine: logits of 4 rows 1.8 ms, against 8 ms for an fp16
matrix product and 17 ms in fp32). Elsewhere the fp16 matrix is widened a block of rows at a time (the block stays
in cache, so the traffic stays that of fp16). Either way the arithmetic is fp16 weights times fp32 activations with
fp32 sums: the two paths agree up to the order of the sums. Measured on the five LibriVox clips and JFK through the causal
Whisper (offline, AlignAtt, StreamAtt): the same words and delays as fp32 weights, at 0.6 times the compute.
(int8, torch's dynamic quantisation, was tried and left out: it quantises the activations too and cost 1-6 points
of WER.) Only the runtime's copy of a network is converted; training never sees it.
"""
from __future__ import annotations

import torch
from torch import Tensor, nn

BLOCK = 2048  # weight rows widened at a time without fbgemm (3 MB in fp32)


def fbgemm_available() -> bool:
    """Whether this torch build has fbgemm's fp16 GEMM (x86 builds do)."""
    return "fbgemm" in torch.backends.quantized.supported_engines


class HalfLinear(nn.Module):
    """x @ weight.T + bias with `weight` [out, in] held in fp16 (x: [..., in] -> [..., out], fp32)."""

    def __init__(self, weight: Tensor, bias: Tensor | None = None, fbgemm: bool = True):
        super().__init__()
        weight = weight.detach().half()
        self.bias = None if bias is None else bias.detach().float()
        self.packed = None
        if fbgemm and fbgemm_available():  # fbgemm keeps its own fp16 copy, and adds the bias
            self.packed = torch.ops.quantized.linear_prepack_fp16(weight.float(), self.bias)
        self.weight = weight if self.packed is None else None  # the fallback's matrix (not held twice)
        self.out_features = weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        rows = x.reshape(-1, x.shape[-1]).float()
        if self.packed is not None:
            out = torch.ops.quantized.linear_dynamic_fp16(rows, self.packed)
        else:
            out = rows.new_empty(rows.shape[0], self.out_features)
            for start in range(0, self.out_features, BLOCK):
                block = self.weight[start: start + BLOCK]
                torch.mm(rows, block.float().T, out=out[:, start: start + block.shape[0]])
            if self.bias is not None:
                out += self.bias
        return out.reshape(*x.shape[:-1], self.out_features)


def half_linears(net: nn.Module) -> nn.Module:
    """Swap every `nn.Linear` of `net`, in place, for a `HalfLinear` of its weights; returns `net`."""
    for name, child in net.named_children():
        if isinstance(child, nn.Linear):
            setattr(net, name, HalfLinear(child.weight, child.bias))
        else:
            half_linears(child)
    return net
