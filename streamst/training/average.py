"""Average the weights of the last step checkpoints of a run into one model (a cheap, reliable gain)."""
from __future__ import annotations

import re
from pathlib import Path

import torch

from streamst.checkpoint import read_checkpoint

_STEP_FILE = re.compile(r"^step(\d+)\.pt$")


def step_checkpoints(folder: str | Path) -> list[Path]:
    """The run's `step<N>.pt` files, oldest step first."""
    found = [(int(m.group(1)), p) for p in Path(folder).glob("step*.pt") if (m := _STEP_FILE.match(p.name))]
    return [p for _, p in sorted(found)]


def average_state_dicts(states: list[dict[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Element-wise mean of floating-point tensors (in fp32); other tensors are taken from the last state."""
    if not states:
        raise ValueError("nothing to average")
    keys = list(states[-1])
    for s in states[:-1]:
        if list(s) != keys:
            raise ValueError("checkpoints to average have different parameters (different model sizes?)")
    out = {}
    for k in keys:
        last = states[-1][k]
        if last.is_floating_point():
            out[k] = (sum(s[k].float() for s in states) / len(states)).to(last.dtype)
        else:
            out[k] = last.clone()
    return out


def average_checkpoints(paths: list[Path], out: str | Path) -> Path:
    """Write a checkpoint with the mean weights of `paths`; config, tokenizers and CMVN come from the last one."""
    if not paths:
        raise ValueError("no step checkpoints to average")
    objs = [read_checkpoint(p) for p in paths]
    last = dict(objs[-1])
    last["state_dict"] = average_state_dicts([o["state_dict"] for o in objs])
    last["meta"] = {**last.get("meta", {}), "averaged": [Path(p).name for p in paths]}
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    torch.save(last, tmp)
    tmp.replace(out)
    return out


def prune_step_checkpoints(folder: str | Path, keep: int) -> list[Path]:
    """Delete all but the newest `keep` step checkpoints (keep <= 0 keeps all); returns what was deleted."""
    if keep <= 0:
        return []
    old = step_checkpoints(folder)[:-keep]
    for p in old:
        p.unlink(missing_ok=True)
    return old
