"""Dev-set quality during training: greedy decoding of whole utterances, then BLEU/chrF (translation) or WER
(recognition) through `streamst.eval.quality`, the same scorers `streamst eval` uses."""
from __future__ import annotations

import torch
from torch import Tensor

from streamst.decoding import decode
from streamst.eval import quality
from streamst.model import SpeechTranslator
from streamst.tokenizer import Tokenizer


def pick_segments(count: int, limit: int) -> list[int]:
    """Indices of at most `limit` of `count` segments, evenly spread so every talk and voice is represented."""
    if limit <= 0 or count <= limit:
        return list(range(count))
    return [int(i * count / limit) for i in range(limit)]


def _encoded_batches(net: SpeechTranslator, feats: list[Tensor], device: torch.device, batch_size: int):
    """(input indices, encoder frames [B, T4, d], lengths) over length-sorted batches, with the model's own
    inference chunk, so the memory equals what the stream would build."""
    order = sorted(range(len(feats)), key=lambda i: feats[i].shape[0])
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        lens = torch.tensor([feats[i].shape[0] for i in idx])
        batch = torch.zeros(len(idx), int(lens.max()), feats[idx[0]].shape[1])
        for row, i in enumerate(idx):
            batch[row, : feats[i].shape[0]] = feats[i]
        enc, enc_lens = net.encoder(batch.to(device), lens.to(device), net.cfg.chunk_frames, net.cfg.left_frames)
        yield idx, enc, enc_lens


@torch.inference_mode()
def greedy_transcripts(net: SpeechTranslator, feats: list[Tensor], tokenizer: Tokenizer, *, device: torch.device,
                       batch_size: int = 16) -> list[str]:
    """Greedy whole-utterance decoder outputs for normalised feature matrices [T, mels], in input order."""
    was_training = net.training
    net.eval()
    out: list[str] = [""] * len(feats)
    for idx, enc, enc_lens in _encoded_batches(net, feats, device, batch_size):
        for row, i in enumerate(idx):
            n = int(enc_lens[row])
            max_tokens = min(net.cfg.max_target_len - 2, n // 2 + 16)
            hyp = decode(net.decoder, enc[row, :n].float(), [], tokenizer.bos, tokenizer.eos, max_tokens=max_tokens)
            out[i] = tokenizer.decode(hyp.tokens)
    net.train(was_training)
    return out


@torch.inference_mode()
def ctc_transcripts(net: SpeechTranslator, feats: list[Tensor], tokenizer: Tokenizer, *, device: torch.device,
                    batch_size: int = 16) -> list[str]:
    """Greedy CTC outputs (best piece per frame, repeats merged, blanks dropped): what an encoder pre-trained
    with CTC alone can be scored by."""
    was_training = net.training
    net.eval()
    out: list[str] = [""] * len(feats)
    for idx, enc, enc_lens in _encoded_batches(net, feats, device, batch_size):
        best = net.ctc(enc).argmax(-1).tolist()
        for row, i in enumerate(idx):
            pieces = [t for j, t in enumerate(best[row][: int(enc_lens[row])])
                      if t != net.ctc_blank and (j == 0 or t != best[row][j - 1])]
            out[i] = tokenizer.decode(pieces)
    net.train(was_training)
    return out


def score(hypotheses: list[str], references: list[str], task: str) -> dict[str, float]:
    """{'bleu', 'chrf'} for translation, {'wer'} for recognition (percentages)."""
    if task == "asr":
        w = quality.wer(hypotheses, references)
        return {"wer": round(w, 2) if w is not None else float("nan")}
    return {"bleu": round(quality.bleu(hypotheses, references).score, 2),
            "chrf": round(quality.chrf(hypotheses, references).score, 2)}


def evaluate_dev(net: SpeechTranslator, dev: list[tuple[Tensor, str]], tokenizer: Tokenizer, task: str, *,
                 device: torch.device, ctc: bool = False) -> tuple[dict[str, float], list[str]]:
    """Scores and outputs on (normalised features, reference) pairs; `ctc` scores the CTC head instead of the
    decoder (for ASR, where `tokenizer` is the source one)."""
    transcribe = ctc_transcripts if ctc else greedy_transcripts
    hyps = transcribe(net, [f for f, _ in dev], tokenizer, device=device)
    return score(hyps, [r for _, r in dev], task), hyps
