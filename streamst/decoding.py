"""The one decode loop: batch-first greedy decoding (and beam search) after a forced prefix, keeping each token's
cross-attention, for every model family.

In the style of openai/whisper's `decoding.py`: one loop, and what differs between families is a `Family` of
hooks (the end token, suppressed tokens, which position's cross-attention a token's row is, whether the stop
rule reads it, whether the budget's last step still reads the end token) plus a `Step` that runs the family's
decoder for the rows still going. The families' decoders (the own model's batched slot-buffer decoder in
`streamst.decoder_batch`, any `Decoder`-like callable such as the ONNX graphs, Whisper's) only compute logits
and attention; choosing tokens, the stop rule and the repetition guard happen here, once.

The repetition guard (one behaviour for every family): a unit of 1..16 tokens repeated 3 times in a row (a
single token 5 times) at the end of a continuation is a decoder loop; decoding stops there and the loop is
kept once (`cut_loop`), and the hypothesis counts as ended (the decoder has nothing more to say here).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Protocol

import numpy as np
import torch
from torch import Tensor

from streamst.speech_model import Hypothesis

MIN_LOOP_TOKENS = 6  # no loop is looked for in a continuation shorter than this


def loop_length(tokens: list[int], min_repeats: int = 3, max_unit: int = 16) -> int | None:
    """Where a decoder loop at the end of `tokens` (a unit of 1..max_unit tokens repeated min_repeats+ times in a
    row; 5+ times for a single token) ends its first occurrence: the length to keep; None when there is none."""
    n = len(tokens)
    for unit in range(1, max_unit + 1):
        repeats = 5 if unit == 1 else min_repeats
        if n < unit * repeats:
            break
        tail = tokens[n - unit:]
        if all(tokens[n - unit * (r + 1): n - unit * r] == tail for r in range(repeats)):
            start = n - unit * repeats
            while start - unit >= 0 and tokens[start - unit: start] == tail:
                start -= unit
            return start + unit
    return None


def cut_loop(tokens: list[int], rows: list, min_repeats: int = 3, max_unit: int = 16):
    """The repetition guard's cut: a loop at the end is kept once; returns (tokens, rows, looped)."""
    keep = loop_length(tokens, min_repeats, max_unit)
    if keep is None:
        return tokens, rows, False
    return tokens[:keep], rows[:keep], True


def loops(tokens: list[int]) -> bool:
    """The guard's test after each token: the continuation now ends in a decoder loop."""
    return len(tokens) >= MIN_LOOP_TOKENS and loop_length(tokens) is not None


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


@dataclass(frozen=True)
class Family:
    """What a model family changes in the one loop.

    `suppress(logits [n, V], index)`: logits with the tokens the family never writes at token `index` masked
    (Whisper's specials and its begin-suppressed tokens); `input_rows`: a token's attention row is that of the
    position the token is fed to (Whisper's alignment heads) instead of the position that predicted it;
    `attention_stop`: the stop rule's attention test reads the rows (False where they are not over the memory
    the policy sees); `peek_end`: at the budget, the next token is still read to know whether it is the end
    (free where `input_rows` already ran that step); `project(states [n, D]) -> logits [n, V]`: the step returns
    final decoder states and only the rows that go on are projected (with `input_rows` the step runs before the
    stop test, and the output projection is the costliest part of a token on a CPU)."""

    eos: int
    suppress: Callable[[Tensor, int], Tensor] | None = None
    input_rows: bool = False
    attention_stop: bool = True
    peek_end: bool = False
    project: Callable[[Tensor], Tensor] | None = None


class Step(Protocol):
    def __call__(self, rows: list[int], tokens: list[int]) -> tuple[Tensor, list[Tensor]]:
        """Feed `tokens[i]` to row `rows[i]` (ids of the batch given at the start): the next logits
        [len(rows), V] (final states [len(rows), D] for a family that `project`s) and each row's cross-attention
        [layers, heads, 1, frames] of that position. Rows not listed have finished and are never listed again."""
        ...


def greedy(logits: Tensor, first_rows: list[Tensor | None], step: Step, budgets: list[int],
           trackers: list[StopTracker], family: Family) -> list[Hypothesis]:
    """Greedy continuations of a batch: `logits` [B, V] and `first_rows` (the cross-attention of the position
    that predicts each row's first token) come from the prefix pass; row i writes at most `budgets[i]` tokens
    and stops where `trackers[i]` or the repetition guard says."""
    b = logits.shape[0]
    tokens: list[list[int]] = [[] for _ in range(b)]
    rows: list[list[Tensor]] = [[] for _ in range(b)]
    scores, ended = [0.0] * b, [False] * b
    held = list(first_rows)  # per row: the attention of the position whose logits are next
    alive = [r for r in range(b) if budgets[r] > 0 or family.peek_end]
    current = logits[alive] if len(alive) < b else logits
    index = 0
    while alive:
        x = current if family.suppress is None else family.suppress(current, index)
        logp = x.float().log_softmax(-1)
        best = logp.argmax(-1)
        best_logp = logp.gather(1, best[:, None])[:, 0].tolist()
        chosen, chosen_at = [], []
        for j, (r, tok) in enumerate(zip(alive, best.tolist())):
            if tok == family.eos:
                ended[r] = True
                continue
            if len(tokens[r]) >= budgets[r]:
                continue  # the budget's last peek
            scores[r] += best_logp[j]
            tokens[r].append(tok)
            if not family.input_rows:
                rows[r].append(held[r])
            chosen.append(r)
            chosen_at.append(j)
        if family.input_rows and chosen:
            nxt, fed = step(chosen, [tokens[r][-1] for r in chosen])
            for r, row in zip(chosen, fed):
                rows[r].append(row)
        going = []
        for k, r in enumerate(chosen):
            row = rows[r][-1] if family.attention_stop else None
            stop = trackers[r].add(tokens[r][-1], row) or loops(tokens[r])
            if not stop and (len(tokens[r]) < budgets[r] or (family.peek_end and family.input_rows)):
                going.append(k)
        alive = [chosen[k] for k in going]
        if not alive:
            break
        if family.input_rows:
            current = nxt[going] if len(going) < len(chosen) else nxt
        else:
            current, fed = step(alive, [tokens[r][-1] for r in alive])
            for r, row in zip(alive, fed):
                held[r] = row
        if family.project is not None:
            current = family.project(current)
        index += 1
    out = []
    for r in range(b):
        toks, att, looped = cut_loop(tokens[r], rows[r])
        empty = first_rows[r][:, :, :0] if first_rows[r] is not None else None
        attention = torch.cat(att, dim=2) if att else empty
        out.append(Hypothesis(tokens=toks, attention=attention, ended=ended[r] or looped, score=scores[r]))
    return out


# ---------------------------------------------------------------------------------------------- the own family


@torch.inference_mode()
def decode(
    decoder,
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
    mem_kv=None,
) -> Hypothesis:
    """Continue after `prefix` over `memory` [T, d] with the project's decoder (torch `Decoder`, or anything
    called like it, as the ONNX graphs are). Attention rows are those of the decoder position that predicted
    each token, shaped [layers, heads, n_tokens, T]; `prefix_attention` likewise for the prefix. Greedy decoding
    ends early where `stop` says the policy can commit no more this chunk; beam search ignores it (its best
    hypothesis is only known at the end). `mem_kv`: the memory's keys/values per layer, when the caller keeps
    them (`streamst.memory_cache`)."""
    from streamst.decoder_batch import CallDecoder

    run = CallDecoder(decoder, memory, prefix, bos, mem_kv)
    if beam <= 1:
        hyp = greedy(run.logits, run.first_rows, run.step, [max_tokens], [StopTracker(stop, word_start_ids)],
                     Family(eos))[0]
    else:
        hyp = _beam(decoder, run.mem_kv, run.caches, run.logits[0].log_softmax(-1), run.first_rows[0], eos,
                    max_tokens, beam, length_penalty)
    hyp.prefix_attention = run.prefix_attention
    return hyp


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
            if loops(seq):
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
    toks, rows, looped = cut_loop(seq, list(a.unbind(2)) if a.shape[2] else [])
    a = torch.stack(rows, dim=2) if rows else a[:, :, :0]
    return Hypothesis(tokens=toks, attention=a, ended=ended or looped, score=score)
