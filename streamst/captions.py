"""Subtitles (SRT, WebVTT) from committed words: group words into short cues timed by their source span."""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Iterable

MS_PER_CHAR = 60.0  # reading time: about 17 characters a second, the usual ceiling for subtitles
PAUSE_MS = 2000.0  # a pause this long between two words starts a new cue
SENTENCE_END = (".", "?", "!", "。", "？", "！")
ABBREVIATIONS = {"mr.", "mrs.", "ms.", "dr.", "prof.", "st.", "jr.", "sr.", "e.g.", "i.e.", "vs.", "hr.", "fr.", "frau.",
                 "nr.", "z.b.", "sra.", "sr.", "dra."}  # a period that ends no sentence


def ends_sentence(word: str) -> bool:
    """Whether a cue may end after this word: final punctuation that is not a title like "Mr."."""
    return word.endswith(SENTENCE_END) and word.lower() not in ABBREVIATIONS


@dataclass(frozen=True)
class Cue:
    start_ms: float
    end_ms: float
    text: str


def _field(word: Any, name: str) -> Any:
    return word.get(name) if isinstance(word, dict) else getattr(word, name, None)


class SpanOrder:
    """Makes word spans run forwards, one word at a time (so it works on a live stream).

    A span starts no earlier than the previous word's start and ends no earlier than it starts: cross-attention
    sometimes peaks on an early frame ("dem" at 0-40 ms after "aus" at 2,240 ms), and a caption must never jump
    back in time.
    """

    def __init__(self) -> None:
        self.last_start = 0.0

    def __call__(self, word: Any) -> Any:
        """The word (a `Word` or a dict) with its span put in order; words without a span pass unchanged."""
        start, end = _field(word, "start_ms"), _field(word, "end_ms")
        if start is None or end is None:
            return word
        new_start = max(float(start), self.last_start)
        new_end = max(float(end), new_start)
        self.last_start = new_start
        if isinstance(word, dict):
            return {**word, "start_ms": new_start, "end_ms": new_end}
        return replace(word, start_ms=new_start, end_ms=new_end)


def ordered_spans(words: Iterable[Any]) -> list[Any]:
    """The words with `SpanOrder` applied to the whole sequence."""
    order = SpanOrder()
    return [order(w) for w in words]


def _span(word: Any) -> tuple[float, float]:
    """A word's source span; where the model gives none, the time it was emitted stands in."""
    start, end, emitted = _field(word, "start_ms"), _field(word, "end_ms"), _field(word, "emitted_ms")
    start = start if start is not None else (emitted or 0.0)
    end = end if end is not None else max(start, emitted or start)
    return float(start), float(max(end, start))


def group_cues(words: Iterable[Any], max_chars: int = 42, max_ms: float = 5000.0, min_ms: float = 500.0,
               source_ms: float | None = None) -> list[Cue]:
    """Cut the word sequence into cues of at most `max_chars` characters and `max_ms` duration.

    A cue starts at its first word's span (spans put in order first), ends a sentence, breaks at a pause of
    `PAUSE_MS`, stays on for its reading time (`MS_PER_CHAR` a character, at least `min_ms`) unless the next cue
    starts earlier, and never overlaps the next one. The last cue lasts until its words were committed, so a
    file's captions run to where its last words were heard; no cue runs past `source_ms` (the audio's length).
    """
    groups: list[list[tuple[str, float, float, float]]] = []
    for w in ordered_spans(words):
        text = str(_field(w, "text")).strip()
        if not text:
            continue
        start, end = _span(w)
        emitted = float(_field(w, "emitted_ms") or end)
        cur = groups[-1] if groups else None
        if cur is not None and not ends_sentence(cur[-1][0]) and start - cur[-1][2] < PAUSE_MS:
            length = sum(len(t) + 1 for t, *_ in cur) + len(text)
            if length <= max_chars and end - cur[0][1] <= max_ms:
                cur.append((text, start, end, emitted))
                continue
        groups.append([(text, start, end, emitted)])
    cues: list[Cue] = []
    for i, g in enumerate(groups):
        text = " ".join(t for t, *_ in g)
        start = max(g[0][1], cues[-1].end_ms if cues else 0.0)
        end = max(max(e for _, _, e, _ in g), start + max(min_ms, MS_PER_CHAR * len(text)))
        if i + 1 == len(groups):
            end = max(end, g[-1][3])
        next_start = groups[i + 1][0][1] if i + 1 < len(groups) else None
        if next_start is not None and next_start > start:
            end = min(end, next_start)  # cues do not overlap
        if source_ms is not None and source_ms > start:
            end = min(end, source_ms)
        cues.append(Cue(start, end, text))
    return cues


def _stamp(ms: float, sep: str) -> str:
    ms = int(round(max(ms, 0.0)))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def srt_blocks(cues: Iterable[Cue], first: int = 1, offset_ms: float = 0.0) -> list[str]:
    """SubRip cue blocks numbered from `first`, shifted by `offset_ms` (files laid end to end)."""
    return [f"{i}\n{_stamp(c.start_ms + offset_ms, ',')} --> {_stamp(c.end_ms + offset_ms, ',')}\n{c.text}\n"
            for i, c in enumerate(cues, first)]


def vtt_blocks(cues: Iterable[Cue], offset_ms: float = 0.0) -> list[str]:
    """WebVTT cue blocks (no header), shifted by `offset_ms`."""
    return [f"{_stamp(c.start_ms + offset_ms, '.')} --> {_stamp(c.end_ms + offset_ms, '.')}\n{c.text}\n"
            for c in cues]


def to_srt(words: Iterable[Any], **kw: Any) -> str:
    """SubRip text: numbered cues, `HH:MM:SS,mmm --> HH:MM:SS,mmm`."""
    return "\n".join(srt_blocks(group_cues(words, **kw)))


def to_vtt(words: Iterable[Any], **kw: Any) -> str:
    """WebVTT text: a `WEBVTT` header, then cues with `HH:MM:SS.mmm` times."""
    return "WEBVTT\n\n" + "\n".join(vtt_blocks(group_cues(words, **kw)))


def write_captions(path: str | Path, words: Iterable[Any]) -> Path:
    """Write SRT or VTT by the file's suffix (`.srt` / `.vtt`), through a temporary file and a rename."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".srt", ".vtt"):
        raise ValueError(f"caption file must end in .srt or .vtt, got {path.name!r}")
    text = to_srt(words) if suffix == ".srt" else to_vtt(words)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)
    return path
