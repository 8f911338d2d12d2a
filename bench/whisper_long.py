"""A long Whisper stream through `Session`: window length, RSS and per-chunk time as it goes, WER at the end.

    python bench/whisper_long.py --minutes 10 --policy alignatt:frames=40 [--chunk-ms 1000] [--beam 1] [--pause-s 0.5]

The audio is pocketsphinx-testdata's LibriVox clips played one after another with `--pause-s` of silence after
each (0.5 s; a speaker who pauses between sentences: several seconds), looped until the stream is long enough;
the reference is their transcripts in the same order. Every `--report-s` of audio it prints the window the
model holds (bounded by the trim: `trim_after_s` plus one chunk), how much it has trimmed, the prompt length,
RSS and the median compute per chunk since the last line; at the end WER, RTF, and how far each word's commit
came after its own audio (emitted minus its aligned end: a word held through a pause shows here).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from whisper_eval import librivox_clips  # noqa: E402


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def looped_stream(minutes: float, pause_s: float = 0.5) -> tuple[np.ndarray, str]:
    """The clips with pauses, repeated to at least `minutes`; and the matching reference text."""
    clips = librivox_clips()
    pause = np.zeros(int(pause_s * 16000), dtype=np.float32)
    pieces, refs, total = [], [], 0
    while total < minutes * 60 * 16000:
        for _, audio, text in clips:
            pieces += [audio, pause]
            refs.append(text)
            total += audio.size + pause.size
    return np.concatenate(pieces), " ".join(refs)


def main() -> int:
    from streamst.checkpoint import load_model
    from streamst.eval.quality import wer
    from streamst.events import Word
    from streamst.policies import parse_policy
    from streamst.session import Session

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="whisper-tiny.en")
    parser.add_argument("--policy", default="alignatt:frames=40")
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--chunk-ms", type=float, default=1000.0)
    parser.add_argument("--beam", type=int, default=1)
    parser.add_argument("--report-s", type=float, default=60.0)
    parser.add_argument("--pause-s", type=float, default=0.5, help="silence after each clip")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--restart-on-drop", choices=["yes", "no"],
                        help="a causal Whisper under StreamAtt: re-encode the kept audio after every drop (yes), or "
                             "only once the window outgrows its trim length (no); default: the model's own")
    parser.add_argument("--restart-drop-s", type=float, default=None,
                        help="a causal Whisper under StreamAtt: restart once this much audio was dropped "
                             "(default: the model's, 3 s)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    audio, reference = looped_stream(args.minutes, args.pause_s)
    if args.restart_on_drop is None and args.restart_drop_s is None:
        model = load_model(args.model)
    else:  # a causal Whisper checkpoint, built with the choice given
        from streamst.checkpoint import read_checkpoint, resolve_model
        from streamst.whisper.causal_streaming import load_causal_checkpoint

        options = {} if args.restart_drop_s is None else {"restart_drop_s": args.restart_drop_s}
        if args.restart_on_drop is not None:
            options["restart_on_drop"] = args.restart_on_drop == "yes"
        model = load_causal_checkpoint(read_checkpoint(resolve_model(args.model)), **options)
    session = Session(model, parse_policy(args.policy), chunk_ms=args.chunk_ms, beam=args.beam)
    step = session.chunker.chunk_samples
    words: list[str] = []
    lags: list[float] = []  # ms from each word's aligned end to its commit
    times: list[float] = []
    max_window = 0.0
    next_report = args.report_s
    print(f"{audio.size / 16000 / 60:.1f} min of audio, {args.policy}, {args.chunk_ms:.0f} ms chunks, beam {args.beam}")
    for start in range(0, audio.size, step):
        t0 = time.perf_counter()
        events = session.push(audio[start: start + step])
        times.append(time.perf_counter() - t0)
        words += [e.text for e in events if isinstance(e, Word)]
        lags += [e.emitted_ms - e.end_ms for e in events if isinstance(e, Word) and e.end_ms is not None]
        state = session.model_state
        max_window = max(max_window, state.audio.numel() / 16000)
        if session.source_ms / 1000 >= next_report:
            next_report += args.report_s
            print(f"{session.source_ms / 60000:6.1f} min: window {state.audio.numel() / 16000:5.1f} s "
                  f"(max {max_window:4.1f}), trimmed {state.trimmed_samples / 16000:6.1f} s, "
                  f"prompt {state.info.prompt_tokens:5d} tokens, {len(words):5d} words, RSS {rss_mb():6.0f} MB, "
                  f"median {1000 * statistics.median(times):4.0f} ms/chunk", flush=True)
            times = []
    words += [e.text for e in session.finish() if isinstance(e, Word)]
    stats = session.stats()
    print(f"WER {wer([' '.join(words)], [reference]):.1f}% over {len(reference.split())} reference words, "
          f"max window {max_window:.1f} s, RTF {stats['rtf']:.2f} (compute {stats['compute_s']:.0f} s)")
    if lags:  # mid-stream commits only: the final flush is not a decision
        lags.sort()
        print(f"commit lag behind the word's audio: median {lags[len(lags) // 2]:.0f} ms, "
              f"p95 {lags[int(0.95 * (len(lags) - 1))]:.0f} ms, max {lags[-1]:.0f} ms over {len(lags)} words")
    return 0


if __name__ == "__main__":
    sys.exit(main())
