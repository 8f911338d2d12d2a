"""Speak English sentences and cache what the frozen causal Whisper encoder makes of them, for translation.

A translation decoder over a frozen encoder needs the encoder's frames, not the audio: each utterance is spoken
once (a random engine and voice, with noise and room, as for the ASR fine-tune; the held-out test voices never),
encoded under the block-causal mask exactly as streaming would (`encode_full`), and stored as fp16 frames with its
English text and its translations. Shards of `SHARD` utterances; an existing shard is kept, so a run resumes.
`encoder.json` names the adapters that made the frames, so a decoder is never trained over another encoder's.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from streamst.data.sources import SentencePair
from streamst.data.synth import DEFAULT_TEST_VOICES, assign_split, stable_hash
from streamst.whisper.causal import causal_log_mel, encode_full
from streamst.whisper.load import LoadedWhisper
from streamst.whisper.model import Whisper

SHARD = 500
# the split of the shipped corpora (`streamst data synth --seed 1`): the same sentences are held out
SPLIT_SEED, DEV_FRACTION, TEST_FRACTION = 1, 0.03, 0.06


@dataclass(frozen=True)
class Example:
    """One English sentence and its translations by target language ({"de": ..., "es": ...})."""

    en: str
    targets: dict[str, str]


def split_of(english: str) -> str:
    """train, dev or tst-COMMON, as `streamst data synth` assigns the sentence."""
    return assign_split(english, SPLIT_SEED, DEV_FRACTION, TEST_FRACTION)


KINDS = ("sentences", "all")
MAX_PHRASES = 30000


def collect_examples(kind: str = "sentences", *, max_phrases: int = MAX_PHRASES) -> list[Example]:
    """The examples to speak, read from the installed sources (see `merge_examples`).

    'sentences': every English sentence of Ding's examples (German; Spanish by apertium) and the Bible verse pairs
    (Spanish). 'all' adds apertium Spanish of WordNet's usage examples and up to `max_phrases` of Ding's phrase
    pairs. gettext's UI strings are left out: messages with placeholders and menu labels are not what a speaker says.
    """
    from streamst.data import parallel, sources

    if kind not in KINDS:
        raise ValueError(f"unknown kind {kind!r}: use one of {', '.join(KINDS)}")
    ding = sources.ding_pairs()
    if kind == "sentences":
        spanish = [SentencePair(p.en, es, "ding+apertium")
                   for p, es in zip(ding, sources.apertium_translate([p.en for p in ding]))]
        phrases: list[SentencePair] = []
    else:
        spanish = parallel.clean(parallel.apertium_sentence_pairs(), parallel.SENTENCE_LIMITS)
        phrases = parallel.clean(parallel.ding_phrase_pairs(), parallel.PHRASE_LIMITS)
    return merge_examples(ding, spanish + parallel.bible_verse_pairs(), phrases, max_phrases=max_phrases)


def merge_examples(german: list[SentencePair], spanish: list[SentencePair], phrases: list[SentencePair] = (), *,
                   max_phrases: int = MAX_PHRASES) -> list[Example]:
    """Sentence pairs merged by English text (the first translation into a language wins), then German phrase pairs
    of three or more English words that are no sentence's English: up to `max_phrases` of them, a sample fixed by
    a hash of each phrase (so it does not depend on the order read). Sorted by English text."""
    merged: dict[str, dict[str, str]] = {}
    for lang, pairs in (("de", german), ("es", spanish)):
        for p in pairs:
            merged.setdefault(p.en, {}).setdefault(lang, p.target)
    chosen = sorted({p.en: p for p in phrases if len(p.en.split()) >= 3 and p.en not in merged}.values(),
                    key=lambda p: stable_hash("phrase", p.en))
    for p in chosen[:max_phrases]:
        merged[p.en] = {"de": p.target}
    return [Example(en, targets) for en, targets in sorted(merged.items())]


def corrected_targets(lang: str):
    """A function (English, cached translation) -> the translation to train on, or None to leave the example out.

    Caches made before the Bible reader was fixed hold about 2,300 misaligned verse pairs (a stray psalm title,
    books I and II mixed up): their Spanish is replaced by the fixed reader's, or the verse is dropped."""
    from streamst.data import parallel, sources

    if lang != "es":
        return lambda en, target: target
    ding = {p.en for p in sources.ding_pairs()}
    verses = {p.en: p.target for p in parallel.bible_verse_pairs()}
    return lambda en, target: target if en in ding else verses.get(en)


def fingerprint(factors: dict[str, torch.Tensor]) -> str:
    """A short hash of an encoder's adapter factors: which encoder made a cache's frames."""
    digest = hashlib.sha256()
    for name in sorted(k for k in factors if k.startswith("encoder.")):
        digest.update(name.encode())
        digest.update(factors[name].detach().half().contiguous().numpy().tobytes())
    return digest.hexdigest()[:16]


def cache_encoder(folder: Path) -> str | None:
    """The fingerprint of the encoder that made a cache's frames (None for a cache made before it was recorded)."""
    path = folder / "encoder.json"
    return json.loads(path.read_text())["fingerprint"] if path.is_file() else None


def check_cache_encoder(folder: Path, ours: str, remedy: str) -> bool:
    """Whether `folder`'s frames are recorded as made by the encoder of fingerprint `ours` (False: made before it was
    recorded); frames recorded as another encoder's end the run, with `remedy` in the message."""
    made_by = cache_encoder(folder)
    if made_by not in (None, ours):
        raise SystemExit(f"{folder} holds frames of another encoder ({made_by}, this one is {ours}): {remedy}")
    return made_by is not None


def encoder_of(adapter: Path | None) -> tuple[Whisper, LoadedWhisper, dict]:
    """The tiny.en model with the shipped causal adapters (or `adapter`) merged; returns it, the base and the
    checkpoint's factors (which a translation model ships for its encoder)."""
    from streamst.checkpoint import read_checkpoint, resolve_model
    from streamst.whisper import bundled_tiny_en
    from streamst.whisper.load import load_whisper
    from streamst.whisper.lora import merge_factors

    obj = read_checkpoint(resolve_model(str(adapter) if adapter else "whisper-tiny.en-causal"))
    loaded = load_whisper(bundled_tiny_en())
    merged = merge_factors(loaded.state_dict, obj["factors"])
    net = Whisper(loaded.config)
    net.load_state_dict(merged, strict=False)
    return net.eval(), loaded, obj


@torch.no_grad()
def encode_utterance(net: Whisper, audio, block: int = 16) -> torch.Tensor:
    """The causal encoder's frames [T, D] of one utterance, as `CausalWhisperModel` streams them."""
    mel = causal_log_mel(torch.as_tensor(audio, dtype=torch.float32))
    return encode_full(net.encoder, mel[None], block=block, first_block=2 * block - 1)[0]


def build_cache(out: Path, examples: list[Example], *, worker: int = 0, workers: int = 1, seed: int = 1,
                adapter: Path | None = None, max_seconds: float = 15.0) -> None:
    """Write `out/<split>-NNNNN.pt` shards (this worker's share of them) of spoken, encoded examples."""
    from streamst.whisper.speech_pool import SpeechMaker

    torch.set_num_threads(1)
    net, _, obj = encoder_of(adapter)
    out.mkdir(parents=True, exist_ok=True)
    ours = fingerprint(obj["factors"])
    if not check_cache_encoder(out, ours, "use a new folder") and any(out.glob("*.pt")):
        raise SystemExit(f"{out} holds frames of another encoder (unrecorded, this one is {ours}): use a new folder")
    (out / "encoder.json").write_text(json.dumps({"fingerprint": ours, "adapter": str(adapter or
                                                                                     "whisper-tiny.en-causal")}))
    by_split: dict[str, list[Example]] = {}
    for e in examples:
        by_split.setdefault(split_of(e.en), []).append(e)
    for split in ("dev", "train"):
        items = by_split.get(split, [])
        for index, start in enumerate(range(0, len(items), SHARD)):
            if index % workers != worker:
                continue
            path = out / f"{split}-{index:05d}.pt"
            if path.exists():
                continue
            maker = SpeechMaker(seed * 100003 + index + (7919 if split == "dev" else 0))
            maker.voices = [v for v in maker.voices if v not in DEFAULT_TEST_VOICES]
            rows = []
            began = time.time()
            for e in items[start: start + SHARD]:
                try:
                    u = maker.speak(e.en)
                except Exception:  # noqa: BLE001 - a sentence one engine cannot say is skipped
                    continue
                if not 0.3 * 16000 < u.audio.size < max_seconds * 16000:
                    continue
                frames = encode_utterance(net, u.audio)
                rows.append({"frames": frames.half(), "en": e.en, "targets": e.targets, "voice": u.voice})
            tmp = path.with_name(path.name + ".tmp")
            torch.save(rows, tmp)
            os.replace(tmp, path)
            print(f"{path.name}: {len(rows)} utterances in {time.time() - began:.0f} s", flush=True)


def load_cache(folder: Path, split: str, lang: str, correct=None) -> list[tuple[torch.Tensor, str, str]]:
    """(frames, English, translation) of every cached example of a split that has a `lang` translation (after
    `correct`, a `corrected_targets` function, where given)."""
    out = []
    for path in sorted(folder.glob(f"{split}-*.pt")):
        for row in torch.load(path, weights_only=True):
            target = row["targets"].get(lang)
            if target is not None and correct is not None:
                target = correct(row["en"], target)
            if target is not None:
                out.append((row["frames"], row["en"], target))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--worker", type=int, default=0)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--limit", type=int, help="only the first N examples (a quick run)")
    ap.add_argument("--lang", choices=["de", "es"], help="only the examples with a translation into this language")
    ap.add_argument("--only", choices=["de", "es"], help="only the examples whose one translation is into this language")
    ap.add_argument("--kind", choices=KINDS, default="sentences", help="which text (see collect_examples)")
    ap.add_argument("--max-phrases", type=int, default=MAX_PHRASES)
    ap.add_argument("--adapter", type=Path, help="causal Whisper checkpoint (default: the shipped one)")
    args = ap.parse_args(argv)
    examples = collect_examples(args.kind, max_phrases=args.max_phrases)
    if args.lang:
        examples = [e for e in examples if args.lang in e.targets]
    if args.only:
        examples = [e for e in examples if set(e.targets) == {args.only}]
    if args.limit:
        examples = examples[: args.limit]
    print(f"{len(examples)} examples: {sum('de' in e.targets for e in examples)} with German, "
          f"{sum('es' in e.targets for e in examples)} with Spanish", flush=True)
    build_cache(args.out, examples, worker=args.worker, workers=args.workers, adapter=args.adapter)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
