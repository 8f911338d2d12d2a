"""How fast espeak-ng speaks (sentences/s, x real time) in one process, alone and with the whole talk rendering.

    python bench/synth_speed.py [--sentences 300]
"""
from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

from streamst.data import synth, tts

TEXTS = [
    "He has a lot of work.", "The new business park will create hundreds of jobs.",
    "If the restaurant closes, she will be out of a job.", "Where is the station?",
    "Prices have increased threefold in only two years.", "Could you stop by the pharmacy on your way home?",
    "The principle is very simple.", "He was standing on the bridge looking at the river beneath.",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=300)
    args = parser.parse_args()
    rng = random.Random(0)
    voices = tts.english_voices()
    texts = [rng.choice(TEXTS) for _ in range(args.sentences)]
    tts.synthesize("Warm up.", "en-us")
    import torchaudio.functional  # noqa: F401 - keep the import out of the timing
    start, audio_s = time.perf_counter(), 0.0
    for text in texts:
        audio, rate = tts.synthesize(text, rng.choice(voices), rate=rng.randint(140, 210))
        audio_s += audio.size / rate
    elapsed = time.perf_counter() - start
    print(f"tts only ({tts.backend()}): {args.sentences / elapsed:.0f} sentences/s, {audio_s / elapsed:.0f}x real time")
    with tempfile.TemporaryDirectory() as tmp:
        task = synth.TalkTask(wav_path=str(Path(tmp) / "t.wav"), voice="en-gb+f3", texts=tuple(texts), seed=1)
        start = time.perf_counter()
        spans = synth.render_talk(task)
        elapsed = time.perf_counter() - start
    speech_s = sum(d for _, d in spans)
    print(f"talk rendering (tts, level, noise, 16 kHz resample, wav): {len(texts) / elapsed:.0f} sentences/s, "
          f"{speech_s / elapsed:.0f}x real time (speech seconds)")


if __name__ == "__main__":
    main()
