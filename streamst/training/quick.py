"""Train a small model in memory from (audio, source text, target text) utterances.

Used by the test suite (a tiny model in a minute or two) and by `streamst demo` when no trained default
model is installed. The full trainer (`streamst train`) shares the same step and checkpoint format.
"""
from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from streamst.checkpoint import save_checkpoint
from streamst.features import utterance_features
from streamst.model import ModelConfig, SpeechTranslator
from streamst.tokenizer import Tokenizer
from streamst.training.step import collate, loss_fn, spec_augment


@dataclass
class Utterance:
    audio: np.ndarray  # 16 kHz mono float32
    source: str
    target: str


def train_small(
    utterances: list[Utterance],
    out: str | Path,
    *,
    task: str = "asr",
    src_lang: str = "en",
    tgt_lang: str = "en",
    cfg: ModelConfig | None = None,
    steps: int = 400,
    batch_size: int = 8,
    lr: float = 2e-3,
    chunks: tuple[int, ...] = (4, 8, 16),
    vocab_size: int = 64,
    seed: int = 0,
    augment: bool = False,
    log: Callable[[str], None] | None = None,
) -> Path:
    """Fit a model to `utterances` and write a checkpoint; returns its path."""
    torch.manual_seed(seed)
    gen = random.Random(seed)
    src_tok = Tokenizer.train([u.source for u in utterances], vocab_size)
    tgt_tok = src_tok if task == "asr" else Tokenizer.train([u.target for u in utterances], vocab_size)
    feats = [utterance_features(torch.from_numpy(u.audio)) for u in utterances]
    allf = torch.cat(feats)
    mean, std = allf.mean(0), allf.std(0).clamp(min=1e-3)
    items = [((f - mean) / std, src_tok.encode(u.source), tgt_tok.encode(u.target)) for f, u in zip(feats, utterances)]
    cfg = cfg or ModelConfig()
    cfg.src_vocab, cfg.tgt_vocab = len(src_tok), len(tgt_tok)
    net = SpeechTranslator(cfg)
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=0.01)
    warm = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min((s + 1) / warm, max(0.05, (steps - s) / (steps - warm + 1))))
    net.train()
    for step in range(steps):
        batch = collate(gen.sample(items, min(batch_size, len(items))), tgt_tok.bos, tgt_tok.eos)
        if augment:
            batch.feats = spec_augment(batch.feats, batch.feat_lens, gen)
        loss, parts = loss_fn(net, batch, gen.choice(chunks))
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()
        sched.step()
        if log and (step % 50 == 0 or step == steps - 1):
            log(f"step {step} loss {float(loss):.3f} ce {parts['ce']:.3f} ctc {parts['ctc']:.3f}")
    net.eval()
    return save_checkpoint(out, net, src_tok, tgt_tok, mean, std, task=task, src_lang=src_lang, tgt_lang=tgt_lang,
                           meta={"trained_steps": steps, "utterances": len(utterances)})
