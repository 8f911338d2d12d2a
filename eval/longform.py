"""Long-form latency of unsegmented talks: StreamLAAL (simulstream 1.0.0) and LongYAAL (OmniSTEval 0.1.10).

Both re-segment each talk's hypothesis to the reference segments (MuST-C yaml: wav, offset, duration in s)
and average a sentence-level metric over all non-empty segments of all talks (a macro average):

* StreamLAAL: mwerSegmenter re-segmentation (:mod:`.resegment`), delays assigned to the pieces in order,
  LAAL per segment on ``delay - offset`` (s, no clamping) with cutoff = segment duration and
  |Y| = words of the reference (empties dropped). simulstream reports seconds; we report ms (x1000).
* LongYAAL: SoftSegmenter re-segmentation (:mod:`.softsegmenter`), YAAL with ``is_longform=True`` on
  ``emission - offset`` (ms) whose cutoff is the time to the end of the talk's last reference segment.

Computation-aware timestamps: simulstream logs carry per-step compute (``total_audio_processed +
computation_time``) and are used as they are. SimulEval's ``elapsed`` is cumulative over the whole talk;
by default it is corrected as OmniSTEval's ``--fix_simuleval_emission_ca``:
``ca'_0 = e_0, ca'_i = max(e_i - e_{i-1} + d_{i-1}, ca'_{i-1})`` (``fix_emission_ca=False`` turns it off).

Deliberate differences: a segment with zero duration is skipped with a warning (simulstream divides by
zero; OmniSTEval drops the whole latency group); a talk of the segmentation missing from the hypothesis
is an error naming the talk.
"""
from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from .formats import text_items
from .latency import Undefined, _lagging, _yaal
from .resegment import align_texts, c_split
from .softsegmenter import soft_segment

SPM_SPACE = "\u2581"


@dataclass
class Talk:
    """One talk's hypothesis: its units' text and timestamps (ms from the start of the recording)."""

    name: str
    text: str
    delays_ms: list[float]
    ca_ms: list[float] | None = None
    delays_s: list[float] | None = None   # simulstream logs: the original seconds, used as such by StreamLAAL
    ca_s: list[float] | None = None


@dataclass
class Segment:
    wav: str
    offset: float      # seconds, as in the yaml
    duration: float    # seconds
    reference: str     # stripped reference line


@dataclass
class LongformResult:
    values: dict[str, float | None] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    resegmented: list[dict] = field(default_factory=list)   # SoftSegmenter segments (for BLEU/chrF)


def fix_emission_ca(delays: Sequence[float], elapsed: Sequence[float]) -> list[float]:
    """OmniSTEval ``fix_emission_ca``: per-word compute instead of SimulEval's cumulative wall clock."""
    fixed: list[float] = []
    for i, e in enumerate(elapsed):
        value = e if i == 0 else e - elapsed[i - 1] + delays[i - 1]
        fixed.append(value if i == 0 else max(value, fixed[-1]))
    return fixed


def make_segments(raw: Sequence[dict], references: Sequence[str]) -> list[Segment]:
    """Pair segmentation entries with reference lines (both toolkits strip the lines)."""
    if len(raw) != len(references):
        raise ValueError(f"{len(raw)} segments but {len(references)} reference lines")
    return [Segment(str(s["wav"]), s["offset"], s["duration"], ref.strip()) for s, ref in zip(raw, references)]


def _talk_key(name: str) -> str:
    return Path(Path(name).name).stem


def _group(segments: Sequence[Segment]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = {}
    for k, seg in enumerate(segments):
        groups.setdefault(_talk_key(seg.wav), []).append(k)
    return groups


def _match_talks(segments: Sequence[Segment], talks: Sequence[Talk], warnings: list[str]) -> dict[str, Talk]:
    by_key = {_talk_key(t.name): t for t in talks}
    groups = _group(segments)
    missing = [k for k in groups if k not in by_key]
    if missing:
        raise ValueError(f"talks of the segmentation missing from the hypothesis: {', '.join(missing[:5])}")
    extra = [k for k in by_key if k not in groups]
    if extra:
        warnings.append(f"hypothesis talks not in the segmentation ignored: {', '.join(extra[:5])}")
    return by_key


def _cj_encode(text: str) -> list[str]:
    """mweralign CJSegmenter: runs of Latin-1 (spaces kept as U+2581) are one token, other chars one each."""
    text = text.replace(SPM_SPACE, "\x00").replace(" ", SPM_SPACE)
    tokens, i = [], 0
    while i < len(text):
        if ord(text[i]) <= 0xFF or text[i] == SPM_SPACE:
            start = i
            while i < len(text) and (ord(text[i]) <= 0xFF or text[i] == SPM_SPACE):
                i += 1
            tokens.append(text[start:i])
        else:
            tokens.append(text[i])
            i += 1
    return tokens


def stream_laal(segments: Sequence[Segment], talks: Sequence[Talk], unit: str = "word",
                computation_aware: bool = True) -> LongformResult:
    """StreamLAAL (and StreamLAAL_CA) in ms, as simulstream 1.0.0 ``stream_laal`` (which prints seconds)."""
    result = LongformResult()
    by_key = _match_talks(segments, talks, result.warnings)
    ideal_scores: list[float] = []
    ca_scores: list[float] = []
    skipped_empty = 0
    for key, idx in _group(segments).items():
        talk = by_key[key]
        delays = talk.delays_s if talk.delays_s is not None else [d / 1000 for d in talk.delays_ms]
        has_ca = computation_aware and (talk.ca_s is not None or talk.ca_ms is not None)
        ca = (talk.ca_s if talk.ca_s is not None else [e / 1000 for e in talk.ca_ms]) if has_ca else None
        refs = [segments[k].reference for k in idx]
        if unit == "char":
            pieces_tok = align_texts([" ".join(_cj_encode(r)) for r in refs], " ".join(_cj_encode(talk.text)))
            counts = [sum(len(t) for t in piece) for piece in pieces_tok]
        else:
            pieces = align_texts(refs, talk.text)
            counts = [len(p) for p in pieces]
        if sum(counts) != len(delays):
            raise ValueError(f"talk {talk.name}: {sum(counts)} re-segmented units but {len(delays)} delays")
        start = 0
        for k, count in zip(idx, counts):
            seg = segments[k]
            piece_d = delays[start:start + count]
            piece_c = ca[start:start + count] if ca is not None else None
            start += count
            if count == 0:
                skipped_empty += 1
                continue
            r = len(text_items(seg.reference, unit))
            try:
                ideal_scores.append(_lagging([d - seg.offset for d in piece_d], seg.duration, max(count, r)))
                if piece_c is not None:
                    ca_scores.append(_lagging([d - seg.offset for d in piece_c], seg.duration, max(count, r)))
            except Undefined as e:
                result.warnings.append(f"StreamLAAL: segment {k} ({seg.wav} at {seg.offset} s) skipped: {e}")
    if skipped_empty:
        result.warnings.append(f"StreamLAAL: {skipped_empty} segments skipped as their re-segmented hypothesis is empty")
    result.values["StreamLAAL"] = statistics.mean(ideal_scores) * 1000 if ideal_scores else None
    if computation_aware:
        result.values["StreamLAAL_CA"] = statistics.mean(ca_scores) * 1000 if ca_scores else None
    return result


def long_yaal(segments: Sequence[Segment], talks: Sequence[Talk], unit: str = "word", lang: str | None = None,
              computation_aware: bool = True) -> LongformResult:
    """LongYAAL (and LongYAAL_CA) in ms with SoftSegmenter re-segmentation, as OmniSTEval 0.1.10 longform."""
    result = LongformResult()
    by_key = _match_talks(segments, talks, result.warnings)
    char = unit == "char"
    refs = [s.reference.replace(" ", "") if char else s.reference for s in segments]
    cu_scores: list[float] = []
    ca_scores: list[float] = []
    skipped: dict[tuple[str, str], list[int]] = defaultdict(list)
    for key, idx in _group(segments).items():
        talk = by_key[key]
        offsets = [segments[k].offset * 1000 for k in idx]
        durations = [segments[k].duration * 1000 for k in idx]
        recording_end = 0
        for o, d in zip(offsets, durations):
            recording_end = max(recording_end, o + d)
        ref_units: list[str] = []
        ref_seg: list[int] = []
        for local, k in enumerate(idx):
            line = refs[k].strip().lower()
            units = list(line) if char else line.split()
            ref_units += units
            ref_seg += [local] * len(units)
        hyp_units = list(talk.text) if char else talk.text.split()
        if len(hyp_units) != len(talk.delays_ms):
            raise ValueError(f"talk {talk.name}: {len(hyp_units)} units but {len(talk.delays_ms)} delays")
        assigned = soft_segment(ref_units, ref_seg, hyp_units, len(idx), lang=lang, char_level=char)
        for local, k in enumerate(idx):
            words = assigned[local]
            prediction = ("" if char else " ").join(hyp_units[w] for w in words)
            record = {"index": k, "prediction": prediction, "reference": refs[k]}
            result.resegmented.append(record)
            if not words:
                continue
            source_length = durations[local] if durations[local] > 0 else None
            to_end = recording_end - offsets[local]
            r = len(refs[k].strip()) if char else len(refs[k].strip().split(" "))  # OmniSTEval strips each line
            cu = [talk.delays_ms[w] - offsets[local] for w in words]
            record["emission_cu"] = cu
            try:
                record["LongYAAL"] = _yaal(cu, source_length, r, to_end, longform=True)
                cu_scores.append(record["LongYAAL"])
            except Undefined as e:
                record["LongYAAL"] = None
                skipped[("LongYAAL", str(e))].append(k)
            if computation_aware and talk.ca_ms is not None:
                ca = [talk.ca_ms[w] - offsets[local] for w in words]
                record["emission_ca"] = ca
                try:
                    record["LongYAAL_CA"] = _yaal(ca, source_length, r, to_end, longform=True)
                    ca_scores.append(record["LongYAAL_CA"])
                except Undefined as e:
                    record["LongYAAL_CA"] = None
                    skipped[("LongYAAL_CA", str(e))].append(k)
    for (metric, reason), ks in skipped.items():
        shown = ", ".join(map(str, ks[:10])) + (", ..." if len(ks) > 10 else "")
        result.warnings.append(f"{metric}: {len(ks)} segments skipped: {reason} (segments {shown})")
    result.values["LongYAAL"] = statistics.mean(cu_scores) if cu_scores else None
    early = [d for r in result.resegmented for d in r.get("emission_cu", []) if d < 0]
    if early:
        total = sum(len(r.get("emission_cu", [])) for r in result.resegmented)
        sign = "negative" if (result.values["LongYAAL"] or 0) < 0 else "lowered"
        result.warnings.append(
            f"LongYAAL is {sign} by {len(early)} of {total} words emitted before the start of the segment the "
            "re-segmentation gave them to (as OmniSTEval computes it): the output follows the references poorly "
            "where this happens; see BLEU and the re-segmented predictions")
    if computation_aware:
        result.values["LongYAAL_CA"] = statistics.mean(ca_scores) if ca_scores else None
    result.resegmented.sort(key=lambda r: r["index"])
    return result


def talks_from_instances(records, fix_ca: bool = True) -> list[Talk]:
    """Talks from SimulEval/OmniSTEval long-form records (one per talk; delays and elapsed in ms)."""
    talks = []
    for rec in records:
        name = rec.source or str(rec.index)
        delays = rec.delays or []
        ca = rec.elapsed if rec.elapsed else None
        if ca is not None and fix_ca:
            ca = fix_emission_ca(delays, ca)
        talks.append(Talk(name, rec.prediction, list(delays), ca))
    return talks


def talks_from_simulstream(outputs) -> list[Talk]:
    """Talks from replayed simulstream outputs (seconds kept for StreamLAAL, ms for LongYAAL)."""
    return [Talk(o.name, o.text, [d * 1000 for d in o.ideal_delays], [c * 1000 for c in o.ca_delays],
                 delays_s=list(o.ideal_delays), ca_s=list(o.ca_delays)) for o in outputs]


__all__ = ["Talk", "Segment", "LongformResult", "fix_emission_ca", "make_segments", "stream_laal", "long_yaal",
           "talks_from_instances", "talks_from_simulstream", "c_split"]
