"""Where does a streaming chunk's time go? Profiles the per-chunk encoder + bounded decoder on both backends.

torch: torch.profiler, operators by self CPU time. onnxruntime: its built-in profiler, nodes by op type.

    python bench/profile_steps.py [--model M] [--chunks 60]
"""
from __future__ import annotations

import argparse
import collections
import json
import tempfile

import numpy as np
import torch

from streamst.commands.bench import MEMORY_FRAMES, NEW_TOKENS, PREFIX_TOKENS, default_model, synthetic_chunk


def drive(model, chunks: int) -> None:
    state, memory = model.init_state(), None
    prefix = list(range(4, 4 + PREFIX_TOKENS))
    for i in range(chunks):
        frames, state = model.encode(synthetic_chunk(i), state)
        memory = frames if memory is None else torch.cat([memory, frames])[-MEMORY_FRAMES:]
        model.decode(memory, prefix, max_tokens=NEW_TOKENS)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model")
    ap.add_argument("--chunks", type=int, default=60)
    args = ap.parse_args()
    torch.set_num_threads(1)
    from streamst.checkpoint import load_model
    from streamst.onnx_backend import OnnxSpeechModel
    from streamst.onnx_export import export_onnx

    model = load_model(args.model) if args.model else default_model()[0]
    drive(model, 5)
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        drive(model, args.chunks)
    print("torch eager, top operators by self CPU time:")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=15))

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        export_onnx(model, tmp)
        onnx_model = OnnxSpeechModel(tmp, threads=1)
        sessions = {}
        for name in ("encoder", "memory", "decoder"):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads = 1
            opts.enable_profiling = True
            opts.profile_file_prefix = f"{tmp}/{name}"
            sessions[name] = ort.InferenceSession(f"{tmp}/{name}.onnx", opts, providers=["CPUExecutionProvider"])
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
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
