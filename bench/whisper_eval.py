"""Whisper latency-quality sweep on real read speech with the project's own scorer (`streamst sweep`).

Builds a MuST-C v1 layout (pair en-en, split tst-COMMON) of pocketsphinx-testdata's LibriVox clips, one talk wav
per clip, then runs `streamst sweep` (WER and SimulEval-exact LAAL from `streamst.eval`) over the policies given:

    python bench/whisper_eval.py --out /tmp/whisper-sweep \
        --policies "alignatt:frames=10;alignatt:frames=20;la:n=2;waitk:k=2" [--chunk-ms 640] [--beam 4]

`--layout-only DIR` writes the layout and exits (for a hand-run `streamst eval --mustc DIR --pair en-en ...`).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import soundfile as sf

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


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


def write_mustc_layout(root: Path, clips: list[tuple[str, np.ndarray, str]], split: str = "tst-COMMON") -> Path:
    """MuST-C v1 layout under root/en-en/data/<split>: one wav and one segment (the whole wav) per clip."""
    split_dir = root / "en-en" / "data" / split
    (split_dir / "wav").mkdir(parents=True, exist_ok=True)
    (split_dir / "txt").mkdir(parents=True, exist_ok=True)
    yaml_lines, texts = [], []
    for name, audio, text in clips:
        sf.write(split_dir / "wav" / f"{name}.wav", audio, 16000, subtype="FLOAT")
        yaml_lines.append(f"- {{duration: {len(audio) / 16000:.6f}, offset: 0.0, speaker_id: spk0, wav: {name}.wav}}\n")
        texts.append(text + "\n")
    (split_dir / "txt" / f"{split}.yaml").write_text("".join(yaml_lines))
    (split_dir / "txt" / f"{split}.en").write_text("".join(texts))
    return root


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--policies", default="alignatt:frames=10;alignatt:frames=20;la:n=2;waitk:k=2")
    parser.add_argument("--chunk-ms", type=float, default=640.0)
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--out", default="/tmp/whisper-sweep")
    parser.add_argument("--layout-only", default=None, metavar="DIR", help="write the MuST-C layout there and exit")
    args = parser.parse_args()
    if args.layout_only:
        print(write_mustc_layout(Path(args.layout_only), librivox_clips()))
        return 0
    root = write_mustc_layout(Path(args.out) / "mustc", librivox_clips())
    from streamst.cli import main as cli

    return cli(["sweep", "--mustc", str(root), "--pair", "en-en", "--task", "asr", "--model", args.model,
                "--chunk-ms", str(args.chunk_ms), "--beam", str(args.beam), "--policies", args.policies, "--out", str(Path(args.out) / "sweep"),
                "--no-progress"])


if __name__ == "__main__":
    sys.exit(main())
