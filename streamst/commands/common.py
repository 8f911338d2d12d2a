"""Options shared by the commands that stream audio through a model: model, policy, chunk, beam, backend."""
from __future__ import annotations

import argparse

DEFAULT_MODELS = {"st": "en-de", "asr": "en-asr"}
FALLBACK_MODELS = {"asr": ["whisper-tiny.en"], "st": []}


def default_model(task: str) -> str:
    """The default model of a task: the shipped one, else an installed fallback (Whisper tiny.en for ASR)."""
    from streamst.checkpoint import available_models

    have = available_models()
    for name in [DEFAULT_MODELS[task], *FALLBACK_MODELS[task]]:
        if name in have:
            return name
    return DEFAULT_MODELS[task]


def add_stream_options(parser: argparse.ArgumentParser, task: str) -> None:
    parser.add_argument("--model", default=None,
                        help=f"model name (see `streamst models`) or file; default: {DEFAULT_MODELS[task]}")
    parser.add_argument("--policy", default="alignatt:frames=4",
                        help="read/write policy spec, e.g. waitk:k=3, la:n=2, alignatt:frames=4, offline")
    parser.add_argument("--chunk-ms", type=float, default=320.0, help="audio chunk length in ms (default 320)")
    parser.add_argument("--beam", type=int, default=1, help="beam size (1 = greedy)")
    parser.add_argument("--backend", choices=["torch", "onnx"], default="torch",
                        help="torch, or onnx (MODEL is then a folder written by `streamst export-onnx`)")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (default 1: one chunk's work is small, and more threads "
                             "thrash when anything else runs)")


def load_stream_model(name: str | None, task: str, backend: str = "torch", threads: int = 1):
    """The model to stream with: the named one, or the default one for the task."""
    import torch

    if threads < 1:
        raise ValueError(f"--threads must be >= 1, got {threads}")
    torch.set_num_threads(threads)
    if backend == "onnx":
        if not name:
            raise ValueError("--backend onnx needs --model DIR (a folder written by `streamst export-onnx`)")
        from streamst.onnx_backend import load_onnx_model

        return load_onnx_model(name, threads=threads)
    from streamst.checkpoint import load_model

    return load_model(name or default_model(task))
