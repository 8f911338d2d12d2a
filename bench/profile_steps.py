"""Where does a streaming chunk's time go? Profiles the real Session loop and the per-chunk steps on both backends.

1. Breakdown: the Session loop (a policy, the model's own decoding) on real speech, with timers around the
   features, the encoder step, the decoder, the policy; python overhead is the session's compute minus those.
2. torch: torch.profiler, operators by self CPU time. onnxruntime: its built-in profiler, nodes by op type.

    python bench/profile_steps.py [--model M] [--chunks 60] [--policy alignatt:frames=4] [--repeat 8]
"""
from __future__ import annotations

import argparse
import collections
import functools
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from streamst.commands.bench import MEMORY_FRAMES, NEW_TOKENS, PREFIX_TOKENS, default_model, synthetic_chunk

SAMPLE = Path(__file__).resolve().parents[1] / "streamst" / "assets" / "sample-en.wav"


def drive(model, chunks: int) -> None:
    state, memory = model.init_state(), None
    prefix = list(range(4, 4 + PREFIX_TOKENS))
    for i in range(chunks):
        frames, state = model.encode(synthetic_chunk(i), state)
        memory = frames if memory is None else torch.cat([memory, frames])[-MEMORY_FRAMES:]
        _, state = model.decode(memory, prefix, state, max_tokens=NEW_TOKENS)


class Timers:
    """Accumulated seconds by name; `wrap(obj, attr, name)` times every call of obj.attr."""

    def __init__(self):
        self.total: dict[str, float] = collections.Counter()

    def wrap(self, obj, attr: str, name: str) -> None:
        fn = getattr(obj, attr)

        @functools.wraps(fn)
        def timed(*a, **k):
            t0 = time.perf_counter()
            try:
                return fn(*a, **k)
            finally:
                self.total[name] += time.perf_counter() - t0

        setattr(obj, attr, timed)


def breakdown(model, backend_module, policy: str, audio: np.ndarray, repeat: int) -> dict:
    """Shares of the Session's compute: features, encoder step, decoder, policy, the rest (python glue)."""
    from streamst.policies import parse_policy
    from streamst.session import Session

    timers = Timers()
    cls = type(parse_policy(policy))  # policies are frozen dataclasses: their class's decide is timed
    saved = {k: getattr(backend_module, k) for k in ("stream_features", "normalize")}
    saved_decide = cls.__dict__["decide"]
    try:
        for name in saved:  # module globals the model's encode calls
            timers.wrap(backend_module, name, "features")
        timers.wrap(cls, "decide", "policy")
        timers.wrap(model, "encode", "encode")  # features + encoder step
        timers.wrap(model, "decode", "decoder")
        compute = audio_s = 0.0
        for _ in range(repeat):
            s = Session(model, parse_policy(policy))
            for i in range(0, audio.size, 5120):
                s.push(audio[i:i + 5120])
            s.finish()
            st = s.stats()
            compute += st["compute_s"]
            audio_s += st["audio_s"]
    finally:
        for k, v in saved.items():
            setattr(backend_module, k, v)
        cls.decide = saved_decide
        del model.encode, model.decode  # back to the class methods
    t = timers.total
    enc = t["encode"] - t["features"]
    parts = {"features": t["features"], "encoder": enc, "decoder": t["decoder"], "policy": t["policy"]}
    parts["python"] = compute - sum(parts.values())
    return {"rtf": compute / audio_s, "compute_s": compute, "audio_s": audio_s,
            "share": {k: v / compute for k, v in parts.items()}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--chunks", type=int, default=60)
    ap.add_argument("--policy", default="alignatt:frames=4")
    ap.add_argument("--repeat", type=int, default=8, help="times the sample is streamed for the breakdown")
    ap.add_argument("--breakdown-only", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(1)
    import streamst.onnx_backend as onnx_backend
    import streamst.streaming_model as streaming_model
    from streamst.checkpoint import load_model
    from streamst.onnx_backend import OnnxSpeechModel
    from streamst.onnx_export import export_onnx
    from streamst.testing import read_wav

    model = load_model(args.model) if args.model else default_model()[0]
    audio, sr = read_wav(SAMPLE)
    assert sr == 16000, sr
    tmp = tempfile.TemporaryDirectory()
    export_onnx(model, tmp.name)
    onnx_model = OnnxSpeechModel(tmp.name, threads=1)
    print(f"Session breakdown: policy {args.policy}, {args.repeat} x {audio.size / sr:.1f} s of {SAMPLE.name}")
    for name, m, mod in (("torch", model, streaming_model), ("onnx", onnx_model, onnx_backend)):
        res = breakdown(m, mod, args.policy, audio, args.repeat)
        shares = ", ".join(f"{k} {100 * v:.0f}%" for k, v in res["share"].items())
        print(f"  {name:5s}: RTF {res['rtf']:.4f} ({res['compute_s']:.2f} s for {res['audio_s']:.1f} s): {shares}")
    if args.breakdown_only:
        return 0

    drive(model, 5)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        drive(model, args.chunks)
    print("torch eager, top operators by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))

    import onnxruntime as ort

    sessions = {}
    for name in ("encoder", "memory", "decoder"):
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 1
        opts.enable_profiling = True
        opts.profile_file_prefix = f"{tmp.name}/{name}"
        sessions[name] = ort.InferenceSession(f"{tmp.name}/{name}.onnx", opts, providers=["CPUExecutionProvider"])
    onnx_model.encoder_session = sessions["encoder"]
    onnx_model.decoder.memory_session, onnx_model.decoder.decoder_session = sessions["memory"], sessions["decoder"]
    drive(onnx_model, args.chunks)
    print("onnxruntime, time by graph and op type (ms over the run):")
    for name, sess in sessions.items():
        by_op: dict[str, float] = collections.Counter()
        total = 0.0
        for ev in json.load(open(sess.end_profiling())):
            if ev.get("cat") == "Node" and ev["name"].endswith("_kernel_time"):
                by_op[ev["args"].get("op_name", "?")] += ev["dur"] / 1000
            elif ev.get("cat") == "Session" and ev["name"] == "model_run":
                total += ev["dur"] / 1000
        top = ", ".join(f"{op} {ms:.1f}" for op, ms in sorted(by_op.items(), key=lambda kv: -kv[1])[:8])
        print(f"  {name}: run {total:.1f} ms, kernels {sum(by_op.values()):.1f} ms: {top}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
