"""Per-chunk time of the cached encoder (features included) at 10 s and 300 s into a stream.

    python bench/encoder_chunk.py [--model PATH] [--chunk-ms 320]

Without --model it uses the default ModelConfig at random initialisation: the figure is about speed only.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
import torch


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None)
    ap.add_argument("--chunk-ms", type=float, default=320.0)
    ap.add_argument("--seconds", type=float, default=300.0)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    if args.model:
        from streamst.checkpoint import load_model

        model = load_model(args.model)
    else:
        from streamst.model import ModelConfig, SpeechTranslator
        from streamst.streaming_model import StreamingSpeechModel
        from streamst.tokenizer import Tokenizer

        tok = Tokenizer.train(["a b c d e f g h"] * 10, 20)
        model = StreamingSpeechModel(SpeechTranslator(ModelConfig()), tok, tok, torch.zeros(80), torch.ones(80),
                                     task="asr", src_lang="en", tgt_lang="en", name="random-default-config")
    n = int(16000 * args.chunk_ms / 1000)
    rng = np.random.default_rng(0)
    state = model.init_state()
    times: dict[int, list[float]] = {}
    marks = [10, args.seconds]
    total_chunks = int(args.seconds * 1000 / args.chunk_ms) + 26
    for i in range(total_chunks):
        chunk = torch.from_numpy((0.05 * rng.standard_normal(n)).astype(np.float32))
        t0 = time.perf_counter()
        _, state = model.encode(chunk, state)
        dt = (time.perf_counter() - t0) * 1000
        pos = (i + 1) * args.chunk_ms / 1000
        for m in marks:
            if m <= pos < m + 25 * args.chunk_ms / 1000:
                times.setdefault(m, []).append(dt)
    params = sum(p.numel() for p in model.net.parameters()) / 1e6
    print(f"model {model.name} ({params:.1f}M params), chunk {args.chunk_ms:.0f} ms, torch threads {torch.get_num_threads()}")
    for m in marks:
        print(f"encoder per chunk at {m:.0f} s: median {statistics.median(times[m]):.1f} ms over {len(times[m])} chunks")


if __name__ == "__main__":
    main()
