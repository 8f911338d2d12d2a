"""`streamst data`: build synthetic corpora (`synth`), list voices (`voices`), check a corpus (`check`)."""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    synth = sub.add_parser("synth", help="build a synthetic corpus in the MuST-C v1 layout")
    synth.add_argument("--out", required=True, type=Path, help="corpus root (pairs go in <out>/<pair>/data/...)")
    synth.add_argument("--pairs", default="en-de", help="comma-separated: en-de, en-es, en-en (English ASR)")
    size = synth.add_mutually_exclusive_group()
    size.add_argument("--hours", type=float, help="train hours per pair (estimated; repeats sentences with new voices)")
    size.add_argument("--max-sentences", type=int, help="use at most N distinct sentences per pair (small corpora)")
    synth.add_argument("--dev-fraction", type=float, default=0.03)
    synth.add_argument("--test-fraction", type=float, default=0.06)
    synth.add_argument("--test-voices", default="en-gb-scotland+f2,en-us+m4",
                       help="held-out voices: they speak tst-COMMON and never train or dev")
    synth.add_argument("--text", type=Path, default=None,
                       help="folder of <pair>.tsv from `streamst data text` (for machines without the apt packages)")
    synth.add_argument("--workers", type=int, default=1)
    synth.add_argument("--seed", type=int, default=0)
    text = sub.add_parser("text", help="export the sentence pairs to <out>/<pair>.tsv, to take to a machine with no apt")
    text.add_argument("--out", required=True, type=Path)
    text.add_argument("--pairs", default="en-de,en-es,en-en")
    text.add_argument("--kind", default="synth", choices=("synth", "sentences", "phrases", "all"),
                      help="synth: the sentences `data synth` speaks, to <pair>.tsv (default); sentences, phrases, "
                           "all: every parallel text there is offline (streamst.data.parallel), to <pair>.<kind>.tsv")
    sub.add_parser("voices", help="list the English espeak-ng voices available here")
    check = sub.add_parser("check", help="read every split of a MuST-C-layout corpus and report bad entries")
    check.add_argument("root", type=Path)
    check.add_argument("--pairs", default=None, help="comma-separated; default: every <pair> folder in ROOT")


def run(args: argparse.Namespace) -> int:
    if args.action == "voices":
        from streamst.data import tts

        print(f"# backend: {tts.backend()}")
        for voice in tts.english_voices():
            print(voice)
        return 0
    if args.action == "check":
        return _check(args.root, args.pairs)
    if args.action == "text":
        return _text(args.out, _parse_pairs(args.pairs), args.kind)
    return _synth(args)


def _text(out: Path, pairs: tuple[str, ...], kind: str) -> int:
    """Write each pair's TSV, print its counts per source, and write them with licences into out/TEXT_CARD.md."""
    from streamst.data import parallel, sources

    counts: dict[str, dict[str, int]] = {}
    for pair in pairs:
        name = f"{pair}.tsv" if kind == "synth" else f"{pair}.{kind}.tsv"
        texts = sources.sentence_pairs(pair) if kind == "synth" else parallel.parallel_corpus(pair, kind)
        sources.write_pairs_tsv(texts, out / name)
        counts[name] = parallel.count_by_source(texts)
        print(f"{pair}: {len(texts)} {'sentence' if kind == 'synth' else kind} pairs -> {out / name}")
        for source, n in counts[name].items():
            print(f"  {source}: {n}")
    card = out / "TEXT_CARD.md"
    card.write_text(parallel.render_text_card(counts, command=f"streamst data text --out {out} --pairs "
                                                                 f"{','.join(pairs)} --kind {kind}"),
                    encoding="utf-8")
    print(f"counts and licences -> {card}")
    return 0


def _synth(args: argparse.Namespace) -> int:
    from streamst.data.synth import SynthConfig, build_corpus

    pairs = _parse_pairs(args.pairs)
    if args.hours is not None and args.hours <= 0:
        raise ValueError("--hours must be positive")
    if args.max_sentences is not None and args.max_sentences < 3:
        raise ValueError("--max-sentences must be at least 3")
    config = SynthConfig(pairs=pairs, hours=args.hours, max_sentences=args.max_sentences,
                         dev_fraction=args.dev_fraction, test_fraction=args.test_fraction,
                         test_voices=tuple(v.strip() for v in args.test_voices.split(",") if v.strip()),
                         workers=args.workers, seed=args.seed)
    command = "streamst data " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if len(sys.argv) > 2 else ""
    started = time.perf_counter()
    stats = build_corpus(args.out, config, command=command, text_dir=args.text)
    elapsed = time.perf_counter() - started
    total_s = sum(s.seconds for by in stats.values() for s in by.values())
    segments = sum(s.segments for by in stats.values() for s in by.values())
    for pair, by in stats.items():
        for split, s in by.items():
            print(f"{pair} {split}: {s.segments} segments, {s.talks} talks, {s.seconds / 3600:.2f} h")
    print(f"{segments} segments, {total_s / 3600:.2f} h of speech in {elapsed:.1f} s "
          f"({segments / elapsed:.0f} segments/s, {total_s / elapsed:.0f}x real time) -> {args.out}")
    return 0


def _parse_pairs(text: str) -> tuple[str, ...]:
    pairs = tuple(p.strip() for p in text.split(",") if p.strip())
    for pair in pairs:
        if pair not in ("en-de", "en-es", "en-en"):
            raise ValueError(f"unknown pair {pair!r}: use en-de, en-es or en-en")
    return pairs


def _check(root: Path, pairs_arg: str | None) -> int:
    from streamst.data.mustc import SPLITS, read_split_checked

    if not root.is_dir():
        raise FileNotFoundError(f"no corpus at {root}")
    pairs = [p.strip() for p in pairs_arg.split(",")] if pairs_arg else sorted(
        d.name for d in root.iterdir() if (d / "data").is_dir())
    problems = 0
    for pair in pairs:
        for split in SPLITS:
            if not (root / pair / "data" / split).is_dir():
                continue
            segments, issues = read_split_checked(root, pair, split)
            for issue in issues:
                print(f"  {issue}")
            problems += len(issues)
            print(f"{pair} {split}: {len(segments)} good segments, {len(issues)} problems")
    return 1 if problems else 0
