"""`streamst translate|transcribe AUDIO...`: stream files through a Session, printing words as they commit.

Results go to stdout (text, jsonl, srt or vtt) or, with `--out-dir`, to one file per input; progress and the
per-file summary go to stderr.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Callable

from streamst.audio import AudioFormat, read_audio
from streamst.cascade import Cascade
from streamst.commands.common import add_stream_options, check_audio_path, load_stream_model
from streamst.events import Word

AUDIO_HELP = "audio files: wav, flac, ogg or mp3 (any sample rate and channel count)"
FORMAT_HELP = ("text: the words of each file on one line, as they are committed; jsonl: one JSON object per "
               "word (text, emitted_ms, compute_ms, start_ms, end_ms); srt or vtt: subtitles timed by the "
               "words' source spans")
SUFFIX = {"text": ".txt", "jsonl": ".jsonl", "srt": ".srt", "vtt": ".vtt"}


def add_arguments(parser: argparse.ArgumentParser, name: str = "translate") -> None:
    parser.add_argument("audio", nargs="+", help=AUDIO_HELP)
    add_stream_options(parser, "st" if name == "translate" else "asr")
    if name == "translate":
        parser.add_argument("--cascade", metavar="TRANSLATOR", default=None,
                            help="a cascade instead of a translation model: the recogniser (--model, default the "
                                 "English one) commits English words and TRANSLATOR translates each finished "
                                 "sentence or clause (apertium: English to Spanish, offline, rule-based)")
    else:
        parser.set_defaults(cascade=None)
    parser.add_argument("--format", choices=list(SUFFIX), default="text", help=FORMAT_HELP)
    parser.add_argument("--out-dir", metavar="DIR", default=None,
                        help="write one file per input (NAME.txt/.jsonl/.srt/.vtt) here instead of stdout")
    parser.add_argument("--reference", default=None,
                        help="reference text, one line per audio file: AL and LAAL then use its length, as "
                             "SimulEval does (default: the length of the output)")


def read_audio_file(path: str | Path):
    """`read_audio` with one-line errors for a folder, an empty file or a format soundfile does not know."""
    check_audio_path(path)
    try:
        return read_audio(path)
    except ValueError as e:
        reason = re.sub(r"^.*?Error opening '.*?': ", "", str(e).split(f"{path}: ", 1)[-1])
        raise ValueError(f"cannot read audio {path}: {reason.rstrip('.')} (wav, flac, ogg and mp3 are read)") from None


def stream_file(model, policy, path: str | Path, *, chunk_ms: float = 320.0, beam: int = 1,
                on_event: Callable | None = None, cascade: Cascade | None = None):
    """Stream one file through a fresh Session (its words translated by `cascade` where given); returns
    (committed words, session)."""
    from streamst.cascade import CascadeState
    from streamst.session import Session

    audio, rate = read_audio_file(path)
    fmt = AudioFormat(sample_rate=rate, channels=audio.shape[1], encoding="f32le")
    session = Session(model, policy, fmt, chunk_ms=chunk_ms, beam=beam)
    piece = max(1, int(fmt.sample_rate * chunk_ms / 1000))
    words: list[Word] = []
    state = CascadeState()

    def emit(events: list, final: bool = False) -> None:
        nonlocal state
        if cascade is not None:
            events, state = cascade.step(state, events, final)
        for e in events:
            words.extend([e] if isinstance(e, Word) else [])
            if on_event:
                on_event(e)

    for i in range(0, max(1, audio.shape[0]), piece):
        emit(session.push(audio[i:i + piece]) if audio.shape[0] else [])
    emit(session.finish(), final=True)
    return words, session


def summary(words: list[Word], source_ms: float, reference: str | None = None) -> dict:
    """AL and LAAL with SimulEval's definitions; the reference length is the reference's word count when one is
    given, else the number of output words (`length`: which of the two was used)."""
    from streamst.eval.latency import average_lagging, length_adaptive_average_lagging, reference_length

    delays = [w.emitted_ms for w in words]
    ref_len = reference_length(reference, "word", len(delays)) if reference is not None else len(delays)
    ok = bool(delays) and source_ms > 0
    return {
        "AL": average_lagging(delays, source_ms, ref_len) if ok else None,
        "LAAL": length_adaptive_average_lagging(delays, source_ms, ref_len) if ok else None,
        "length": "reference" if reference is not None else "output",
    }


def _fmt_ms(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.0f} ms"


def latency_line(lat: dict) -> str:
    """`AL x ms, LAAL y ms (reference length)`: the figures and which length they divide by."""
    return f"AL {_fmt_ms(lat['AL'])}, LAAL {_fmt_ms(lat['LAAL'])} ({lat['length']} length)"


def _out_paths(audio: list[str], out_dir: str, fmt: str) -> list[Path]:
    """One output file per input, refusing two inputs that would write the same file."""
    folder = Path(out_dir)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"--out-dir {folder} exists and is not a folder")
    paths = [folder / (Path(a).stem + SUFFIX[fmt]) for a in audio]
    seen: dict[Path, str] = {}
    for a, p in zip(audio, paths):
        if p in seen:
            raise ValueError(f"{seen[p]} and {a} would both write {p}; rename one or run them separately")
        seen[p] = a
    folder.mkdir(parents=True, exist_ok=True)
    return paths


class Writer:
    """Where results go: stdout (several subtitle files laid end to end as one valid file) or one file each."""

    def __init__(self, fmt: str, paths: list[Path] | None):
        self.fmt, self.paths = fmt, paths
        self.cue_number, self.offset_ms = 1, 0.0

    def live(self, k: int) -> bool:
        """Whether words of input k are printed as they commit (text and jsonl on stdout)."""
        return self.paths is None and self.fmt in ("text", "jsonl")

    def line(self, word: dict, path: str) -> str:
        return (word["text"] + " ") if self.fmt == "text" else json.dumps({"file": str(path), **word}) + "\n"

    def finish(self, k: int, path: str, words: list[dict], source_ms: float) -> None:
        """Everything for input k once it is done."""
        from streamst.captions import group_cues, srt_blocks, vtt_blocks

        if self.fmt in ("srt", "vtt"):
            cues = group_cues(words, source_ms=source_ms)
            if self.paths is not None:
                text = ("\n".join(srt_blocks(cues)) if self.fmt == "srt"
                        else "WEBVTT\n\n" + "\n".join(vtt_blocks(cues)))
            elif self.fmt == "srt":
                blocks = srt_blocks(cues, self.cue_number, self.offset_ms)
                text = ("\n" if self.cue_number > 1 and blocks else "") + "\n".join(blocks)
                self.cue_number += len(blocks)
            else:
                head = "WEBVTT\n\n" if k == 0 else "\n"
                note = f"NOTE {Path(path).name} from {self.offset_ms / 1000:.3f} s\n"
                text = head + note + "".join("\n" + b for b in vtt_blocks(cues, self.offset_ms))
            self.offset_ms += source_ms
        else:
            text = "".join(self.line(w, path) for w in words) if self.paths is not None else ""
            if self.fmt == "text":
                text = text.rstrip(" ") + "\n"
        if self.paths is None:
            sys.stdout.write(text)
            sys.stdout.flush()
        else:
            tmp = self.paths[k].with_name(self.paths[k].name + ".tmp")
            tmp.write_text(text, encoding="utf-8")
            tmp.replace(self.paths[k])
            print(f"wrote {self.paths[k]}", file=sys.stderr)


def run(args: argparse.Namespace) -> int:
    from streamst.captions import SpanOrder
    from streamst.policies import parse_policy

    task = "st" if args.command == "translate" else "asr"
    policy = parse_policy(args.policy)
    refs = Path(args.reference).read_text(encoding="utf-8").splitlines() if args.reference else []
    if args.reference and len(refs) != len(args.audio):
        raise ValueError(f"--reference {args.reference} has {len(refs)} lines for {len(args.audio)} audio files")
    paths = _out_paths(args.audio, args.out_dir, args.format) if args.out_dir else None
    cascade = None
    if args.cascade:
        from streamst.cascade import text_translator

        cascade = Cascade(text_translator(args.cascade))
        task = "asr"  # the recogniser's words are what the text translator reads
    model = load_stream_model(args.model, task, args.backend, args.threads)
    writer = Writer(args.format, paths)
    if paths is None and args.format in ("srt", "vtt") and len(args.audio) > 1:
        print(f"streamst {args.command}: {len(args.audio)} files in one {args.format} on stdout, laid end to end "
              "(--out-dir DIR writes one file each)", file=sys.stderr)
    failed = 0
    for k, path in enumerate(args.audio):
        order, words = SpanOrder(), []

        def on_event(e, path=path, k=k) -> None:
            if isinstance(e, Word):
                words.append(order(e.to_dict()))
                if writer.live(k):
                    sys.stdout.write(writer.line(words[-1], path))
                    sys.stdout.flush()

        try:
            committed, session = stream_file(model, policy, path, chunk_ms=args.chunk_ms, beam=args.beam,
                                             on_event=on_event, cascade=cascade)
        except (ValueError, OSError) as e:  # one bad file does not stop the others
            message = str(e) if str(path) in str(e) else f"{path}: {e}"
            print(f"streamst {args.command}: {message}", file=sys.stderr)
            failed += 1
            continue
        writer.finish(k, path, words, session.source_ms)
        st = session.stats()
        lat = summary(committed, session.source_ms, refs[k] if refs else None)
        print(f"{path}: {len(committed)} words, {st['audio_s']:.2f} s audio, {latency_line(lat)}, "
              f"RTF {st['rtf']:.3f} ({getattr(model, 'name', '')}{' + ' + args.cascade if cascade else ''}, "
              f"{policy.spec()})", file=sys.stderr)
    return 1 if failed else 0
