"""Committed words and their delays for every policy, lone and batched, torch and ONNX, on the tiny test model
and the shipped models: what `tests/test_pinned.py` holds the decode loop, the prefix cache and the step engine
to. `python tests/pinned.py --write` (re)writes tests/fixtures/pinned.json from the code as it is."""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
TINY = FIXTURES / "pinned-tiny.pt"  # a copy of the tiny test model (tests/conftest.py retrains when code changes)
OUT = FIXTURES / "pinned.json"
POLICIES = ["waitk:k=2", "la", "edatt", "alignatt", "streamatt", "offline"]
LEADS = (0, 1700)  # leading silence (samples) of the batched streams, so they differ in age
PIECE = 1600  # samples per push (100 ms): the chunker makes the 320 ms chunks
# (model, backend, policies, beam): own family on torch and ONNX, the causal Whisper translator and recogniser
CASES = [
    ("tiny", "torch", POLICIES, 1), ("tiny", "onnx", POLICIES, 1), ("tiny", "torch", ["alignatt", "waitk:k=2"], 3),
    ("en-de-espeak", "torch", POLICIES, 1), ("en-de-espeak", "onnx", ["alignatt", "streamatt"], 1),
    ("en-de-espeak", "torch", ["alignatt"], 3),
    ("en-de", "torch", POLICIES, 1), ("en-de", "torch", ["alignatt"], 3),
    ("whisper-tiny.en-causal", "torch", ["alignatt", "streamatt", "waitk:k=2"], 1),
    ("whisper-tiny.en", "torch", ["alignatt"], 1),
]


def clip() -> np.ndarray:
    """The bundled sample three times with 0.5 s pauses (about 10 s: StreamAtt drops memory and history)."""
    from streamst.audio import read_audio

    sample = read_audio(ROOT / "streamst" / "assets" / "sample-en.wav")[0][:, 0]
    pause = np.zeros(8000, np.float32)
    return np.concatenate([sample, pause, sample, pause, sample]).astype(np.float32)


def load(name: str, backend: str, tmp: Path):
    """The model a case names, on its backend (ONNX: exported into tmp)."""
    from streamst.checkpoint import load_model

    model = load_model(str(TINY) if name == "tiny" else name)
    if backend == "onnx":
        from streamst.onnx_backend import load_onnx_model
        from streamst.onnx_export import export_onnx

        model = load_onnx_model(export_onnx(model, tmp / f"{name}-onnx"))
    return model


def _words(events) -> list[list]:
    from streamst.events import Word

    return [[e.text, round(e.emitted_ms, 2), None if e.start_ms is None else round(e.start_ms, 2),
             None if e.end_ms is None else round(e.end_ms, 2)] for e in events if isinstance(e, Word)]


def lone(model, policy: str, audio: np.ndarray, beam: int) -> list[list]:
    """One Session alone: its words as [text, emitted_ms, start_ms, end_ms]."""
    from streamst.policies import parse_policy
    from streamst.session import Session

    session = Session(model, parse_policy(policy), beam=beam)
    events = []
    for i in range(0, len(audio), PIECE):
        events += session.push(audio[i:i + PIECE])
    return _words(events + session.finish())


def batched(model, policy: str, audios: list[np.ndarray], beam: int) -> list[list[list]]:
    """The streams in lockstep through the server's batched step (`step_sessions`), one chunk each per round."""
    from streamst.batching.sessions import step_sessions
    from streamst.policies import parse_policy
    from streamst.session import Session

    sessions = [Session(model, parse_policy(policy), beam=beam) for _ in audios]
    queues = []
    for s, a in zip(sessions, audios):
        chunks = []
        for i in range(0, len(a), PIECE):
            chunks += s.take_chunks(a[i:i + PIECE])
        queues.append(chunks + s.take_final_chunks())
    events: list[list] = [[] for _ in sessions]
    while any(queues):
        rows = [(i, q.pop(0)) for i, q in enumerate(queues) if q]
        outs = step_sessions([(sessions[i], chunk, final) for i, (chunk, final) in rows])
        for (i, (_, final)), out in zip(rows, outs):
            if isinstance(out, BaseException):
                raise out
            events[i] += out
            if final and not queues[i]:  # as the server's scheduler: a model that ended early gets more passes
                queues[i] += sessions[i].another_final_pass()
                sessions[i].finished = not queues[i]
    return [_words(e) for e in events]


def streams() -> list[np.ndarray]:
    """The clip behind each lead of silence."""
    audio = clip()
    return [np.concatenate([np.zeros(n, np.float32), audio]) for n in LEADS]


def case(model, policy: str, beam: int) -> dict:
    """One case's words: every stream alone, and (greedy) all of them batched."""
    audios = streams()
    out = {"lone": [lone(model, policy, s, beam) for s in audios]}
    if beam == 1:  # beam search streams take their own calls in a batched round
        out["batched"] = batched(model, policy, audios, beam)
    return out


def key(name: str, backend: str, policy: str, beam: int) -> str:
    return f"{name}/{backend}/{policy}/beam={beam}"


def compute(cases=CASES) -> dict:
    """Every case's words, keyed 'model/backend/policy/beam'."""
    import torch

    torch.set_num_threads(1)
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, backend, policies, beam in cases:
            model = load(name, backend, Path(tmp))
            for policy in policies:
                k = key(name, backend, policy, beam)
                out[k] = case(model, policy, beam)
                print(k, len(out[k]["lone"][0]), "words", file=sys.stderr)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--write", action="store_true", help="rewrite tests/fixtures/pinned.json")
    parser.add_argument("--tiny", help="the tiny test model to copy to tests/fixtures/pinned-tiny.pt first")
    args = parser.parse_args()
    FIXTURES.mkdir(parents=True, exist_ok=True)
    if args.tiny:
        shutil.copyfile(args.tiny, TINY)
    result = compute()
    if args.write:
        OUT.write_text(json.dumps(result, indent=0, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
