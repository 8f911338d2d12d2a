"""Subtitles (SRT, WebVTT) from committed words: group words into short cues timed by their source span."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable


@dataclass(frozen=True)
class Cue:
    start_ms: float
    end_ms: float
    text: str


def _field(word: Any, name: str) -> Any:
    return word.get(name) if isinstance(word, dict) else getattr(word, name, None)


def _span(word: Any) -> tuple[float, float]:
    """A word's source span; where the model gives none, the time it was emitted stands in."""
    start, end, emitted = _field(word, "start_ms"), _field(word, "end_ms"), _field(word, "emitted_ms")
    start = start if start is not None else (emitted or 0.0)
    end = end if end is not None else max(start, emitted or start)
    return float(start), float(max(end, start))


def group_cues(words: Iterable[Any], max_chars: int = 42, max_ms: float = 5000.0, min_ms: float = 500.0) -> list[Cue]:
    """Cut the word sequence into cues of at most `max_chars` characters and `max_ms` duration.

    Cue times never go backwards and each cue lasts at least `min_ms` (unless the next cue starts earlier).
    """
    groups: list[list[tuple[str, float, float]]] = []
    for w in words:
        text = str(_field(w, "text")).strip()
        if not text:
            continue
        start, end = _span(w)
        cur = groups[-1] if groups else None
        if cur is not None:
            length = sum(len(t) + 1 for t, _, _ in cur) + len(text)
            if length <= max_chars and end - cur[0][1] <= max_ms:
                cur.append((text, start, end))
                continue
        groups.append([(text, start, end)])
    cues: list[Cue] = []
    for i, g in enumerate(groups):
        start = max(g[0][1], cues[-1].end_ms if cues else 0.0)
        end = max(max(e for _, _, e in g), start + min_ms)
        next_start = groups[i + 1][0][1] if i + 1 < len(groups) else None
        if next_start is not None and next_start > start:
            end = min(end, next_start)  # cues do not overlap
        cues.append(Cue(start, end, " ".join(t for t, _, _ in g)))
    return cues


def _stamp(ms: float, sep: str) -> str:
    ms = int(round(max(ms, 0.0)))
    h, rem = divmod(ms, 3_600_000)
    m, rem = divmod(rem, 60_000)
    s, ms = divmod(rem, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(words: Iterable[Any], **kw: Any) -> str:
    """SubRip text: numbered cues, `HH:MM:SS,mmm --> HH:MM:SS,mmm`."""
    blocks = [f"{i}\n{_stamp(c.start_ms, ',')} --> {_stamp(c.end_ms, ',')}\n{c.text}\n"
              for i, c in enumerate(group_cues(words, **kw), 1)]
    return "\n".join(blocks)


def to_vtt(words: Iterable[Any], **kw: Any) -> str:
    """WebVTT text: a `WEBVTT` header, then cues with `HH:MM:SS.mmm` times."""
    blocks = [f"{_stamp(c.start_ms, '.')} --> {_stamp(c.end_ms, '.')}\n{c.text}\n" for c in group_cues(words, **kw)]
    return "WEBVTT\n\n" + "\n".join(blocks)


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
