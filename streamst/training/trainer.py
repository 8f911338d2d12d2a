"""Train on a MuST-C-layout split: cached features, length-bucketed batches, AdamW with warm-up, periodic
atomic checkpoints and exact resume (model, optimiser, scheduler, RNG and step are all saved)."""
from __future__ import annotations

import json
import math
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

from streamst.checkpoint import save_checkpoint
from streamst.data.mustc import iter_segment_audio, read_split_checked
from streamst.features import utterance_features
from streamst.model import ModelConfig, SpeechTranslator
from streamst.tokenizer import Tokenizer
from streamst.training.step import collate, loss_fn, spec_augment


@dataclass
class TrainConfig:
    corpus: str
    pair: str = "en-de"
    out: str = "runs/model"
    steps: int = 20000
    max_frames: int = 6000  # feature frames (10 ms) per batch
    lr: float = 1.5e-3
    warmup: int = 1000
    weight_decay: float = 0.01
    ctc_weight: float = 0.3
    label_smoothing: float = 0.1
    chunks: tuple[int, ...] = (4, 8, 16, 32)
    src_vocab: int = 1000
    tgt_vocab: int = 1000
    accum: int = 1
    save_every: int = 500
    seed: int = 0
    model: dict = field(default_factory=dict)  # ModelConfig overrides


def prepare_split(cfg: TrainConfig, split: str, log: Callable[[str], None]) -> list[tuple[torch.Tensor, str, str]]:
    """(fp16 features, source, target) per segment, cached in the output folder."""
    cache = Path(cfg.out) / f"feats-{split}.pt"
    if cache.exists():
        return torch.load(cache, weights_only=True)["items"]
    segments, problems = read_split_checked(cfg.corpus, cfg.pair, split)
    for p in problems:
        log(f"skipped {p}")
    items = []
    for seg, audio in iter_segment_audio(segments):
        if audio.size < 1600:
            log(f"skipped {seg.wav}:{seg.index}: segment shorter than 0.1 s")
            continue
        items.append((utterance_features(torch.from_numpy(audio)).half(), seg.source, seg.target))
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"items": items}, cache.with_suffix(".tmp"))
    os.replace(cache.with_suffix(".tmp"), cache)
    return items


def bucket_batches(lengths: list[int], max_frames: int, gen: random.Random) -> list[list[int]]:
    """Group indices of similar length so each batch holds about `max_frames` padded frames."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], gen.random()))
    batches, cur, longest = [], [], 0
    for i in order:
        longest_new = max(longest, lengths[i])
        if cur and longest_new * (len(cur) + 1) > max_frames:
            batches.append(cur)
            cur, longest_new = [], lengths[i]
        cur.append(i)
        longest = longest_new
    if cur:
        batches.append(cur)
    gen.shuffle(batches)
    return batches


def train(cfg: TrainConfig, log: Callable[[str], None] = print) -> Path:
    """Run (or resume) training; returns the path of the final checkpoint."""
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "train_config.json").write_text(json.dumps(cfg.__dict__, indent=1, default=list))
    torch.manual_seed(cfg.seed)
    gen = random.Random(cfg.seed)
    items = prepare_split(cfg, "train", log)
    tok_path = out / "tokenizers.pt"
    if tok_path.exists():
        toks = torch.load(tok_path, weights_only=True)
        src_tok, tgt_tok = Tokenizer(toks["src"]), Tokenizer(toks["tgt"])
    else:
        src_tok = Tokenizer.train([s for _, s, _ in items], cfg.src_vocab)
        same = cfg.pair.split("-")[0] == cfg.pair.split("-")[1]
        tgt_tok = src_tok if same else Tokenizer.train([t for _, _, t in items], cfg.tgt_vocab)
        torch.save({"src": src_tok.model_proto, "tgt": tgt_tok.model_proto}, tok_path)
    feats = [f for f, _, _ in items]
    sample = torch.cat([f.float() for f in feats[:2000]])
    mean, std = sample.mean(0), sample.std(0).clamp(min=1e-3)
    data = [(f, src_tok.encode(s), tgt_tok.encode(t)) for f, s, t in items]
    mcfg = ModelConfig.from_dict({**ModelConfig().to_dict(), **cfg.model, "src_vocab": len(src_tok), "tgt_vocab": len(tgt_tok)})
    net = SpeechTranslator(mcfg)
    opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay, betas=(0.9, 0.98))
    lr_at = lambda s: min((s + 1) / cfg.warmup, math.sqrt(cfg.warmup / (s + 1)))  # noqa: E731
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lr_at)
    step, epoch, batch_pos = 0, 0, 0
    state_path = out / "last.state"
    if state_path.exists():
        st = torch.load(state_path, weights_only=False)
        net.load_state_dict(st["net"])
        opt.load_state_dict(st["opt"])
        sched.load_state_dict(st["sched"])
        step, epoch, batch_pos = st["step"], st["epoch"], st["batch_pos"]
        gen.setstate(st["gen"])
        torch.set_rng_state(st["torch_rng"])
        log(f"resumed at step {step} (epoch {epoch}, batch {batch_pos})")
    lengths = [f.shape[0] for f, _, _ in data]

    def save(final: bool = False) -> Path:
        tmp = state_path.with_suffix(".tmp")
        torch.save({"net": net.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step,
                    "epoch": epoch, "batch_pos": batch_pos, "gen": gen.getstate(), "torch_rng": torch.get_rng_state()}, tmp)
        os.replace(tmp, state_path)
        src, tgt = cfg.pair.split("-")
        task = "asr" if src == tgt else "st"
        return save_checkpoint(out / ("model.pt" if final else f"step{step}.pt"), net, src_tok, tgt_tok, mean, std,
                               task=task, src_lang=src, tgt_lang=tgt,
                               meta={"steps": step, "corpus": str(cfg.corpus), "pair": cfg.pair})

    net.train()
    t0, seen = time.time(), 0
    while step < cfg.steps:
        epoch_gen = random.Random(cfg.seed * 1000 + epoch)
        batches = bucket_batches(lengths, cfg.max_frames, epoch_gen)
        while batch_pos < len(batches) and step < cfg.steps:
            b = collate([(((data[i][0].float() - mean) / std), data[i][1], data[i][2]) for i in batches[batch_pos]],
                        tgt_tok.bos, tgt_tok.eos)
            b.feats = spec_augment(b.feats, b.feat_lens, gen)
            loss, parts = loss_fn(net, b, gen.choice(cfg.chunks), ctc_weight=cfg.ctc_weight,
                                  label_smoothing=cfg.label_smoothing)
            (loss / cfg.accum).backward()
            batch_pos += 1
            seen += int(b.feat_lens.sum())
            if batch_pos % cfg.accum == 0:
                torch.nn.utils.clip_grad_norm_(net.parameters(), 5.0)
                opt.step()
                opt.zero_grad()
                sched.step()
                step += 1
                if step % 50 == 0:
                    el = time.time() - t0
                    log(f"step {step} epoch {epoch} loss {float(loss):.3f} ce {parts['ce']:.3f} ctc {parts['ctc']:.3f} "
                        f"lr {sched.get_last_lr()[0]:.2e} {seen / 100 / el:.0f}x audio/s")
                if step % cfg.save_every == 0:
                    net.eval()
                    p = save()
                    net.train()
                    log(f"saved {p}")
        if batch_pos >= len(batches):
            epoch, batch_pos = epoch + 1, 0
    net.eval()
    return save(final=True)
