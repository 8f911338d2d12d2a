"""`streamst` command line: a table of subcommands, each a module with `add_arguments(parser)` and `run(args)`.

Modules are imported only when their subcommand runs, so `streamst score` never loads torch.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from streamst import __version__

DESCRIPTION = ("Live captions and subtitles from speech: translate or transcribe audio files, a microphone or a "
               "browser stream as the words are spoken, and measure how good and how fast that is.")
EPILOG = ("Start with `streamst demo` (a bundled English sample translated to German), then "
          "`streamst translate talk.wav --format srt`. `streamst COMMAND --help` shows a command's options.")

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


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows every option's default (`(default: X)`) unless its help already says it or there is none to show."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        empty = action.default in (None, False, argparse.SUPPRESS) or action.default == [] or action.default == ""
        if "default" in text.lower() or empty or not action.option_strings:
            return text
        return super()._get_help_string(action)


def top_parser() -> argparse.ArgumentParser:
    """The `streamst` parser: the command list, --version, and the user-facing description."""
    parser = argparse.ArgumentParser(prog="streamst", description=DESCRIPTION, epilog=EPILOG)
    parser.add_argument("--version", action="version", version=f"streamst {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (_, help_text) in COMMANDS.items():
        sub.add_parser(name, help=help_text, add_help=False)
    return parser


def command_parser(name: str):
    """The parser of one subcommand and its module."""
    module = importlib.import_module(COMMANDS[name][0])
    parser = argparse.ArgumentParser(prog=f"streamst {name}", description=COMMANDS[name][1],
                                     formatter_class=HelpFormatter)
    module.add_arguments(parser, name) if _takes_name(module.add_arguments) else module.add_arguments(parser)
    return parser, module


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; bad input is a one-line error and exit status 2, never a traceback."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = top_parser()
    if not argv:
        parser.print_usage(sys.stderr)
        print("streamst: error: a COMMAND is required (`streamst --help` lists them)", file=sys.stderr)
        return 2
    if argv[0] in ("-h", "--help", "--version"):
        try:
            parser.parse_args(argv[:1])
        except SystemExit as e:
            return int(e.code or 0)
    if argv[0] not in COMMANDS:
        parser.print_usage(sys.stderr)
        print(f"streamst: error: unknown command {argv[0]!r} (choose from {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    name = argv[0]
    cmd_parser, module = command_parser(name)
    try:
        args = cmd_parser.parse_args(argv[1:])
    except SystemExit as e:
        return int(e.code or 0)
    args.command = name
    try:
        return int(module.run(args) or 0)
    except KeyboardInterrupt:
        return 130
    except (ValueError, OSError, ImportError) as e:
        print(f"streamst {name}: error: {_message(e)}", file=sys.stderr)
        return 2


def _message(e: BaseException) -> str:
    """One line for an error; an ImportError names the missing module."""
    if isinstance(e, ImportError) and not isinstance(e, ModuleNotFoundError):
        return str(e).splitlines()[0] if str(e) else type(e).__name__
    if isinstance(e, ModuleNotFoundError):
        top = (e.name or "").split(".")[0]
        if top == "streamst":
            return (f"{e}: this streamst is incomplete, or a `streamst` folder in the current directory hides the "
                    "installed one")
        return f"the Python package {top!r} is missing: pip install {top} (or the streamst extra that has it)"
    text = str(e) or type(e).__name__
    return text if "\n" not in text else text.splitlines()[0]


def _takes_name(fn) -> bool:
    import inspect

    return len(inspect.signature(fn).parameters) >= 2


if __name__ == "__main__":
    sys.exit(main())
