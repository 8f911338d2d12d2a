"""Latency-quality sweep on real read speech with the project's own scorer (`streamst sweep`).

Builds a MuST-C v1 layout (split tst-COMMON) of pocketsphinx-testdata's LibriVox clips, one talk wav per clip,
then runs `streamst sweep` (WER, or BLEU and chrF, and SimulEval-exact LAAL from `streamst.eval`) over the
policies given. Pair en-en (the default) scores recognition against the clips' transcripts; en-de and en-es
score translation against the German and Spanish references of `../shared/realspeech/`:

    python bench/whisper_eval.py --out /tmp/whisper-sweep \
        --policies "alignatt:frames=10;alignatt:frames=20;la:n=2;waitk:k=2" [--chunk-ms 640] [--beam 4]
    python bench/whisper_eval.py --pair en-de --model en-de --policies "offline;alignatt:frames=4"

`--clips jfk` scores the 11 s JFK recording of `bench/data/` instead (English only; `librivox,jfk` both).
`--layout-only DIR` writes the layout and exits (for a hand-run `streamst eval --mustc DIR --pair en-en ...`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")
TRANSLATIONS = Path(__file__).resolve().parents[2] / "shared" / "realspeech" / "librivox_translations.tsv"
DATA = Path(__file__).resolve().parent / "data"


def librivox_clips(folder: Path = LIBRIVOX) -> list[tuple[str, np.ndarray, str]]:
    """(name, 16 kHz float audio, lower-case reference) of each clip listed in the folder's `transcription`."""
    listing = folder / "transcription"
    if not listing.exists():
        raise FileNotFoundError(f"{listing} is missing: apt-get install pocketsphinx-testdata")
    clips = []
    for line in listing.read_text().splitlines():
        text, _, name = line.rpartition("(")
        name = name.strip(") ")
        audio, rate = sf.read(folder / f"{name}.wav", dtype="float32")
        if rate != 16000:
            raise ValueError(f"{name}.wav is {rate} Hz, not 16 kHz")
        clips.append((name, audio, text.replace("<s>", "").replace("</s>", "").strip()))
    return clips


def named_clips(names: str) -> list[tuple[str, np.ndarray, str]]:
    """The clips `--clips` names: librivox, jfk, or both comma-separated."""
    clips = []
    for name in names.split(","):
        if name == "librivox":
            clips += librivox_clips()
        elif name == "jfk":
            clips += librivox_clips(DATA)
        else:
            raise ValueError(f"--clips takes librivox and/or jfk, not {name!r}")
    return clips


def translations(lang: str, table: Path = TRANSLATIONS) -> dict[str, str]:
    """Clip name -> reference translation into `lang` (de or es)."""
    import csv

    if not table.is_file():
        raise FileNotFoundError(f"{table} is missing: it holds the German and Spanish references of the clips")
    with table.open(newline="", encoding="utf-8") as f:
        return {row["file"]: row[lang] for row in csv.DictReader(f, delimiter="\t")}


def write_mustc_layout(root: Path, clips: list[tuple[str, np.ndarray, str]], split: str = "tst-COMMON",
                       pair: str = "en-en") -> Path:
    """MuST-C v1 layout under root/<pair>/data/<split>: one wav and one segment (the whole wav) per clip, with
    the references of the pair's target language."""
    split_dir = root / pair / "data" / split
    target = pair.split("-")[1]
    references = translations(target) if target != "en" else {}
    (split_dir / "wav").mkdir(parents=True, exist_ok=True)
    (split_dir / "txt").mkdir(parents=True, exist_ok=True)
    yaml_lines, texts = [], []
    for name, audio, text in clips:
        sf.write(split_dir / "wav" / f"{name}.wav", audio, 16000, subtype="FLOAT")
        yaml_lines.append(f"- {{duration: {len(audio) / 16000:.6f}, offset: 0.0, speaker_id: spk0, wav: {name}.wav}}\n")
        texts.append(text + "\n")
    (split_dir / "txt" / f"{split}.yaml").write_text("".join(yaml_lines))
    (split_dir / "txt" / f"{split}.en").write_text("".join(texts))
    if references:
        lines = [references[name] + "\n" for name, _, _ in clips]
        (split_dir / "txt" / f"{split}.{target}").write_text("".join(lines), encoding="utf-8")
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--pair", default="en-en", choices=["en-en", "en-de", "en-es"],
                        help="en-en: recognition (WER); en-de, en-es: translation (BLEU, chrF)")
    parser.add_argument("--policies", default="alignatt:frames=10;alignatt:frames=20;la:n=2;waitk:k=2")
    parser.add_argument("--chunk-ms", type=float, default=640.0)
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--out", default="/tmp/whisper-sweep")
    parser.add_argument("--clips", default="librivox", help="librivox (default), jfk, or librivox,jfk")
    parser.add_argument("--layout-only", default=None, metavar="DIR", help="write the MuST-C layout there and exit")
    args = parser.parse_args()
    clips = named_clips(args.clips)
    if args.pair != "en-en" and any(name == "jfk" for name, _, _ in clips):
        parser.error("the JFK clip has an English transcript only: --pair en-en")
    if args.layout_only:
        print(write_mustc_layout(Path(args.layout_only), clips, pair=args.pair))
        return 0
    root = write_mustc_layout(Path(args.out) / "mustc", clips, pair=args.pair)
    from streamst.cli import main as cli

    task = "asr" if args.pair == "en-en" else "st"
    return cli(["sweep", "--mustc", str(root), "--pair", args.pair, "--task", task, "--model", args.model,
                "--chunk-ms", str(args.chunk_ms), "--beam", str(args.beam), "--policies", args.policies, "--out", str(Path(args.out) / "sweep"),
                "--no-progress"])


if __name__ == "__main__":
    sys.exit(main())
