"""Model cards: a markdown file next to each trained model saying what data, size, compute and dev scores it has."""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch


def hardware_description(device: torch.device, world_size: int = 1) -> str:
    """'1 x NVIDIA H100 80GB HBM3' or '2 CPU cores (x86_64)': what the run trained on."""
    if device.type == "cuda":
        return f"{world_size} x {torch.cuda.get_device_name(device)}"
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    procs = f"{world_size} processes on " if world_size > 1 else ""
    return f"{procs}{cores} CPU cores ({platform.machine()}, torch threads {torch.get_num_threads()})"


@dataclass
class CardFacts:
    """What a model card reports; the trainer fills it in."""

    name: str
    task: str  # "asr" or "st"
    pair: str
    corpus: str
    train_segments: int
    train_hours: float
    skipped_entries: int
    config: dict
    parameters: int
    steps: int
    epochs: float
    train_seconds: float
    hardware: str
    precision: str
    batch_frames: int
    accum: int
    averaged: list[str] = field(default_factory=list)
    init_encoder: str = ""
    init_model: str = ""  # a whole model this run fine-tuned
    dev_history: list[dict] = field(default_factory=list)  # {"step": n, metric: value}
    final_dev: dict = field(default_factory=dict)
    dev_segments: int = 0
    command: str = ""


def _duration(seconds: float) -> str:
    h, rem = divmod(int(seconds), 3600)
    m, s = divmod(rem, 60)
    return f"{h} h {m:02d} min" if h else f"{m} min {s:02d} s"


def render_card(facts: CardFacts, model_file: Path | None = None) -> str:
    """The card as markdown."""
    src, tgt = facts.pair.split("-")
    what = f"English speech recognition ({src})" if facts.task == "asr" else f"Speech translation {src} -> {tgt}"
    size = f", file {model_file.stat().st_size / 1e6:.1f} MB" if model_file and model_file.exists() else ""
    arch = ", ".join(f"{k}={facts.config[k]}" for k in ("d_model", "n_heads", "enc_layers", "dec_layers", "ff_mult",
                                                       "conv_kernel", "sub_channels", "chunk_frames", "left_frames",
                                                       "src_vocab", "tgt_vocab") if k in facts.config)
    lines = [
        f"# {facts.name}", "", what + ".", "",
        "## Data",
        f"- corpus: `{facts.corpus}` (MuST-C layout), pair {facts.pair}, split train",
        f"- {facts.train_segments} training segments, {facts.train_hours:.2f} h of audio; "
        f"{facts.skipped_entries} manifest entries skipped as bad (see the training log)",
        "",
        "## Model",
        f"- causal chunked Conformer encoder + CTC head + Transformer decoder: {facts.parameters / 1e6:.2f} M parameters"
        f"{size}",
        f"- {arch}",
    ]
    if facts.init_encoder:
        lines.append(f"- encoder and CTC head initialised from `{facts.init_encoder}`")
    if facts.init_model:
        lines.append(f"- every weight, both tokenizers and CMVN initialised from `{facts.init_model}` (fine-tuned)")
    lines += [
        "",
        "## Training",
        f"- {facts.steps} updates ({facts.epochs:.1f} epochs), batches of about {facts.batch_frames} feature frames"
        f" x {facts.accum} accumulation",
        f"- {_duration(facts.train_seconds)} of training on {facts.hardware}, {facts.precision}",
    ]
    if facts.averaged:
        lines.append(f"- final weights: average of {len(facts.averaged)} checkpoints ({', '.join(facts.averaged)})")
    if facts.command:
        lines.append(f"- command: `{facts.command}`")
    lines += ["", "## Dev metrics", ""]
    if facts.final_dev:
        metric_text = ", ".join(f"{k.upper()} {v:.2f}" for k, v in facts.final_dev.items())
        lines.append(f"Final model, greedy offline decoding of {facts.dev_segments} dev segments: {metric_text}.")
        lines.append("")
    if facts.dev_history:
        keys = [k for k in facts.dev_history[-1] if k != "step"]
        lines.append("| step | " + " | ".join(k.upper() for k in keys) + " |")
        lines.append("|---:|" + "---:|" * len(keys))
        for row in facts.dev_history:
            lines.append(f"| {row['step']} | " + " | ".join(f"{row.get(k, float('nan')):.2f}" for k in keys) + " |")
    if not facts.final_dev and not facts.dev_history:
        lines.append("No dev evaluation was run (no dev split, or --dev-every 0 and --dev-segments 0).")
    return "\n".join(lines) + "\n"


def write_card(path: str | Path, facts: CardFacts, model_file: Path | None = None) -> Path:
    """Write the card (atomically) and return its path."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(render_card(facts, model_file), encoding="utf-8")
    tmp.replace(path)
    return path
