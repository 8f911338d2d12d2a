"""What int8 costs: the same speech through the torch, fp32 onnx and int8 onnx backends, compared word for word.

For each backend, on each utterance: the words the Session commits (a streaming policy, the model's own
decoding) and the CTC transcript of the encoder (the source side, which an ST model's decoder hides).
Reported: agreement of int8 with fp32 (1 - word edit rate against the fp32 words: 1.0 means identical),
of fp32 onnx with torch, and each backend's quality against the references (BLEU for ST, WER for ASR, CTC WER).
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

SAMPLE_WAV = Path(__file__).resolve().parent / "assets" / "sample-en.wav"


@dataclass
class Utterance:
    audio: np.ndarray  # 16 kHz mono float32
    source: str
    target: str


def sample_utterances() -> list[Utterance]:
    """The shipped sample (English speech with its German translation)."""
    from streamst.audio import read_audio

    audio, rate = read_audio(SAMPLE_WAV)
    if rate != 16000:
        raise ValueError(f"{SAMPLE_WAV}: expected 16 kHz, got {rate}")
    meta = json.loads(SAMPLE_WAV.with_suffix(".json").read_text())
    return [Utterance(np.ascontiguousarray(audio[:, 0]), meta["source"], meta["target"])]


def mustc_utterances(root: str | Path, pair: str, split: str, limit: int) -> list[Utterance]:
    """The first `limit` segments of a MuST-C-layout split (e.g. the synthetic tst-COMMON)."""
    from streamst.data.mustc import load_segment_audio, read_split

    segments = read_split(root, pair, split)[:limit]
    if not segments:
        raise ValueError(f"no segments in {root} {pair} {split}")
    return [Utterance(load_segment_audio(s), s.source, s.target) for s in segments]


def session_words(model: Any, audio: np.ndarray, policy: str) -> list[str]:
    """Every word the Session commits on this audio, finish included."""
    from streamst.events import Word
    from streamst.policies import parse_policy
    from streamst.session import Session

    s = Session(model, parse_policy(policy))
    events = []
    for i in range(0, audio.size, 5120):
        events += s.push(audio[i:i + 5120])
    events += s.finish()
    return [e.text for e in events if isinstance(e, Word)]


def ctc_text(model: Any, audio: np.ndarray) -> str:
    """Greedy CTC transcript of the streamed encoder output over the whole utterance."""
    state, frames = model.init_state(), []
    for i in range(0, audio.size, 5120):
        f, state = model.encode(torch.from_numpy(audio[i:i + 5120]), state)
        frames.append(f)
    f, state = model.encode(torch.zeros(0), state, final=True)
    frames.append(f)
    return model.src_tokenizer.decode(model.ctc_tokens(torch.cat(frames)))


def agreement(hyps: list[str], refs: list[str]) -> float:
    """1 - (word edits / reference words) over the corpus, floored at 0; 1.0 when both sides are empty."""
    from streamst.eval.quality import edit_distance, normalize

    edits = total = 0
    for h, r in zip(hyps, refs):
        rw, hw = normalize(r).split(), normalize(h).split()
        edits += edit_distance(rw, hw)
        total += len(rw)
    if total == 0:
        return 1.0 if edits == 0 else 0.0
    return max(0.0, 1.0 - edits / total)


def compare_backends(models: dict[str, Any], utterances: list[Utterance], policy: str = "waitk:k=2") -> dict:
    """{"<name>": {words, bleu|wer, ctc_wer}, "agreement": {"<a>_vs_<b>": ...}} for models named
    torch, onnx (fp32) and int8 (any subset); the first model's task decides BLEU (st) or WER (asr)."""
    from streamst.eval.quality import bleu, wer

    task = next(iter(models.values())).task
    refs = [u.target if task == "st" else u.source for u in utterances]
    src = [u.source for u in utterances]
    out: dict[str, Any] = {"utterances": len(utterances), "policy": policy, "task": task}
    hyps, ctc = {}, {}
    for name, model in models.items():
        hyps[name] = [" ".join(session_words(model, u.audio, policy)) for u in utterances]
        ctc[name] = [ctc_text(model, u.audio) for u in utterances]
        score = {"bleu": bleu(hyps[name], refs).score} if task == "st" else {"wer": wer(hyps[name], refs)}
        out[name] = {**score, "ctc_wer": wer(ctc[name], src)}
    pairs = [("int8", "onnx"), ("onnx", "torch"), ("int8", "torch")]
    out["agreement"] = {f"{a}_vs_{b}": agreement(hyps[a], hyps[b]) for a, b in pairs if a in hyps and b in hyps}
    out["ctc_agreement"] = {f"{a}_vs_{b}": agreement(ctc[a], ctc[b]) for a, b in pairs if a in ctc and b in ctc}
    out["examples"] = {name: h[0] for name, h in hyps.items()}
    return out
