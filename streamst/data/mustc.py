"""Read the MuST-C v1 layout (real MuST-C and our synthetic corpora alike) into segments, and their audio.

`<root>/<pair>/data/<split>/txt/<split>.yaml` lists `{wav, offset, duration, speaker_id}` per segment; line i of
`<split>.<src>` and `<split>.<tgt>` is its transcript and translation. A bad entry (unparsable yaml line, missing
field, missing wav, empty transcript, segment outside its wav) is reported with its file and line and skipped;
only a missing split folder is an error. Audio is read one talk wav at a time and sliced by offset and duration.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

SPLITS = ("train", "dev", "tst-COMMON", "tst-HE")
SAMPLE_RATE = 16000
_log = logging.getLogger(__name__)
_SLACK_S = 0.01  # tolerated overshoot of offset + duration past the end of the wav (rounding)


@dataclass(frozen=True)
class Segment:
    """One manifest entry: where its audio is inside a talk wav, who speaks, what is said and its translation."""

    wav: Path
    offset: float
    duration: float
    speaker: str
    source: str
    target: str
    index: int  # position in the split's yaml and text files (0-based)

    @property
    def talk(self) -> str:
        return self.wav.stem


@dataclass(frozen=True)
class Problem:
    """A skipped entry: the file, its 1-based line where known, and what is wrong."""

    path: Path
    line: int | None
    message: str

    def __str__(self) -> str:
        where = f"{self.path}:{self.line}" if self.line is not None else str(self.path)
        return f"{where}: {self.message}"


def split_paths(root: Path | str, pair: str, split: str) -> tuple[Path, Path, Path, Path]:
    """(yaml, source text, target text, wav folder) of a split; for 'en-en' both texts are the .en file."""
    try:
        source_lang, target_lang = pair.split("-")
    except ValueError:
        raise ValueError(f"language pair must look like 'en-de', got {pair!r}") from None
    split_dir = Path(root) / pair / "data" / split
    txt = split_dir / "txt"
    return txt / f"{split}.yaml", txt / f"{split}.{source_lang}", txt / f"{split}.{target_lang}", split_dir / "wav"


def _load_manifest(path: Path, problems: list[Problem]) -> list[object]:
    """The yaml's entries, one per line where the file has one `- {...}` per line (as MuST-C does).

    The whole file is parsed at once (fast); only if that fails is it parsed line by line, so a broken line
    costs just that entry and keeps the others aligned with the text files.
    """
    text = path.read_text(encoding="utf-8")
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    try:
        entries = yaml.load(text, Loader=loader)
        if entries is None:
            return []
        if isinstance(entries, list):
            return entries
        problems.append(Problem(path, None, "not a list of entries"))
        return []
    except yaml.YAMLError as whole_error:
        lines = text.splitlines()
        if not all(line.startswith("- ") or not line.strip() for line in lines):
            problems.append(Problem(path, None, f"unreadable yaml: {whole_error}"))
            return []
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            parsed = yaml.load(line, Loader=loader)
            entries.append(parsed[0] if isinstance(parsed, list) and len(parsed) == 1 else None)
        except yaml.YAMLError as e:
            problems.append(Problem(path, number, f"unparsable entry: {str(e).splitlines()[0]}"))
            entries.append(None)
    return entries


def _read_lines(path: Path) -> list[str]:
    with path.open(encoding="utf-8") as f:
        return [line.rstrip("\n").rstrip("\r") for line in f]


def read_split_checked(root: Path | str, pair: str, split: str) -> tuple[list[Segment], list[Problem]]:
    """All good segments of a split, and the problems found (each skipped entry once, each missing wav once)."""
    yaml_path, src_path, tgt_path, wav_dir = split_paths(root, pair, split)
    if not yaml_path.parent.is_dir():
        raise FileNotFoundError(f"no split {split!r} of {pair} under {root}: {yaml_path.parent} is missing")
    for p in (yaml_path, src_path, tgt_path):
        if not p.is_file():
            raise FileNotFoundError(f"{p} is missing")
    problems: list[Problem] = []
    entries = _load_manifest(yaml_path, problems)
    sources, targets = _read_lines(src_path), _read_lines(tgt_path)
    count = min(len(entries), len(sources), len(targets))
    if not len(entries) == len(sources) == len(targets):
        problems.append(Problem(yaml_path, None,
                                f"line counts differ: {len(entries)} entries, {len(sources)} in {src_path.name}, "
                                f"{len(targets)} in {tgt_path.name}; keeping the first {count}"))
    wav_lengths: dict[str, float | None] = {}
    segments: list[Segment] = []
    for i in range(count):
        entry, line = entries[i], i + 1
        if entry is None:
            continue  # already reported by _load_manifest
        fields = _entry_fields(entry)
        if isinstance(fields, str):
            problems.append(Problem(yaml_path, line, fields))
            continue
        wav_name, offset, duration, speaker = fields
        source, target = sources[i].strip(), targets[i].strip()
        if not source:
            problems.append(Problem(src_path, line, "empty transcript"))
            continue
        if not target:
            problems.append(Problem(tgt_path, line, "empty translation"))
            continue
        if wav_name not in wav_lengths:
            wav_lengths[wav_name] = _wav_seconds(wav_dir / wav_name)
            if wav_lengths[wav_name] is None:
                problems.append(Problem(yaml_path, line, f"missing or unreadable wav {wav_dir / wav_name} "
                                                         "(all its segments skipped)"))
        length = wav_lengths[wav_name]
        if length is None:
            continue
        if offset + duration > length + _SLACK_S:
            problems.append(Problem(yaml_path, line, f"segment {offset:.3f}+{duration:.3f} s runs past the end of "
                                                     f"{wav_name} ({length:.3f} s)"))
            continue
        segments.append(Segment(wav=wav_dir / wav_name, offset=offset, duration=min(duration, length - offset),
                                speaker=speaker, source=source, target=target, index=i))
    return segments, problems


def _entry_fields(entry: object) -> tuple[str, float, float, str] | str:
    """(wav, offset, duration, speaker) of a manifest entry, or a message saying what is wrong with it."""
    if not isinstance(entry, dict):
        return f"entry is not a mapping: {entry!r}"
    missing = [k for k in ("wav", "offset", "duration") if k not in entry]
    if missing:
        return f"entry lacks {', '.join(missing)}"
    try:
        offset, duration = float(entry["offset"]), float(entry["duration"])
    except (TypeError, ValueError):
        return f"offset/duration are not numbers: {entry['offset']!r}, {entry['duration']!r}"
    if not (math.isfinite(offset) and math.isfinite(duration)) or offset < 0 or duration <= 0:
        return f"bad offset/duration {offset}, {duration}"
    return str(entry["wav"]), offset, duration, str(entry.get("speaker_id", ""))


def _wav_seconds(path: Path) -> float | None:
    import soundfile

    try:
        info = soundfile.info(str(path))
    except (RuntimeError, OSError, soundfile.LibsndfileError):
        return None
    return info.frames / info.samplerate


def read_split(root: Path | str, pair: str, split: str) -> list[Segment]:
    """The good segments of a split; problems are logged as warnings with file and line."""
    segments, problems = read_split_checked(root, pair, split)
    for problem in problems:
        _log.warning("skipped: %s", problem)
    return segments


def _resample(audio: np.ndarray, from_rate: int, to_rate: int) -> np.ndarray:
    if from_rate == to_rate:
        return audio
    import torch
    import torchaudio.functional

    return torchaudio.functional.resample(torch.from_numpy(audio), from_rate, to_rate).numpy()


def _to_mono_float(audio: np.ndarray) -> np.ndarray:
    audio = audio.astype(np.float32, copy=False)
    return audio.mean(axis=1) if audio.ndim == 2 else audio


def load_segment_audio(segment: Segment, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Just one segment's samples (float32 mono at `sample_rate`), read from its offset without the whole talk."""
    import soundfile

    with soundfile.SoundFile(str(segment.wav)) as f:
        rate = f.samplerate
        start = int(round(segment.offset * rate))
        f.seek(min(start, f.frames))
        audio = f.read(int(round(segment.duration * rate)), dtype="float32", always_2d=False)
    return _resample(_to_mono_float(audio), rate, sample_rate)


def load_talk_audio(wav: Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A whole talk wav as float32 mono at `sample_rate`."""
    import soundfile

    audio, rate = soundfile.read(str(wav), dtype="float32", always_2d=False)
    return _resample(_to_mono_float(audio), rate, sample_rate)


def slice_segment(talk_audio: np.ndarray, segment: Segment, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """A segment's samples out of its talk's audio (already at `sample_rate`)."""
    start = int(round(segment.offset * sample_rate))
    return talk_audio[start: start + int(round(segment.duration * sample_rate))]


def iter_talks(segments: Iterable[Segment], sample_rate: int = SAMPLE_RATE
               ) -> Iterator[tuple[Path, np.ndarray, list[Segment]]]:
    """(wav path, talk audio, its segments in offset order) per talk, each wav read once, in first-seen order."""
    by_talk: dict[Path, list[Segment]] = {}
    for segment in segments:
        by_talk.setdefault(segment.wav, []).append(segment)
    for wav, talk_segments in by_talk.items():
        yield wav, load_talk_audio(wav, sample_rate), sorted(talk_segments, key=lambda s: s.offset)


def iter_segment_audio(segments: Iterable[Segment], sample_rate: int = SAMPLE_RATE
                       ) -> Iterator[tuple[Segment, np.ndarray]]:
    """(segment, samples) for every segment, grouped by talk so that each wav is read once."""
    for _, audio, talk_segments in iter_talks(segments, sample_rate):
        for segment in talk_segments:
            yield segment, slice_segment(audio, segment, sample_rate)
