"""Copy a trained run's model into the package as a shipped default: fp16 weights plus its model card.

    python scripts/ship_model.py runs/en-asr/model.pt en-asr   # -> streamst/assets/models/en-asr.pt (+ .md)
"""
from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import torch

from streamst.checkpoint import ASSETS, read_checkpoint

LIMIT_MB = 40  # issue #5: each shipped file at most 40 MB


def ship(src: Path, name: str, dest: Path = ASSETS) -> Path:
    """Write <dest>/<name>.pt with floating-point weights in fp16 (the rest unchanged) and copy the card."""
    obj = read_checkpoint(src)
    obj["state_dict"] = {k: v.half() if v.is_floating_point() else v for k, v in obj["state_dict"].items()}
    out = dest / f"{name}.pt"
    tmp = out.with_name(out.name + ".tmp")
    torch.save(obj, tmp)
    tmp.replace(out)
    size = out.stat().st_size / 1e6
    if size > LIMIT_MB:
        out.unlink()
        raise SystemExit(f"{out}: {size:.1f} MB is over the {LIMIT_MB} MB limit for shipped models")
    card = src.with_name("model.md")
    if card.exists():
        shutil.copyfile(card, dest / f"{name}.md")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path, help="a run's model.pt")
    parser.add_argument("name", help="shipped model name, e.g. en-asr, en-de, en-es")
    parser.add_argument("--dest", type=Path, default=ASSETS, help="folder to write into (default: the package's models)")
    args = parser.parse_args()
    out = ship(args.model, args.name, args.dest)
    print(f"{out} ({out.stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
