"""A cascade: a streaming recogniser's committed English words, translated segment by segment by a text system.

The recogniser's `Session` (any policy) commits English words; once they close a segment (a word ending a
sentence, a clause of at least `clause_words` words, or `max_words` words) the segment is translated in one
call and its target words are committed. The state between calls is a value (`CascadeState`): the English
words not translated yet. Target words take the segment's last source word's `emitted_ms` (when it became
translatable) and its `compute_ms` plus the translation's own compute, so AL/LAAL and their computation-aware
forms score the cascade as the simultaneous task it is; their source spans share the segment's span evenly.
The partial caption is the English not yet translated (the recogniser's committed words and its partial tail).
"""
from __future__ import annotations

import shutil
import time
from dataclasses import dataclass
from typing import Protocol

from streamst.events import Event, Partial, Word

SENTENCE_END = ".!?;:"
CLOSERS = "\"')]}»”’"


class TextTranslator(Protocol):
    """English sentences -> target-language sentences, one for one."""

    target_lang: str

    def translate(self, sentences: list[str]) -> list[str]: ...


@dataclass(frozen=True)
class Apertium:
    """apertium's rule-based translation (offline, Debian's `apertium` and `apertium-eng-spa`)."""

    target_lang: str = "es"
    pair: str = "eng-spa"

    def translate(self, sentences: list[str]) -> list[str]:
        from streamst.data.sources import apertium_translate

        return apertium_translate(sentences, self.pair)


TRANSLATORS = {"apertium": {"es": Apertium}}


def text_translator(spec: str) -> TextTranslator:
    """`NAME[:LANG]` (e.g. `apertium`, `apertium:es`) -> that text translator, with a clear error otherwise."""
    name, _, lang = spec.partition(":")
    if name not in TRANSLATORS:
        raise ValueError(f"unknown text translator {name!r}; known: {', '.join(TRANSLATORS)}")
    lang = lang or next(iter(TRANSLATORS[name]))
    if lang not in TRANSLATORS[name]:
        raise ValueError(f"{name} translates English into {', '.join(TRANSLATORS[name])}, not {lang!r}")
    if name == "apertium" and shutil.which("apertium") is None:
        raise ValueError("the apertium cascade needs Debian's apertium and apertium-eng-spa (apt-get install ...)")
    return TRANSLATORS[name][lang]()


@dataclass(frozen=True)
class SegmentRule:
    """Where a segment of committed English words ends."""

    clause_words: int = 8  # a comma closes a segment once it holds at least this many words
    max_words: int = 24  # a segment never waits for more words than this

    def boundaries(self, words: list[str]) -> list[int]:
        """The end index of every whole segment in `words` (the words after the last one keep waiting)."""
        ends, start = [], 0
        for i, w in enumerate(words):
            core, n = w.rstrip(CLOSERS), i + 1 - start
            if (core and core[-1] in SENTENCE_END) or (core.endswith(",") and n >= self.clause_words) \
                    or n >= self.max_words:
                ends.append(i + 1)
                start = i + 1
        return ends


@dataclass(frozen=True)
class CascadeState:
    pending: tuple[Word, ...] = ()  # committed English words not translated yet
    partial: str = ""  # the recogniser's partial tail, last seen
    partial_ms: float = 0.0  # the source audio it had heard then
    compute_ms: float = 0.0  # translation compute so far (added to every later word's compute_ms)


@dataclass(frozen=True)
class Cascade:
    """A text translator over a recogniser's committed words, and where its segments end."""

    translator: TextTranslator
    rule: SegmentRule = SegmentRule()

    @property
    def target_lang(self) -> str:
        return self.translator.target_lang

    def step(self, state: CascadeState, events: list[Event], final: bool = False) -> tuple[list[Event], CascadeState]:
        """The recogniser's events of one step -> the cascade's (target words, then the English partial) and the
        new state; `final` translates every word still waiting (the stream's end)."""
        pending = list(state.pending) + [e for e in events if isinstance(e, Word)]
        partials = [e for e in events if isinstance(e, Partial)]
        partial = "" if final else (partials[-1].text if partials else state.partial)
        source_ms = partials[-1].source_ms if partials else state.partial_ms
        ends = self.rule.boundaries([w.text for w in pending])
        if final and pending and (not ends or ends[-1] < len(pending)):
            ends.append(len(pending))
        out: list[Event] = []
        compute_ms = state.compute_ms
        if ends:
            segments = [pending[a:b] for a, b in zip([0] + ends[:-1], ends)]
            began = time.perf_counter()
            targets = self.translator.translate([" ".join(w.text for w in seg) for seg in segments])
            compute_ms += (time.perf_counter() - began) * 1000.0
            for seg, target in zip(segments, targets):
                out += _target_words(seg, target.split(), compute_ms)
        rest = tuple(pending[ends[-1]:] if ends else pending)
        if out or partials:
            out.append(Partial(" ".join([w.text for w in rest] + ([partial] if partial else [])), source_ms))
        return out, CascadeState(rest, partial, source_ms, compute_ms)


def _target_words(segment: list[Word], texts: list[str], compute_ms: float) -> list[Word]:
    """A segment's target words: committed when its last source word was, spread over its source span."""
    last = segment[-1]
    starts = [w.start_ms for w in segment if w.start_ms is not None]
    ends = [w.end_ms for w in segment if w.end_ms is not None]
    span = (min(starts), max(ends)) if starts and ends else None
    out = []
    for i, text in enumerate(texts):
        start = end = None
        if span is not None:
            step = (span[1] - span[0]) / len(texts)
            start, end = span[0] + i * step, span[0] + (i + 1) * step
        out.append(Word(text, last.emitted_ms, last.compute_ms + compute_ms, start, end))
    return out
