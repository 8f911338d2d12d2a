"""`streamst export-onnx MODEL --out DIR [--int8]`: write the encoder, memory and decoder steps as ONNX graphs."""
from __future__ import annotations

import argparse
import importlib
import shutil
from pathlib import Path

EXPORT_MODULES = ("onnx", "onnxscript")  # torch.onnx.export(dynamo=True) needs both; onnxruntime is a dependency


def require_onnx_export(command: str) -> None:
    """Fail before any work when the packages ONNX export needs are missing, naming the extra that has them."""
    missing = []
    for name in EXPORT_MODULES:
        try:
            importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise ValueError(f"`streamst {command}` exports ONNX graphs, which needs {' and '.join(missing)}: "
                         "pip install 'streamst[onnx]' (or pip install onnx onnxscript)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("model", help="model name (see `streamst models`) or checkpoint path")
    parser.add_argument("--out", required=True, help="folder to write (created if missing)")
    parser.add_argument("--int8", action="store_true", help="dynamic int8 quantisation of the weights (onnxruntime)")


def run(args: argparse.Namespace) -> int:
    from streamst.checkpoint import load_model
    from streamst.onnx_export import export_onnx

    require_onnx_export("export-onnx")
    out_dir = Path(args.out)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} exists and is not a folder")
    model = load_model(args.model)
    created = not out_dir.exists()
    try:
        out = export_onnx(model, out_dir, int8=args.int8)
    except BaseException:
        if created and out_dir.is_dir():  # leave no half-written folder behind
            shutil.rmtree(out_dir, ignore_errors=True)
        raise
    kind = "int8" if args.int8 else "fp32"
    print(f"exported {model.name or args.model} ({kind}) to {out}: encoder.onnx, memory.onnx, decoder.onnx")
    return 0
