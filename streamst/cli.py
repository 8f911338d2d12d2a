"""`streamst` command line: a table of subcommands, each a module with `add_arguments(parser)` and `run(args)`.

Modules are imported only when their subcommand runs, so `streamst score` never loads torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "translate": ("streamst.commands.files", "stream audio files through a translation model"),
    "transcribe": ("streamst.commands.files", "stream audio files through a recognition model"),
    "models": ("streamst.commands.models", "list the models available offline"),
    "score": ("streamst.eval.score_cli", "score a SimulEval instances.log / OmniSTEval JSONL / simulstream log"),
    "eval": ("streamst.eval.runner", "evaluate a model and policy on a MuST-C split"),
    "sweep": ("streamst.eval.sweep", "run a latency-quality sweep over policy settings"),
    "data": ("streamst.data.cli", "build corpora (`streamst data synth --out DIR`)"),
    "train": ("streamst.training.cli", "train an offline model"),
    "bench": ("streamst.commands.bench", "measure speed and memory"),
    "export-onnx": ("streamst.commands.export_onnx", "export a model to ONNX"),
    "convert": ("streamst.whisper.convert", "convert a Whisper checkpoint to a streamst checkpoint"),
    "serve": ("streamst.server.cli", "serve the WebSocket API and the browser page"),
    "stream": ("streamst.server.replay", "send an audio file through a streamst server"),
    "mic": ("streamst.demo_mic", "live captions from a microphone"),
    "demo": ("streamst.commands.demo", "stream the bundled sample through the default model"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="streamst", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in COMMANDS:
        parser.print_help(sys.stderr)
        if argv and argv[0] not in ("-h", "--help"):
            print(f"\nstreamst: unknown command {argv[0]!r}", file=sys.stderr)
            return 2
        return 0
    name = argv[0]
    module = importlib.import_module(COMMANDS[name][0])
    cmd_parser = argparse.ArgumentParser(prog=f"streamst {name}", description=COMMANDS[name][1])
    module.add_arguments(cmd_parser, name) if _takes_name(module.add_arguments) else module.add_arguments(cmd_parser)
    args = cmd_parser.parse_args(argv[1:])
    args.command = name
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, FileNotFoundError, OSError) as e:
        print(f"streamst {name}: error: {e}", file=sys.stderr)
        return 2


def _takes_name(fn) -> bool:
    import inspect

    return len(inspect.signature(fn).parameters) >= 2


if __name__ == "__main__":
    sys.exit(main())
