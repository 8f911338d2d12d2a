"""One training step: label-smoothed cross-entropy on the decoder plus CTC on the encoder, with SpecAugment
and a random attention chunk per batch so one model serves several latencies."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from streamst.model import SpeechTranslator


@dataclass
class Batch:
    feats: Tensor  # [B, T, mels], normalised
    feat_lens: Tensor  # [B]
    src: Tensor  # [B, S] CTC targets (padded with 0)
    src_lens: Tensor  # [B]
    tgt_in: Tensor  # [B, U] BOS + target
    tgt_out: Tensor  # [B, U] target + EOS, padded with -100


def collate(items: list[tuple[Tensor, list[int], list[int]]], bos: int, eos: int) -> Batch:
    """(features, source ids, target ids) triples -> a padded batch."""
    b = len(items)
    t = max(f.shape[0] for f, _, _ in items)
    s = max(1, max(len(x) for _, x, _ in items))
    u = max(len(y) for _, _, y in items) + 1
    feats = torch.zeros(b, t, items[0][0].shape[1])
    src = torch.zeros(b, s, dtype=torch.long)
    tgt_in = torch.zeros(b, u, dtype=torch.long)
    tgt_out = torch.full((b, u), -100, dtype=torch.long)
    for i, (f, x, y) in enumerate(items):
        feats[i, : f.shape[0]] = f
        src[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        tgt_in[i, : len(y) + 1] = torch.tensor([bos] + y)
        tgt_out[i, : len(y) + 1] = torch.tensor(y + [eos])
    return Batch(
        feats, torch.tensor([f.shape[0] for f, _, _ in items]), src, torch.tensor([len(x) for _, x, _ in items]), tgt_in, tgt_out
    )


def spec_augment(feats: Tensor, lens: Tensor, gen: random.Random, freq_masks: int = 2, freq_width: int = 12,
                 time_masks: int = 2, time_ratio: float = 0.05) -> Tensor:
    """Zero random frequency bands and time spans (SpecAugment without warping)."""
    feats = feats.clone()
    for i in range(feats.shape[0]):
        n = int(lens[i])
        for _ in range(freq_masks):
            w = gen.randint(0, freq_width)
            f0 = gen.randint(0, feats.shape[2] - w)
            feats[i, :n, f0:f0 + w] = 0.0
        for _ in range(time_masks):
            w = gen.randint(0, max(1, int(n * time_ratio)))
            t0 = gen.randint(0, max(0, n - w))
            feats[i, t0:t0 + w] = 0.0
    return feats


def loss_fn(net: SpeechTranslator, batch: Batch, chunk: int, *, ctc_weight: float = 0.3,
            label_smoothing: float = 0.1) -> tuple[Tensor, dict]:
    """Joint loss on one batch with the given attention chunk (in encoder frames)."""
    enc, enc_lens = net.encoder(batch.feats, batch.feat_lens, chunk, net.cfg.left_frames)
    log_probs = net.ctc(enc).log_softmax(-1).transpose(0, 1)
    ctc = F.ctc_loss(log_probs, batch.src, enc_lens, batch.src_lens, blank=net.ctc_blank, zero_infinity=True)
    if ctc_weight >= 1.0:  # encoder pre-training (the ASR-first recipe): the decoder is not run at all
        return ctc, {"ce": 0.0, "ctc": float(ctc.detach())}
    valid = torch.arange(enc.shape[1], device=enc.device)[None, :] < enc_lens[:, None]
    mem_kv = net.decoder.project_memory(enc)
    logits, _, _ = net.decoder(batch.tgt_in, mem_kv, mem_mask=valid, pad_mask=None)
    ce = F.cross_entropy(logits.transpose(1, 2), batch.tgt_out, ignore_index=-100, label_smoothing=label_smoothing)
    loss = (1 - ctc_weight) * ce + ctc_weight * ctc
    return loss, {"ce": float(ce.detach()), "ctc": float(ctc.detach())}
