"""Low-rank adapters on Whisper's attention projections: trained as `LoRALinear`, shipped as the factors alone
(a small file) and merged into the base weights when a model loads."""
from __future__ import annotations

import torch
from torch import Tensor, nn

PROJECTIONS = ("query", "key", "value", "out")


class LoRALinear(nn.Module):
    """`base(x) + scale * x A^T B^T`, with B zero at the start so the layer begins as the base layer."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float):
        super().__init__()
        self.base = base
        self.a = nn.Parameter(torch.randn(rank, base.in_features) / rank)
        self.b = nn.Parameter(torch.zeros(base.out_features, rank))
        self.scale = alpha / rank

    def forward(self, x: Tensor) -> Tensor:
        return self.base(x) + (x @ self.a.T @ self.b.T) * self.scale


def add_lora(net: nn.Module, rank: int = 16, alpha: float = 32.0) -> list[str]:
    """Wrap every attention projection of `net` (encoder and decoder, self and cross) in place; freeze the rest.
    Returns the wrapped weights' names as they appear in the base model's state dict."""
    for p in net.parameters():
        p.requires_grad_(False)
    names = []
    for module_name, module in list(net.named_modules()):
        for proj in PROJECTIONS:
            layer = getattr(module, proj, None)
            if isinstance(layer, nn.Linear) and module_name.endswith(("attn", "cross_attn")):
                setattr(module, proj, LoRALinear(layer, rank, alpha))
                names.append(f"{module_name}.{proj}.weight")
    return names


def lora_factors(net: nn.Module) -> dict[str, Tensor]:
    """{'<base weight name>.lora_a' / '.lora_b': factor} with the scale folded into B."""
    out = {}
    for name, module in net.named_modules():
        if isinstance(module, LoRALinear):
            out[f"{name}.weight.lora_a"] = module.a.detach().clone()
            out[f"{name}.weight.lora_b"] = (module.b.detach() * module.scale).clone()
    return out


def merge_factors(state_dict: dict[str, Tensor], factors: dict[str, Tensor]) -> dict[str, Tensor]:
    """The base weights with each W replaced by W + B A (factors as `lora_factors` writes them)."""
    merged = dict(state_dict)
    for key, a in factors.items():
        if not key.endswith(".lora_a"):
            continue
        weight = key[: -len(".lora_a")]
        if weight not in merged:
            raise ValueError(f"adapter for {weight!r}, which the base model does not have")
        b = factors[weight + ".lora_b"]
        merged[weight] = merged[weight].float() + b.float() @ a.float()
    return merged
