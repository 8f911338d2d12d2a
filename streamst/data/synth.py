"""Build synthetic speech corpora in the exact MuST-C v1 layout from offline text and espeak-ng voices.

Layout: `<root>/<pair>/data/<split>/wav/<talk>.wav` (16 kHz mono PCM16) and `.../txt/<split>.yaml` (one
`{duration, offset, speaker_id, wav}` per segment), `.../txt/<split>.en`, `.../txt/<split>.<tgt>`. Sentences are
spoken with random voice, speed, pitch, level and noise and joined, with pauses, into talks of a few minutes (one
voice per talk). Sentences go to dev/tst-COMMON by a hash of their English text, so the held-out sentences are
the same in every pair and every run with the same seed; tst-COMMON is spoken only by voices never used in train or
dev. Everything is a function of the seed: each talk draws from its own generator, whatever the worker count.
The one exception: espeak-ng carries its pitch-flutter phase from one utterance to the next inside a process, so
samples (not lengths, offsets or texts) differ slightly between runs.
"""
from __future__ import annotations

import json
import math
import multiprocessing
import zlib
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from streamst.data import sources, tts

SPLITS = ("train", "dev", "tst-COMMON")
SAMPLE_RATE = 16000
DEFAULT_TEST_VOICES = ("en-gb-scotland+f2", "en-us+m4")
_CHARS_PER_SECOND = 19.0  # espeak-ng at 175 words per minute after trimming (measured on Ding), for planning
_PAUSE_SECONDS = 0.9  # mean pause between sentences in a talk


@dataclass(frozen=True)
class SynthConfig:
    """What to build; `hours` caps the train split per pair (estimated), `max_sentences` the sentence pool."""

    pairs: tuple[str, ...] = ("en-de",)
    hours: float | None = None
    max_sentences: int | None = None
    dev_fraction: float = 0.03
    test_fraction: float = 0.06
    test_voices: tuple[str, ...] = DEFAULT_TEST_VOICES
    talk_seconds: tuple[float, float] = (120.0, 300.0)
    workers: int = 1
    seed: int = 0


@dataclass(frozen=True)
class TalkTask:
    """One talk to render: its sentences in order, one voice, and the seed of its own random generator."""

    wav_path: str
    voice: str
    texts: tuple[str, ...]
    seed: int


@dataclass
class SplitStats:
    """What a split holds, for the data card."""

    sentences: int = 0
    segments: int = 0
    talks: int = 0
    seconds: float = 0.0
    voices: list[str] = field(default_factory=list)
    sources: dict[str, int] = field(default_factory=dict)


def stable_hash(*parts: object) -> int:
    """A 32-bit hash that is the same in every process and run (unlike Python's hash())."""
    return zlib.crc32("\x1f".join(str(p) for p in parts).encode("utf-8"))


def assign_split(english: str, seed: int, dev_fraction: float, test_fraction: float) -> str:
    """Which split a sentence belongs to, from a hash of its English text alone."""
    u = stable_hash("split", seed, english) / 2**32
    if u < test_fraction:
        return "tst-COMMON"
    if u < test_fraction + dev_fraction:
        return "dev"
    return "train"


def split_pairs(pairs: list[sources.SentencePair], config: SynthConfig) -> dict[str, list[sources.SentencePair]]:
    """Partition sentence pairs into train/dev/tst-COMMON; each split gets at least one sentence."""
    if len(pairs) < 3:
        raise ValueError(f"need at least 3 sentences to make train, dev and tst-COMMON, got {len(pairs)}")
    splits: dict[str, list[sources.SentencePair]] = {s: [] for s in SPLITS}
    for p in pairs:
        splits[assign_split(p.en, config.seed, config.dev_fraction, config.test_fraction)].append(p)
    for name in ("tst-COMMON", "dev"):  # tiny pools: move the lowest-hash train sentence over
        if not splits[name]:
            donor = min(splits["train"], key=lambda p: stable_hash("split", config.seed, p.en))
            splits["train"].remove(donor)
            splits[name].append(donor)
    if not splits["train"]:
        raise ValueError("no sentence left for train: lower --dev-fraction/--test-fraction")
    return splits


def voices_for(split: str, test_voices: tuple[str, ...]) -> list[str]:
    """tst-COMMON uses only the held-out voices; train and dev use every other English voice."""
    if split == "tst-COMMON":
        return list(test_voices)
    held_out = set(test_voices)
    return [v for v in tts.english_voices() if v not in held_out]


def plan_talks(pairs: list[sources.SentencePair], split: str, pair: str, config: SynthConfig,
               wav_dir: Path) -> list[tuple[TalkTask, list[sources.SentencePair]]]:
    """Order the split's sentences into talks: train makes passes (fresh order and voices) until `hours`."""
    rng = np.random.default_rng(stable_hash("plan", config.seed, pair, split))
    voices = voices_for(split, config.test_voices)
    budget = math.inf
    if split == "train" and config.hours is not None:
        budget = config.hours * 3600.0
    utterances: list[sources.SentencePair] = []
    planned = 0.0
    while True:
        for i in rng.permutation(len(pairs)):
            if planned >= budget:
                break
            utterances.append(pairs[i])
            planned += len(pairs[i].en) / _CHARS_PER_SECOND
        if split != "train" or planned >= budget or math.isinf(budget):
            break
    talks: list[tuple[TalkTask, list[sources.SentencePair]]] = []
    start = 0
    while start < len(utterances):
        target = rng.uniform(*config.talk_seconds)
        end, seconds = start, 0.0
        while end < len(utterances) and (seconds < target or end == start):
            seconds += len(utterances[end].en) / _CHARS_PER_SECOND + _PAUSE_SECONDS
            end += 1
        chunk = utterances[start:end]
        name = f"{split}_{len(talks):05d}.wav"
        task = TalkTask(wav_path=str(wav_dir / name), voice=str(rng.choice(voices)),
                        texts=tuple(p.en for p in chunk), seed=stable_hash("talk", config.seed, pair, split, name))
        talks.append((task, chunk))
        start = end
    return talks


def _trim(audio: np.ndarray, sample_rate: int, threshold: float = 2e-3, margin_s: float = 0.05) -> np.ndarray:
    """Cut espeak-ng's leading and trailing silence down to a short margin."""
    loud = np.flatnonzero(np.abs(audio) > threshold)
    if loud.size == 0:
        return audio
    margin = int(margin_s * sample_rate)
    return audio[max(0, loud[0] - margin): loud[-1] + margin + 1]


def _background_noise(rng: np.random.Generator, size: int, dbfs: float) -> np.ndarray:
    """White hiss plus a rumble (white noise held over 8 samples, so mostly below 1 kHz) at an RMS of `dbfs`.

    A block of a few seconds is drawn and tiled: drawing minutes of Gaussian noise would cost more than the TTS.
    """
    block = min(size, int(rng.uniform(5.0, 9.0) * SAMPLE_RATE))
    hiss = rng.standard_normal(block, dtype=np.float32)
    rumble = np.repeat(rng.standard_normal(block // 8 + 1, dtype=np.float32), 8)[:block]
    mix = rng.uniform(0.2, 0.8)
    noise = (1 - mix) * hiss + mix * rumble
    noise *= np.float32(10 ** (dbfs / 20) / float(np.sqrt(np.mean(noise**2))))
    return np.resize(noise, size)


def render_talk(task: TalkTask) -> list[tuple[float, float]]:
    """Speak a talk's sentences with pauses, level changes and background noise; write a 16 kHz wav.

    Returns (offset, duration) in seconds of each sentence in the written wav. Runs in worker processes, so it
    takes and returns plain values only.
    """
    import soundfile
    import torch
    import torchaudio.functional

    rng = np.random.default_rng(task.seed)
    base_rate, base_pitch = rng.uniform(140, 210), rng.uniform(30, 70)
    pitch_range = rng.uniform(30, 90)
    speech_dbfs = rng.uniform(-32, -18)  # talk level (RMS of speech)
    snr_db = None if rng.random() < 0.25 else rng.uniform(12, 40)

    pieces: list[np.ndarray] = []
    spans: list[tuple[int, int]] = []
    sr = tts.ESPEAK_SAMPLE_RATE
    cursor = 0

    def add(samples: np.ndarray) -> None:
        nonlocal cursor
        pieces.append(samples)
        cursor += samples.size

    add(np.zeros(int(rng.uniform(0.3, 1.0) * sr), np.float32))
    for text in task.texts:
        rate = int(np.clip(base_rate * rng.uniform(0.88, 1.12), 80, 400))
        pitch = int(np.clip(base_pitch + rng.uniform(-8, 8), 0, 99))
        audio, sr = tts.synthesize(text, task.voice, rate=rate, pitch=pitch, pitch_range=int(pitch_range))
        audio = _trim(audio, sr)
        rms = float(np.sqrt(np.mean(audio**2))) if audio.size else 0.0
        if rms > 0:
            audio = audio * (10 ** ((speech_dbfs + rng.uniform(-3, 3)) / 20) / rms)
        spans.append((cursor, audio.size))
        add(audio.astype(np.float32))
        add(np.zeros(int(rng.uniform(0.3, 1.5) * sr), np.float32))
    talk = np.concatenate(pieces)
    talk16 = torchaudio.functional.resample(torch.from_numpy(talk), sr, SAMPLE_RATE).numpy()
    if snr_db is not None:
        talk16 = talk16 + _background_noise(rng, talk16.size, speech_dbfs - snr_db)
    talk16 = np.clip(talk16, -1.0, 1.0)
    Path(task.wav_path).parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(task.wav_path, talk16, SAMPLE_RATE, subtype="PCM_16")
    total_s = talk16.size / SAMPLE_RATE
    out = []
    for start, length in spans:
        offset = math.floor(start / sr * 1e6) / 1e6
        duration = math.floor(min(length / sr, total_s - offset) * 1e6) / 1e6
        out.append((offset, duration))
    return out


def _init_worker() -> None:
    """Worker processes: one torch thread each, the pool gives the parallelism."""
    import torch

    torch.set_num_threads(1)


def _yaml_line(duration: float, offset: float, speaker: str, wav: str) -> str:
    """One MuST-C manifest entry in flow style, one per line like the real files."""
    return f"- {{duration: {duration:.6f}, offset: {offset:.6f}, speaker_id: '{speaker}', wav: {wav}}}\n"


def build_split(pair: str, split: str, pairs: list[sources.SentencePair], root: Path, config: SynthConfig,
                pool=None) -> SplitStats:
    """Render one split of one pair and write its wav files, yaml and text files."""
    source_lang, target_lang = pair.split("-")
    split_dir = root / pair / "data" / split
    wav_dir, txt_dir = split_dir / "wav", split_dir / "txt"
    wav_dir.mkdir(parents=True, exist_ok=True)
    txt_dir.mkdir(parents=True, exist_ok=True)
    talks = plan_talks(pairs, split, pair, config, wav_dir)
    tasks = [t for t, _ in talks]
    results = pool.map(render_talk, tasks, chunksize=1) if pool is not None else [render_talk(t) for t in tasks]
    stats = SplitStats(sentences=len(pairs), talks=len(talks))
    voices: set[str] = set()
    with (txt_dir / f"{split}.yaml").open("w", encoding="utf-8") as yaml_file, \
            (txt_dir / f"{split}.{source_lang}").open("w", encoding="utf-8") as src_file:
        tgt_file = (txt_dir / f"{split}.{target_lang}").open("w", encoding="utf-8") if target_lang != source_lang \
            else None
        try:
            for (task, chunk), spans in zip(talks, results):
                voices.add(task.voice)
                for p, (offset, duration) in zip(chunk, spans):
                    yaml_file.write(_yaml_line(duration, offset, task.voice, Path(task.wav_path).name))
                    src_file.write(p.en + "\n")
                    if tgt_file is not None:
                        tgt_file.write(p.target + "\n")
                    stats.segments += 1
                    stats.seconds += duration
                    stats.sources[p.source] = stats.sources.get(p.source, 0) + 1
        finally:
            if tgt_file is not None:
                tgt_file.close()
    stats.voices = sorted(voices)
    return stats


def build_corpus(root: Path, config: SynthConfig, *, command: str = "",
                 pair_sources: dict[str, list[sources.SentencePair]] | None = None,
                 text_dir: Path | None = None) -> dict[str, dict[str, SplitStats]]:
    """Build every pair of `config` under `root`, write DATA_CARD.md and synth_info.json; returns the stats.

    Text comes from `pair_sources` where given (tests, callers with their own text), else from the tsv files in
    `text_dir` (made by `streamst data text`, for machines with no apt), else from the apt packages.
    """
    if config.workers < 1:
        raise ValueError("--workers must be at least 1")
    if not 0 < config.dev_fraction + config.test_fraction < 1:
        raise ValueError("dev and test fractions must be positive and sum to less than 1")
    bad_voices = [v for v in config.test_voices if not tts.voice_exists(v)]
    if bad_voices:
        raise ValueError(f"unknown test voice(s) {bad_voices}; see `streamst data voices`")
    root.mkdir(parents=True, exist_ok=True)
    stats: dict[str, dict[str, SplitStats]] = {}
    context = multiprocessing.get_context("spawn")
    pool = context.Pool(config.workers, initializer=_init_worker) if config.workers > 1 else None
    try:
        for pair in config.pairs:
            pairs = pair_sources[pair] if pair_sources is not None else sources.sentence_pairs(pair, text_dir)
            order = np.random.default_rng(stable_hash("pool", config.seed, pair)).permutation(len(pairs))
            pool_pairs = [pairs[i] for i in order[: config.max_sentences]]
            splits = split_pairs(pool_pairs, config)
            stats[pair] = {s: build_split(pair, s, splits[s], root, config, pool) for s in SPLITS}
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    (root / "synth_info.json").write_text(json.dumps(
        {"config": asdict(config), "command": command,
         "stats": {p: {s: asdict(v) for s, v in by.items()} for p, by in stats.items()}}, indent=2) + "\n")
    from streamst.data.card import write_data_card

    write_data_card(root, config, stats, command=command)
    return stats
