"""The cascade baseline of issue #17 on real speech: streaming English ASR, then apertium's rule-based en-es.

    python bench/cascade.py [--asr whisper-tiny.en-causal] [--st en-es] [--policies offline,alignatt:frames=4]

For each policy, the five LibriVox clips that `../shared/realspeech/librivox_translations.tsv` translates go
through a `Session` of the ASR model; its committed words are translated by apertium (one call per clip, as a
sentence-level cascade would after each sentence) and scored against the Spanish references with sacrebleu's
chrF and BLEU. Beside it: apertium of the reference transcripts (the cascade with a perfect ASR) and the
end-to-end translator (`--st`) under the same policy. Prints every output beside its reference.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import sacrebleu
import torch

LIBRIVOX = Path("/usr/share/pocketsphinx/test/data/librivox")


def main() -> int:
    from streamst.checkpoint import load_model
    from streamst.data.sources import apertium_translate
    from streamst.whisper.finetune import transcribe_stream
    from streamst.whisper.speech_pool import real_clips
    from streamst.whisper.st_train import real_references

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--asr", default="whisper-tiny.en-causal")
    ap.add_argument("--st", default="en-es", help="the end-to-end translator scored beside the cascade")
    ap.add_argument("--policies", default="offline,alignatt:frames=4")
    args = ap.parse_args()
    torch.set_num_threads(1)
    references = real_references("es")
    if not references:
        raise SystemExit("../shared/realspeech/librivox_translations.tsv not found beside the repository")
    clips = [c for c in real_clips(LIBRIVOX) if c[0] in references]
    refs = [references[name] for name, _, _ in clips]
    asr, st = load_model(args.asr), load_model(args.st)
    perfect = apertium_translate([text for _, _, text in clips])
    print(f"apertium of the reference transcripts: chrF {sacrebleu.corpus_chrf(perfect, [refs]).score:.1f}, "
          f"BLEU {sacrebleu.corpus_bleu(perfect, [refs]).score:.1f}")
    for spec in args.policies.split(","):
        english = [transcribe_stream(asr, audio, spec) for _, audio, _ in clips]
        cascade = apertium_translate(english)
        direct = [transcribe_stream(st, audio, spec) for _, audio, _ in clips]
        for label, hyps in (("cascade", cascade), (f"end-to-end {args.st}", direct)):
            print(f"{spec:24s} {label:18s} chrF {sacrebleu.corpus_chrf(hyps, [refs]).score:5.1f}  "
                  f"BLEU {sacrebleu.corpus_bleu(hyps, [refs]).score:5.1f}")
        for en, es, e2e, ref in zip(english, cascade, direct, refs):
            print(f"    ASR:        {en}\n    cascade:    {es}\n    end-to-end: {e2e}\n    reference:  {ref}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
