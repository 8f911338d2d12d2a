"""What N streams of the causal Whisper cost when stepped together, as the server's batching scheduler steps them.

N sessions of the same policy each take the same LibriVox audio in 320 ms chunks, all in one `step_sessions` call
per chunk (so every round batches N streams: lockstep flatters the server, whose streams arrive at staggered
phases; `bench/load.py` is the end-to-end figure). Prints compute per second of audio, round p50/p95, and where
the time went (encoders, prefix passes, token steps, logits), per second of audio; checks that every stream
wrote the same words.

    python bench/lockstep.py [--streams 8] [--policy alignatt:frames=4] [--seconds 26] [--threads 1] [--json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    import torch

    from streamst.batching.sessions import step_sessions
    from streamst.checkpoint import load_model
    from streamst.policies import parse_policy
    from streamst.session import Session
    from streamst.whisper import streaming
    from profile_steps import Timers
    from whisper_eval import librivox_clips

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="whisper-tiny.en-causal")
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--policy", default="alignatt:frames=4")
    ap.add_argument("--seconds", type=float, default=26.0, help="audio per stream (the clips in a row, cut)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (the server's in bench/load.py: 1)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = load_model(args.model)
    audio = np.concatenate([a for _, a, _ in librivox_clips()])[: int(args.seconds * 16000)]
    timers = Timers()
    timers.wrap(type(model), "encode_batch", "encoders")
    timers.wrap(streaming._BatchStep, "start", "prefix_passes")
    timers.wrap(streaming._BatchStep, "step", "token_steps")
    timers.wrap(streaming._BatchStep, "project", "logits")
    sessions = [Session(model, parse_policy(args.policy), chunk_ms=320) for _ in range(args.streams)]
    chunk, rounds = 5120, []
    began = time.perf_counter()
    for i in range(0, audio.size, chunk):
        start = time.perf_counter()
        step_sessions([(s, audio[i:i + chunk], i + chunk >= audio.size) for s in sessions])
        rounds.append(time.perf_counter() - start)
    wall = time.perf_counter() - began
    seconds = audio.size / 16000
    ms = np.array(rounds) * 1000
    result = {"model": args.model, "policy": args.policy, "streams": args.streams, "threads": args.threads,
              "compute_per_audio_s": round(wall / seconds, 3), "round_p50_ms": round(float(np.percentile(ms, 50))),
              "round_p95_ms": round(float(np.percentile(ms, 95))),
              **{k: round(v / seconds, 3) for k, v in timers.total.items()},
              "words": len(sessions[0].words), "same_words": all(s.words == sessions[0].words for s in sessions)}
    print(f"{args.streams} streams of {args.policy}, {seconds:.1f} s each, {args.threads} thread(s): "
          f"{result['compute_per_audio_s']} s of compute per s of audio (round p50 {result['round_p50_ms']} ms, "
          f"p95 {result['round_p95_ms']} ms); per s of audio: "
          + ", ".join(f"{k.replace('_', ' ')} {result[k]}"
                      for k in ("encoders", "prefix_passes", "token_steps", "logits"))
          + f"; {result['words']} words, the same in every stream: {result['same_words']}")
    if args.json:
        print(json.dumps(result))
    return 0 if result["same_words"] else 1


if __name__ == "__main__":
    sys.exit(main())
