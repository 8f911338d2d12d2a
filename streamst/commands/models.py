"""`streamst models`: the models that load offline, with their task and languages."""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("paths", nargs="*", help="describe these model folders or files instead")
    parser.add_argument("--json", action="store_true", help="print one JSON object")


def run(args: argparse.Namespace) -> int:
    import json

    from pathlib import Path

    from streamst.checkpoint import available_models, describe_model, resolve_model

    paths = {p: resolve_model(p) for p in getattr(args, "paths", [])} or available_models()
    rows = [describe_model(Path(name).name, path) for name, path in paths.items()]
    if args.json:
        print(json.dumps({"models": rows}, indent=1))
        return 0
    if not rows:
        print("no models installed; see README (Default models)")
    for r in rows:
        print(f"{r['name']:<18} {r['task']:<4} {r['languages']:<6} {r['size_mb']:>6.1f} MB  {r['path']}")
        if "format" in r:
            print(f"{'':<18} {r['format']}")
    return 0
