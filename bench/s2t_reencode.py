"""Cost of streaming a non-causal S2T encoder by re-encoding (issue #18): time per 320 ms chunk against the audio
the stream holds, for fairseq's s2t_transformer_s (the size of facebook/s2t-small-mustc-*) and FBK's Conformer
(12 x 512), with random weights (speed does not depend on them; no download).

    python bench/s2t_reencode.py [--arch s2t_transformer_s|conformer] [--held 1,2,4,8,16,30,60] [--threads 1]
                                 [--json out.json]

Per held length it times one chunk's `encode` (fbank of the new 320 ms, CMVN and the encoder over everything
held) and one greedy `decode` of 10 tokens after a 20-token forced prefix, median of --repeat runs. Then a 60 s
stream through a Session with AlignAtt (memory grows with the stream) and with StreamAtt (max_memory_s bounds it).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import numpy as np
import torch

from streamst.s2t.bundle import S2TBundle
from streamst.s2t.config import S2TConfig
from streamst.s2t.features import Cmvn
from streamst.s2t.fixtures import dictionary, tiny_spm
from streamst.s2t.net import S2TNet
from streamst.s2t.streaming import S2TStreamingModel
from streamst.s2t.tokenizer import VocabTokenizer

ARCHS = {
    "s2t_transformer_s": dict(d_model=256, encoder_layers=12, encoder_heads=4, encoder_ffn=2048, decoder_layers=6,
                              decoder_heads=4, decoder_ffn=2048, vocab_size=8000),
    "conformer": dict(encoder="conformer", d_model=512, encoder_layers=12, encoder_heads=8, encoder_ffn=2048,
                      conformer_kernel=31, decoder_layers=6, decoder_heads=8, decoder_ffn=2048, vocab_size=8000),
}


def random_model(arch: str) -> S2TStreamingModel:
    """A random model of the architecture's size behind the streaming interface."""
    torch.manual_seed(0)
    cfg = S2TConfig(**ARCHS[arch])
    net = S2TNet(cfg)
    proto = tiny_spm(44, "word")
    vocab = dictionary(proto)
    vocab += [f"<unused:{i}>" for i in range(len(vocab), cfg.vocab_size)]
    bundle = S2TBundle(cfg, net.fairseq_state(), VocabTokenizer(proto, vocab), Cmvn("utterance"), source=arch)
    return S2TStreamingModel(bundle)


def noise(seconds: float) -> torch.Tensor:
    rng = np.random.default_rng(0)
    return torch.from_numpy((rng.normal(0, 0.1, int(seconds * 16000))).astype(np.float32))


def per_chunk(model: S2TStreamingModel, held_s: float, repeat: int) -> dict:
    """Median ms of one 320 ms chunk's encode and one decode when `held_s` seconds are already held."""
    audio = noise(held_s + 0.32)
    _, held = model.encode(audio[: int(held_s * 16000)], model.init_state())
    chunk = audio[int(held_s * 16000):]
    enc, dec = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        memory, state = model.encode(chunk, held)
        t1 = time.perf_counter()
        model.decode(memory, list(range(10, 30)), state, max_tokens=10)
        enc.append((t1 - t0) * 1000)
        dec.append((time.perf_counter() - t1) * 1000)
    return {"held_s": held_s, "frames": int(memory.shape[0]), "encode_ms": statistics.median(enc),
            "decode_ms": statistics.median(dec)}


def stream(model: S2TStreamingModel, policy: str, seconds: float) -> dict:
    """A whole stream through a Session: compute per second of audio."""
    from streamst.policies import parse_policy
    from streamst.session import Session

    session = Session(model, parse_policy(policy), chunk_ms=320)
    audio = noise(seconds).numpy()
    for i in range(0, audio.size, 5120):
        session.push(audio[i:i + 5120])
    session.finish()
    return {"policy": policy, "audio_s": seconds, "compute_s": session.compute_s, "rtf": session.compute_s / seconds,
            "held_at_end_s": session.model_state.audio.numel() / 16000}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", choices=sorted(ARCHS), default="s2t_transformer_s")
    ap.add_argument("--held", default="1,2,4,8,16,30,60", help="seconds held before the timed chunk")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--stream-s", type=float, default=60.0, help="length of the Session runs (0: skip them)")
    ap.add_argument("--json", help="also write the figures here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    model = random_model(args.arch)
    rows = [per_chunk(model, float(h), args.repeat) for h in args.held.split(",")]
    print(f"{args.arch}, {args.threads} thread(s), CPU: one 320 ms chunk")
    print(f"{'held s':>7} {'frames':>7} {'encode ms':>10} {'decode ms':>10} {'x real time':>12}")
    for r in rows:
        total = r["encode_ms"] + r["decode_ms"]
        print(f"{r['held_s']:>7.0f} {r['frames']:>7} {r['encode_ms']:>10.1f} {r['decode_ms']:>10.1f} "
              f"{total / 320:>12.2f}")
    streams = []
    if args.stream_s > 0:
        for policy in ("alignatt:frames=4", "streamatt:frames=4,history_words=20,max_memory_s=10"):
            s = stream(model, policy, args.stream_s)
            streams.append(s)
            print(f"{policy}: {s['audio_s']:.0f} s of audio in {s['compute_s']:.1f} s (RTF {s['rtf']:.2f}), "
                  f"{s['held_at_end_s']:.1f} s held at the end")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"arch": args.arch, "threads": args.threads, "per_chunk": rows,
                       "streams": streams}, f, indent=1)


if __name__ == "__main__":
    main()
