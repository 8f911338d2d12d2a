"""`streamst translate|transcribe AUDIO...`: stream files through a Session, printing words as they commit.

Results go to stdout (text, jsonl, srt or vtt); progress and the per-file summary go to stderr.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from streamst.audio import AudioFormat, read_audio
from streamst.commands.common import add_stream_options, load_stream_model
from streamst.events import Word


def add_arguments(parser: argparse.ArgumentParser, name: str = "translate") -> None:
    parser.add_argument("audio", nargs="+", help="wav, flac or ogg files")
    add_stream_options(parser, "st" if name == "translate" else "asr")
    parser.add_argument("--format", choices=["text", "jsonl", "srt", "vtt"], default="text")
    parser.add_argument("--reference", default=None, help="reference text (one line per file) for LAAL's length")


def stream_file(model, policy, path: str | Path, *, chunk_ms: float = 320.0, beam: int = 1, on_event=None):
    """Stream one file through a fresh Session; returns (committed words, session)."""
    from streamst.session import Session

    audio, rate = read_audio(path)
    fmt = AudioFormat(sample_rate=rate, channels=audio.shape[1], encoding="f32le")
    session = Session(model, policy, fmt, chunk_ms=chunk_ms, beam=beam)
    piece = max(1, int(fmt.sample_rate * chunk_ms / 1000))
    words: list[Word] = []
    for i in range(0, max(1, audio.shape[0]), piece):
        for e in session.push(audio[i:i + piece]) if audio.shape[0] else []:
            words += [e] if isinstance(e, Word) else []
            if on_event:
                on_event(e)
    for e in session.finish():
        words += [e] if isinstance(e, Word) else []
        if on_event:
            on_event(e)
    return words, session


def summary(words: list[Word], source_ms: float, reference: str | None = None) -> dict:
    """AL, LAAL (SimulEval semantics; without a reference the length is the number of words), and RTF inputs."""
    from streamst.eval.latency import average_lagging, length_adaptive_average_lagging, reference_length

    delays = [w.emitted_ms for w in words]
    ref_len = reference_length(reference, "word", len(delays)) if reference is not None else len(delays)
    ok = bool(delays) and source_ms > 0
    return {
        "AL": average_lagging(delays, source_ms, ref_len) if ok else None,
        "LAAL": length_adaptive_average_lagging(delays, source_ms, ref_len) if ok else None,
    }


def _fmt_ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f} ms"


def run(args: argparse.Namespace) -> int:
    from streamst.captions import to_srt, to_vtt
    from streamst.policies import parse_policy

    task = "st" if args.command == "translate" else "asr"
    policy = parse_policy(args.policy)
    model = load_stream_model(args.model, task, args.backend, args.threads)
    refs = Path(args.reference).read_text().splitlines() if args.reference else []
    failed = 0
    for k, path in enumerate(args.audio):
        out = sys.stdout

        def on_event(e, path=path):
            if isinstance(e, Word):
                if args.format == "text":
                    out.write(e.text + " ")
                    out.flush()
                elif args.format == "jsonl":
                    out.write(json.dumps({"file": str(path), **e.to_dict()}) + "\n")
                    out.flush()

        try:
            words, session = stream_file(model, policy, path, chunk_ms=args.chunk_ms, beam=args.beam, on_event=on_event)
        except (ValueError, OSError) as e:  # one bad file does not stop the others
            print(f"streamst {args.command}: {path}: {e}", file=sys.stderr)
            failed += 1
            continue
        if args.format == "text":
            out.write("\n")
        elif args.format in ("srt", "vtt"):
            out.write((to_srt if args.format == "srt" else to_vtt)(words))
        st = session.stats()
        lat = summary(words, session.source_ms, refs[k] if k < len(refs) else None)
        print(f"{path}: {len(words)} words, {st['audio_s']:.2f} s audio, AL {_fmt_ms(lat['AL'])}, "
              f"LAAL {_fmt_ms(lat['LAAL'])}, RTF {st['rtf']:.3f} ({getattr(model, 'name', '')}, {policy.spec()})",
              file=sys.stderr)
    return 1 if failed else 0
