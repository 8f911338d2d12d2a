"""`streamst demo`: stream the bundled English sample through the default translation model, printing each
word as it is committed, then one summary line (AL, LAAL, real-time factor).

AL and LAAL are those of `streamst translate` (`summary`): the bundled sample comes with its reference
translation, so the demo divides by the reference's length, as SimulEval does; `translate` does the same with
`--reference`, and without it divides by the output's length. The summary line says which.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from streamst.commands.common import add_stream_options

SAMPLE = Path(__file__).resolve().parents[1] / "assets" / "sample-en.wav"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_stream_options(parser, "st")
    parser.add_argument("--audio", default=str(SAMPLE), help="audio file (default: the bundled English sample)")


def run(args: argparse.Namespace) -> int:
    from streamst.commands.common import default_model, load_stream_model
    from streamst.commands.files import stream_file, summary
    from streamst.events import Word
    from streamst.policies import parse_policy

    name = args.model or default_model("st")
    model = load_stream_model(name, "st", args.backend, args.threads)
    policy = parse_policy(args.policy)
    meta = Path(args.audio).with_suffix(".json")
    info = json.loads(meta.read_text()) if meta.exists() else {}
    if info:
        print(f"source:    {info['source']}\nreference: {info['target']}", file=sys.stderr)
    print(f"streaming {args.audio} through {name} with {policy.spec()}:", file=sys.stderr)

    def show(e) -> None:
        if isinstance(e, Word):
            print(f"{e.text}  [{e.emitted_ms:.0f} ms]", flush=True)

    words, session = stream_file(model, policy, args.audio, chunk_ms=args.chunk_ms, beam=args.beam, on_event=show)
    lat = summary(words, session.source_ms, info.get("target"))
    st = session.stats()
    fmt = lambda v: "n/a" if v is None else f"{v:.0f} ms"  # noqa: E731
    print(f"{len(words)} words | AL {fmt(lat['AL'])} | LAAL {fmt(lat['LAAL'])} | RTF {st['rtf']:.3f} "
          f"({st['compute_s']:.2f} s compute for {st['audio_s']:.2f} s audio; AL/LAAL over the {lat['length']} "
          "length)")
    return 0
