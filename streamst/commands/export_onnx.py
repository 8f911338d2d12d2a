"""`streamst export-onnx MODEL --out DIR [--int8]`: write the encoder, memory and decoder steps as ONNX graphs."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name (see `streamst models`) or checkpoint path")
    parser.add_argument("--out", required=True, help="folder to write (created if missing)")
    parser.add_argument("--int8", action="store_true", help="dynamic int8 quantisation of the weights (onnxruntime)")


def run(args: argparse.Namespace) -> int:
    from streamst.checkpoint import load_model
    from streamst.onnx_export import export_onnx

    model = load_model(args.model)
    out = export_onnx(model, args.out, int8=args.int8)
    kind = "int8" if args.int8 else "fp32"
    print(f"exported {model.name or args.model} ({kind}) to {out}: encoder.onnx, memory.onnx, decoder.onnx")
    return 0
