"""What one Session's decoder does on real speech: per policy, the RTF, the tokens each chunk's call writes, the
forced prefix it re-reads, and the tokens committed over the stream.

    python bench/session_decode.py                                   # en-de, wait-k, AlignAtt and StreamAtt
    python bench/session_decode.py --model en-asr --policies "waitk:k=3" --no-bounds

Audio: 20 s of pocketsphinx-testdata's LibriVox speech (the clips of bench/load.py), in 320 ms chunks, torch
backend, one thread. `--no-bounds` turns off the session's decoding budgets (`partial_words`, `max_tokens_per_s`)
to show what they save.
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from load import speech  # bench/load.py: the LibriVox clips

from streamst.audio import AudioFormat
from streamst.checkpoint import load_model
from streamst.policies import parse_policy
from streamst.session import Session


def run(model_name: str, policy: str, audio: np.ndarray, bounds: bool) -> dict:
    model = load_model(model_name)
    calls: list[tuple[int, int]] = []
    decode = model.decode

    def counted(memory, prefix, state, **kw):
        hyp, state = decode(memory, prefix, state, **kw)
        calls.append((len(prefix), len(hyp.tokens)))
        return hyp, state

    model.decode = counted
    extra = {} if bounds else {"partial_words": None, "max_tokens_per_s": None}
    session = Session(model, parse_policy(policy), AudioFormat(), chunk_ms=320, **extra)
    step = 5120
    times = []
    for i in range(0, audio.size, step):
        t0 = time.perf_counter()
        session.push(audio[i:i + step])
        times.append(time.perf_counter() - t0)
    session.finish()
    prefix, new = np.array(calls).T if calls else (np.zeros(1), np.zeros(1))
    return {"policy": policy, "rtf": float(np.mean(times) / 0.32), "chunk_ms_p95": float(np.percentile(times, 95) * 1e3),
            "new_tokens_per_call": float(new.mean()), "prefix_tokens_per_call": float(prefix.mean()),
            "tokens_committed": session.tokens_committed, "words": len(session.words)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="en-de-espeak")
    ap.add_argument("--policies", default="waitk:k=3;alignatt:frames=4;streamatt:frames=4,history_words=20")
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--no-bounds", action="store_true", help="decode whole continuations, no stream length bound")
    args = ap.parse_args()
    torch.set_num_threads(1)
    variants, _ = speech(None, args.seconds)
    audio = variants[0].astype(np.float32)
    print(f"{args.model}, {audio.size / 16000:.1f} s of LibriVox, bounds {'off' if args.no_bounds else 'on'}")
    for spec in filter(None, (p.strip() for p in args.policies.split(";"))):
        r = run(args.model, spec, audio, not args.no_bounds)
        print(f"{r['policy']:40s} RTF {r['rtf']:.3f}  chunk p95 {r['chunk_ms_p95']:6.1f} ms  "
              f"tokens/call {r['new_tokens_per_call']:5.1f}  prefix/call {r['prefix_tokens_per_call']:6.1f}  "
              f"committed {r['tokens_committed']} tokens, {r['words']} words")


if __name__ == "__main__":
    main()
