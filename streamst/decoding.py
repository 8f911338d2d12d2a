"""Greedy and beam search over the decoder, forcing a prefix and keeping each token's cross-attention."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import Tensor

from streamst.model import Decoder
from streamst.speech_model import Hypothesis


def repeats_at_end(tokens: list[int], max_ngram: int = 4, times: int = 3) -> bool:
    """True when the sequence ends with one n-gram repeated `times` times in a row (a decoder loop)."""
    for n in range(1, max_ngram + 1):
        need = n * (times + (1 if n == 1 else 0))  # a single token may legitimately repeat once more
        if len(tokens) >= need:
            tail = tokens[-need:]
            if all(tail[i] == tail[i % n] for i in range(need)):
                return True
    return False


@dataclass(frozen=True)
class StopRule:
    """Where the session lets a greedy continuation end, because the policy will commit nothing past it: once it
    holds `max_words` whole words, or `slack_words` words after the word of the first token whose cross-attention
    [layers, heads, 1, frames] `late` flags (the attention policies' own test). The words written past the
    commit point are the partial caption."""

    max_words: int | None = None
    late: Callable[[np.ndarray], bool] | None = None
    slack_words: int = 0


class StopTracker:
    """One continuation's progress against a StopRule, token by token (words counted as the session counts
    them: the first token always begins one)."""

    def __init__(self, rule: StopRule | None, word_start_ids: frozenset[int]):
        rule = rule or StopRule()
        self.limit, self.late, self.slack, self.ids = rule.max_words, rule.late, rule.slack_words, word_start_ids
        self.words = 0

    def add(self, token: int, attention: Tensor | None = None) -> bool:
        """Count one written token (with the attention row that predicted it); True: stop after it."""
        self.words += 1 if self.words == 0 or token in self.ids else 0
        if self.late is not None and attention is not None and self.late(attention.float().cpu().numpy()):
            bound = self.words + self.slack
            self.limit = bound if self.limit is None else min(self.limit, bound)
            self.late = None
        return self.limit is not None and self.words > self.limit


@torch.inference_mode()
def decode(
    decoder: Decoder,
    memory: Tensor,
    prefix: list[int],
    bos: int,
    eos: int,
    *,
    beam: int = 1,
    max_tokens: int = 64,
    length_penalty: float = 1.0,
    stop: StopRule | None = None,
    word_start_ids: frozenset[int] = frozenset(),
) -> Hypothesis:
    """Continue after `prefix` over `memory` [T, d]. Attention rows are those of the decoder position that
    predicted each token, shaped [layers, heads, n_tokens, T]; `prefix_attention` likewise for the prefix.
    Greedy decoding ends early where `stop` says the policy can commit no more this chunk; beam search ignores
    it (its best hypothesis is only known at the end)."""
    mem_kv = decoder.project_memory(memory.unsqueeze(0))
    start = torch.tensor([[bos] + prefix], device=memory.device)
    logits, caches, attn = decoder(start, mem_kv)
    prefix_attn = attn[:, 0, :, :-1] if prefix else None  # positions that predicted the prefix tokens
    logp = logits[0, -1].log_softmax(-1)
    if beam <= 1:
        hyp = _greedy(decoder, mem_kv, caches, logp, attn[:, 0, :, -1:], eos, max_tokens,
                      StopTracker(stop, word_start_ids))
    else:
        hyp = _beam(decoder, mem_kv, caches, logp, attn[:, 0, :, -1:], eos, max_tokens, beam, length_penalty)
    hyp.prefix_attention = prefix_attn
    return hyp


def _greedy(decoder, mem_kv, caches, logp, last_attn, eos, max_tokens, tracker: StopTracker) -> Hypothesis:
    tokens: list[int] = []
    rows: list[Tensor] = []
    score = 0.0
    ended = False
    for _ in range(max_tokens):
        tok = int(logp.argmax())
        if tok == eos:
            ended = True
            break
        score += float(logp[tok])
        tokens.append(tok)
        rows.append(last_attn)
        if tracker.add(tok, last_attn) or repeats_at_end(tokens):
            break
        logits, caches, attn = decoder(torch.tensor([[tok]], device=logp.device), mem_kv, caches=caches)
        logp = logits[0, -1].log_softmax(-1)
        last_attn = attn[:, 0]
    attention = torch.cat(rows, dim=2) if rows else last_attn[:, :, :0]
    return Hypothesis(tokens=tokens, attention=attention, ended=ended, score=score)


def _beam(decoder, mem_kv, caches, logp, first_attn, eos, max_tokens, beam, length_penalty) -> Hypothesis:
    """Standard beam search; finished hypotheses compete by length-normalised log-probability."""
    layers, heads, _, frames = first_attn.shape
    mem_kv_b = [(k.expand(beam, -1, -1, -1), v.expand(beam, -1, -1, -1)) for k, v in mem_kv]
    caches = [(k.expand(beam, -1, -1, -1).contiguous(), v.expand(beam, -1, -1, -1).contiguous()) for k, v in caches]
    seqs: list[list[int]] = [[]]
    scores = torch.zeros(1, device=logp.device)
    attns = [first_attn.new_zeros(layers, heads, 0, frames)]
    cur_attn = first_attn.unsqueeze(0)  # [beams, L, H, 1, S]
    logps = logp.unsqueeze(0)
    finished: list[tuple[float, list[int], Tensor, bool]] = []
    for step in range(max_tokens):
        cand = (scores[:, None] + logps).view(-1)
        top = cand.topk(min(2 * beam, cand.numel()))
        new_seqs, new_scores, new_attns, parents = [], [], [], []
        vocab = logps.shape[1]
        for s, idx in zip(top.values.tolist(), top.indices.tolist()):
            b, tok = divmod(idx, vocab)
            a = torch.cat([attns[b], cur_attn[b]], dim=2)
            if tok == eos:
                finished.append((s / max(1, len(seqs[b])) ** length_penalty, seqs[b], attns[b], True))
                continue
            seq = seqs[b] + [tok]
            if repeats_at_end(seq):
                finished.append((s / len(seq) ** length_penalty, seq, a, False))
                continue
            new_seqs.append(seq)
            new_scores.append(s)
            new_attns.append(a)
            parents.append(b)
            if len(new_seqs) == beam:
                break
        best_done = max((f[0] for f in finished), default=float("-inf"))
        if not new_seqs or (len(finished) >= beam and best_done >= max(new_scores) / max(1, step + 1) ** length_penalty):
            break
        seqs, attns = new_seqs, new_attns
        scores = torch.tensor(new_scores, device=logp.device)
        idx = torch.tensor(parents, device=logp.device)
        caches = [(k[idx], v[idx]) for k, v in caches]
        toks = torch.tensor([[s[-1]] for s in seqs], device=logp.device)
        n = len(seqs)
        logits, caches, attn = decoder(toks, [(k[:n], v[:n]) for k, v in mem_kv_b], caches=caches)
        logps = logits[:, -1].log_softmax(-1)
        cur_attn = attn.permute(1, 0, 2, 3, 4)  # [beams, L, H, 1, S]
    else:
        for s, seq, a in zip(scores.tolist(), seqs, attns):
            finished.append((s / max(1, len(seq)) ** length_penalty, seq, a, False))
    if not finished:
        finished = [(float(s) / max(1, len(seq)), seq, a, False) for s, seq, a in zip(scores.tolist(), seqs, attns)]
    score, seq, a, ended = max(finished, key=lambda f: f[0])
    return Hypothesis(tokens=seq, attention=a, ended=ended, score=score)
