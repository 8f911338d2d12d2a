"""Short-form latency metrics on plain lists, number for number as SimulEval 1.1.4 and OmniSTEval 0.1.10.

Inputs are per-unit delays (ms of source consumed when the unit was emitted), optionally the
computation-aware ``elapsed`` times, the source length in ms and the reference length in units.
Every metric function returns a float, or ``None`` when the metric is undefined for the instance;
:func:`score_instance` also gives the reason. Semantics (see ../shared/METRICS.md §3):

* ``|Y*|`` (hypothesis length) is always ``len(delays)``.
* AL, LAAL, AP, DAL, ATD, StartOffset, EndOffset follow SimulEval 1.1.4 ``latency_scorer.py``;
  YAAL follows OmniSTEval 0.1.10 ``YAALScorer`` (short-form, cutoff = source length).
* ``X_CA`` is the same formula on ``elapsed``; ATD_CA is SimulEval's own CA variant (chunks on delays).

Deliberate differences from SimulEval 1.1.4 (its fixed main branch behaves like us):

1. ``--computation-aware`` in 1.1.4 also turns the plain columns into CA ones (AL == AL_CA);
   here plain metrics always use ``delays`` and only ``*_CA`` use ``elapsed``.
2. Where 1.1.4 raises and kills the whole corpus (zero-length source with AL/LAAL/AP/DAL, an empty
   char-level reference with AL/AP, a missing ``source_length``), the instance is skipped for that
   metric with a warning (value ``None``) and the corpus mean is over the remaining instances.
3. When every instance is skipped, the corpus value is ``None`` (SimulEval raises StatisticsError,
   OmniSTEval returns NaN).
"""
from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

Number = float
SRC_TOKEN_MS = 300  # SimulEval ATD: 300 ms per pseudo source word for speech input
PLAIN_METRICS = ("AL", "LAAL", "YAAL", "DAL", "AP", "ATD", "StartOffset", "EndOffset")


class Undefined(Exception):
    """Raised inside a formula when the metric is undefined for one instance; carries the reason."""


def reference_length(reference: str | None, unit: str, n_units: int, spm_encode: Callable[[str], list] | None = None) -> int:
    """Reference length |Y| as SimulEval counts it; ``None`` reference means ``len(delays)``.

    word: ``len(ref.split(" "))`` (empty strings count, so "" gives 1); char: ``len(ref.strip())``
    (inner spaces kept); spm: number of SentencePiece pieces.
    """
    if reference is None:
        return n_units
    if unit == "word":
        return len(reference.split(" "))
    if unit == "char":
        return len(reference.strip())
    if unit == "spm":
        if spm_encode is None:
            raise ValueError("latency unit 'spm' needs a SentencePiece model (--spm-model)")
        return len(spm_encode(reference))
    raise ValueError(f"unknown latency unit {unit!r} (word, char or spm)")


def yaal_reference_length(reference: str | None, unit: str, n_units: int,
                          spm_encode: Callable[[str], list] | None = None) -> int:
    """Reference length |Y| of YAAL as OmniSTEval 0.1.10 counts it: its readers strip each reference line first,
    then count ``split(" ")`` words (or characters); so leading and trailing spaces do not count, inner runs of
    spaces do, as in SimulEval."""
    return reference_length(reference.strip() if reference is not None else None, unit, n_units, spm_encode)


def _check(delays: Sequence[Number], source_length: Number | None) -> None:
    if delays is None or len(delays) == 0:
        raise Undefined("no delays (empty prediction)")
    if source_length is None:
        raise Undefined("no source_length")


def _lagging(delays: Sequence[Number], source_length: Number, length_for_gamma: int) -> float:
    """The AL/LAAL loop: include the first unit with d >= |X| and stop there."""
    if delays[0] > source_length:
        return delays[0]
    if source_length == 0:
        raise Undefined("zero-length source")
    if length_for_gamma == 0:
        raise Undefined("empty reference (length 0)")
    gamma = length_for_gamma / source_length
    total = 0
    tau = 0
    for t, d in enumerate(delays):
        total += d - t / gamma
        tau = t + 1
        if d >= source_length:
            break
    return total / tau


def _al(delays, source_length, ref_len):
    _check(delays, source_length)
    return _lagging(delays, source_length, ref_len)


def _laal(delays, source_length, ref_len):
    _check(delays, source_length)
    return _lagging(delays, source_length, max(len(delays), ref_len))


def _yaal(delays, source_length, ref_len, time_to_recording_end=None, longform=False):
    """OmniSTEval YAAL: only units strictly before the cutoff count; d[0] at/after it skips."""
    _check(delays, source_length)
    rec_end = float("inf") if time_to_recording_end is None else time_to_recording_end
    if delays[0] >= rec_end:
        raise Undefined("first unit emitted at or after the end of the recording")
    if delays[0] >= source_length and not longform:
        raise Undefined("first unit emitted at or after the end of the source")
    if not source_length > 0:
        raise Undefined("zero-length source")
    gamma = max(len(delays), ref_len) / source_length
    total = 0.0
    tau = 0
    for t, d in enumerate(delays):
        if (d >= source_length and not longform) or d >= rec_end:
            break
        total += d - t / gamma
        tau = t + 1
    if tau == 0:
        raise Undefined("no unit before the cutoff")
    return total / tau


def _ap(delays, source_length, ref_len):
    _check(delays, source_length)
    if source_length == 0:
        raise Undefined("zero-length source")
    if ref_len == 0:
        raise Undefined("empty reference (length 0)")
    return sum(delays) / (source_length * ref_len)


def _dal(delays, source_length, ref_len=None):
    """DAL uses len(delays) only; the reference is ignored."""
    _check(delays, source_length)
    if source_length == 0:
        raise Undefined("zero-length source")
    n = len(delays)
    gamma = n / source_length
    total = 0
    g_prev = 0
    for i, g in enumerate(delays):
        g_prime = g if i == 0 else max(g, g_prev + 1 / gamma)
        total += g_prime - i / gamma
        g_prev = g_prime
    return total / n


def _start_offset(delays, source_length=None, ref_len=None):
    if delays is None or len(delays) == 0:
        raise Undefined("no delays (empty prediction)")
    return delays[0]


def _end_offset(delays, source_length, ref_len=None):
    _check(delays, source_length)
    return delays[-1] - source_length


def _atd(delays: Sequence[Number], elapsed: Sequence[Number] | None = None, computation_aware: bool = False) -> float:
    """SimulEval ATD for speech input and text output (300 ms pseudo source tokens, 0 ms target tokens)."""
    delays = list(delays or [])
    if not delays:
        raise Undefined("no delays (empty prediction)")
    if computation_aware:
        if elapsed is None or len(elapsed) == 0:
            raise Undefined("no elapsed")
        elapsed = list(elapsed)
        if elapsed != [0] * len(delays):
            compute_elapsed = [e - d for e, d in zip(elapsed, delays)]
            compute_times = [c - p for c, p in zip(compute_elapsed, [0] + compute_elapsed[:-1])]
        else:
            compute_times = elapsed
    else:
        compute_times = [0] * len(delays)

    tgt_sizes = [0]
    prev = None
    for d in delays:
        if d != prev:
            tgt_sizes.append(1)
        else:
            tgt_sizes[-1] += 1
        prev = d
    tgt_chunk_of = [0]
    for i, size in enumerate(tgt_sizes[1:], 1):
        tgt_chunk_of += [i] * size

    unique = sorted(set(delays), key=delays.index)
    src_sizes = [0]
    src_time = [0]
    for d, p in zip(unique, [0] + unique[:-1]):
        n_tokens, rest = divmod(d - p, SRC_TOKEN_MS)
        lens = int(n_tokens) * [SRC_TOKEN_MS] + ([rest] if rest != 0 else [])
        src_sizes.append(len(lens))
        for token_len in lens:
            src_time.append(src_time[-1] + token_len)

    tgt_time = [0]
    for d, c in zip(delays, compute_times):
        tgt_time.append(max(d, tgt_time[-1]) + 0 + c)

    per_token = []
    for t in range(1, len(tgt_chunk_of)):
        chunk = tgt_chunk_of[t]
        acc_x = sum(src_sizes[:chunk])
        acc_y = sum(tgt_sizes[:chunk])
        s = t - max(0, acc_y - acc_x)
        current = sum(src_sizes[: chunk + 1])
        s = s if s < current else current
        per_token.append(tgt_time[t] - src_time[s])
    return float(statistics.mean(per_token))


def _safe(fn: Callable[..., float], *args, **kwargs) -> tuple[float | None, str | None]:
    try:
        return fn(*args, **kwargs), None
    except Undefined as e:
        return None, str(e)


# Public single-metric functions: float, or None when undefined.
def average_lagging(delays: Sequence[Number], source_length: Number | None, ref_len: int) -> float | None:
    """AL (SimulEval ALScorer)."""
    return _safe(_al, delays, source_length, ref_len)[0]


def length_adaptive_average_lagging(delays: Sequence[Number], source_length: Number | None, ref_len: int) -> float | None:
    """LAAL (SimulEval LAALScorer): gamma uses max(|Y*|, |Y|)."""
    return _safe(_laal, delays, source_length, ref_len)[0]


def yet_another_average_lagging(delays: Sequence[Number], source_length: Number | None, ref_len: int,
                                time_to_recording_end: Number | None = None, longform: bool = False) -> float | None:
    """YAAL (OmniSTEval YAALScorer); ``longform=True`` with ``time_to_recording_end`` gives LongYAAL."""
    return _safe(_yaal, delays, source_length, ref_len, time_to_recording_end, longform)[0]


def average_proportion(delays: Sequence[Number], source_length: Number | None, ref_len: int) -> float | None:
    """AP (SimulEval APScorer): sum(d) / (|X| * |Y|), no cutoff."""
    return _safe(_ap, delays, source_length, ref_len)[0]


def differentiable_average_lagging(delays: Sequence[Number], source_length: Number | None) -> float | None:
    """DAL (SimulEval DALScorer)."""
    return _safe(_dal, delays, source_length)[0]


def average_token_delay(delays: Sequence[Number], elapsed: Sequence[Number] | None = None,
                        computation_aware: bool = False) -> float | None:
    """ATD (SimulEval ATDScorer, speech input, text output)."""
    return _safe(_atd, delays, elapsed, computation_aware)[0]


def start_offset(delays: Sequence[Number]) -> float | None:
    """Delay of the first unit."""
    return _safe(_start_offset, delays)[0]


def end_offset(delays: Sequence[Number], source_length: Number | None) -> float | None:
    """Delay of the last unit minus the source length."""
    return _safe(_end_offset, delays, source_length)[0]


_FORMULAS: dict[str, Callable] = {
    "AL": _al, "LAAL": _laal, "YAAL": _yaal, "DAL": _dal, "AP": _ap,
    "StartOffset": _start_offset, "EndOffset": _end_offset,
}


@dataclass
class InstanceLatency:
    """Latency values of one instance: ``values[name]`` is a float or None, ``reasons[name]`` why None."""

    values: dict[str, float | None] = field(default_factory=dict)
    reasons: dict[str, str] = field(default_factory=dict)


def score_instance(delays: Sequence[Number] | None, source_length: Number | None, ref_len: int | None,
                   elapsed: Sequence[Number] | None = None, computation_aware: bool = False,
                   metrics: Iterable[str] = PLAIN_METRICS, yaal_ref_len: int | None = None) -> InstanceLatency:
    """All requested metrics (and their ``_CA`` forms when asked) for one instance.

    ``ref_len`` is |Y| from :func:`reference_length` (SimulEval's count); ``None`` means "use len(delays)".
    ``yaal_ref_len`` is YAAL's |Y| from :func:`yaal_reference_length` (OmniSTEval's count); ``None``: ``ref_len``.
    """
    out = InstanceLatency()
    n = len(delays) if delays else 0
    r = n if ref_len is None else ref_len
    r_yaal = r if yaal_ref_len is None else yaal_ref_len
    streams = [("", delays)] + ([("_CA", elapsed)] if computation_aware else [])
    for suffix, stamps in streams:
        for name in metrics:
            key = name + suffix
            if name == "ATD":
                value, reason = _safe(_atd, delays, elapsed, suffix == "_CA")
            elif suffix == "_CA" and (stamps is None or len(stamps) == 0):
                value, reason = None, "no elapsed"
            else:
                value, reason = _safe(_FORMULAS[name], stamps, source_length, r_yaal if name == "YAAL" else r)
            out.values[key] = value
            if reason is not None:
                out.reasons[key] = reason
    return out


def corpus_mean(values: Iterable[float | None]) -> float | None:
    """Arithmetic mean over defined values (statistics.mean, as both toolkits); None if none is defined."""
    defined = [v for v in values if v is not None]
    return statistics.mean(defined) if defined else None
