"""`Session`: the only streaming loop. The CLI, `streamst eval`, the server and the microphone demo all push
audio into a Session and read the same typed events out of it.

    chunker --chunks--> model.encode (features + cached encoder) --frames--> memory
    memory + committed prefix --model.decode--> candidate --policy--> committed words + partial tail

`push`/`finish` run each chunk alone; a scheduler may instead drive the same phases (`take_chunks`,
`model.encode`, `absorb`, `decode_request`, `model.decode`, `commit`) for many sessions at once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from streamst.audio import SAMPLE_RATE, AudioFormat, Chunker
from streamst.decoding import StopRule
from streamst.events import Event, Partial, Word
from streamst.policies.base import Candidate, Policy, PolicyView, word_starts
from streamst.speech_model import Hypothesis, SpeechModel
from streamst.tokenizer import WORD_START

MAX_FINAL_PASSES = 8  # a stream's end restarts a model that stopped early at most this many times


@dataclass(frozen=True)
class DecodeRequest:
    """One stream's decoder call for a chunk: continue after `prefix` over `memory` [frames, d]."""

    memory: torch.Tensor
    prefix: list[int]
    state: Any  # the stream's model state, which `model.decode` takes and returns
    beam: int
    max_tokens: int
    stop: StopRule | None = None  # where the continuation may end: what the policy may commit, plus the partial
    flush: bool = False  # the model's window is nearly full: commit every whole word now (`needs_commit`)


class Session:
    """One stream: `push(pcm) -> events`, then `finish() -> events` (which flushes every remaining word)."""

    def __init__(
        self,
        model: SpeechModel,
        policy: Policy,
        audio_format: AudioFormat = AudioFormat(),
        *,
        chunk_ms: float = 320.0,
        beam: int = 1,
        max_new_tokens: int = 64,
        max_tokens_per_s: float | None = 25.0,
        partial_words: int | None = 3,
        clock=time.perf_counter,
    ):
        if beam < 1:
            raise ValueError(f"beam must be >= 1, got {beam}")
        self.model, self.policy = model, policy
        self.chunker = Chunker(audio_format, chunk_ms)
        self.chunk_ms, self.beam, self.max_new_tokens, self.clock = chunk_ms, beam, max_new_tokens, clock
        # the whole stream writes at most 16 + max_tokens_per_s * seconds heard (fairseq's max_len_a/b, per second):
        # a model that runs away on audio unlike its training data cannot grow the forced prefix without bound
        # (None: no such bound)
        self.max_tokens_per_s = max_tokens_per_s
        self.tokens_committed = 0
        # words decoded beyond what the policy may commit, shown as the partial caption (None: decode the whole
        # continuation every chunk, as before policies could bound it)
        self.partial_words = partial_words
        self.model_state = model.init_state()  # the model's per-stream value (encoder caches, window, ...)
        self.memory: torch.Tensor | None = None  # encoder frames the decoder attends to
        self.frames_dropped = 0  # frames forgotten from the front of the memory (StreamAtt)
        self.policy_state = policy.init_state()
        self.history: list[list[int]] = []  # token ids of each committed word kept as the forced prefix
        self.words: list[str] = []  # every committed word of the stream
        self.samples = 0  # 16 kHz samples consumed
        self.chunks = 0
        self.compute_s = 0.0
        self.finished = False
        self.final_passes = 0  # final passes after the last chunk (`another_final_pass`)
        self._last_partial = ""

    # ------------------------------------------------------------------ public API

    def push(self, pcm: bytes | np.ndarray) -> list[Event]:
        """Feed one piece of audio (any size); returns the events of every chunk it completed."""
        events: list[Event] = []
        for chunk, final in self.take_chunks(pcm):  # raises ValueError on bad audio before changing any state
            events += self._step(chunk, final)
        return events

    def finish(self) -> list[Event]:
        """End of stream: encode the rest and commit every word still held (with more final passes while the model
        restarts after an early end-of-text: `another_final_pass`)."""
        if self.finished:
            return []
        events: list[Event] = []
        chunks = self.take_final_chunks()
        while chunks:
            for chunk, final in chunks:
                events += self._step(chunk, final)
            chunks = self.another_final_pass()
        self.finished = True
        return events

    def set_policy(self, policy: Policy) -> None:
        """Switch policy mid-stream (its bookkeeping starts afresh; committed words stay)."""
        self.policy, self.policy_state = policy, policy.init_state()

    def stats(self) -> dict:
        audio_s = self.samples / SAMPLE_RATE
        return {"audio_s": audio_s, "compute_s": self.compute_s, "rtf": self.compute_s / audio_s if audio_s else 0.0}

    @property
    def source_ms(self) -> float:
        return self.samples * 1000.0 / SAMPLE_RATE

    # ------------------------------------------------------------------ the steps, for schedulers
    # A chunk goes through three phases: `model.encode` (which a batching scheduler may run for many streams at
    # once), `absorb` its frames, then `decode_request` -> `model.decode` (batchable too) -> `commit`.

    def take_chunks(self, pcm: bytes | np.ndarray) -> list[tuple[np.ndarray, bool]]:
        """The (audio, final) chunks one piece of audio completes; ValueError on bad audio, with no state changed."""
        if self.finished:
            raise ValueError("session already finished")
        return [(chunk, False) for chunk in self.chunker.push(pcm)]

    def take_final_chunks(self) -> list[tuple[np.ndarray, bool]]:
        """The chunks that end the stream (at least one, the last marked final); the caller sets `finished`."""
        chunks = self.chunker.flush() or [np.zeros(0, dtype=np.float32)]
        return [(chunk, i == len(chunks) - 1) for i, chunk in enumerate(chunks)]

    def another_final_pass(self) -> list[tuple[np.ndarray, bool]]:
        """After the final chunk: one more final pass (an empty final chunk) when the model ended its text early
        with speech unwritten and restarts its window after what the stream committed
        (`model.restart_unwritten`), at most `MAX_FINAL_PASSES` times; else none."""
        if self.final_passes >= MAX_FINAL_PASSES:
            return []
        state = self.model.restart_unwritten(self.model_state)
        if state is None:
            return []
        self.model_state, self.final_passes = state, self.final_passes + 1
        return [(np.zeros(0, dtype=np.float32), True)]

    def absorb(self, audio: np.ndarray, frames: torch.Tensor, model_state: Any) -> None:
        """Take the encoder's output for one chunk: the new frames join the memory, the state is kept."""
        self.model_state = model_state
        if self.model.appends_memory and self.memory is not None:
            self.memory = torch.cat([self.memory, frames], dim=0)
        else:
            self.memory = frames
        self.samples += audio.size
        self.chunks += 1

    def decode_request(self, final: bool) -> DecodeRequest | None:
        """What the decoder must continue now (memory, forced prefix, beam, budget); None when no decision is due."""
        if self.memory is None or self.memory.shape[0] == 0:
            return None
        flush = not final and self.model.needs_commit(self.model_state)
        if not final and self.policy.writes_only_at_end and not flush:
            return None
        prefix = [t for word in self.history for t in word]
        if self.max_tokens_per_s is None:
            allowance = self.memory.shape[0] + 16
        else:
            allowance = max(0, int(self.max_tokens_per_s * self.source_ms / 1000.0) + 16 - self.tokens_committed)
        # mid-stream a chunk's call is also capped (its cost); the final call may write what the stream has left,
        # up to one token per memory frame; neither runs past the decoder's positions (a forced prefix longer than
        # them writes nothing more: endless streams need StreamAtt, which keeps the history short)
        if final or flush:
            budget = min(allowance, self.memory.shape[0] + 16)
        else:
            budget = min(self.max_new_tokens, self.memory.shape[0] // 2 + 8, allowance)
        positions = self.model.max_target_tokens
        if positions is not None:
            budget = max(0, min(budget, positions - 1 - len(prefix)))
        stop = None if flush else self._stop_rule(final)
        return DecodeRequest(self.memory, prefix, self.model_state, self.beam, budget, stop, flush)

    def _stop_rule(self, final: bool) -> StopRule | None:
        """Where the policy will commit no more on this chunk, known before decoding: a word count
        (`max_commit_words`) or a test on each token's attention (`late_token`); None when it has neither."""
        if self.partial_words is None or not self.policy.stop_hooks:
            return None
        view = PolicyView(candidate=Candidate([], []), committed=list(self.words), frames=self.memory.shape[0],
                          frame_ms=self.model.frame_ms, source_ms=self.source_ms, chunks=self.chunks, finished=final)
        words = self.policy.max_commit_words(view, self.policy_state)
        late = self.policy.late_token(view, self.policy_state)
        if words is None and late is None:
            return None
        return StopRule(None if words is None else words + self.partial_words, late, self.partial_words)

    def commit(self, request: DecodeRequest, hyp: Hypothesis, model_state: Any, final: bool, t0: float,
               shared_s: float = 0.0) -> list[Event]:
        """Take `model.decode`'s continuation and state, run the policy on it, and emit the committed words and the
        partial tail.

        `t0` is when this stream's own work on the chunk began and `shared_s` its share of batched work before
        that; both go into each word's `compute_ms`.
        """
        self.model_state = model_state
        tok = self.model.tokenizer
        prefix = request.prefix
        pieces = tok.pieces(hyp.tokens)
        attention = None if hyp.attention is None else hyp.attention.float().numpy()
        view = PolicyView(
            candidate=Candidate(list(hyp.tokens), pieces, attention, hyp.ended, hyp.ended_in_pause),
            committed=list(self.words),
            frames=self.memory.shape[0],
            frame_ms=self.model.frame_ms,
            source_ms=self.source_ms,
            chunks=self.chunks,
            finished=final,
            source_words=self.model.ctc_words(self.memory) if self.policy.needs_source_words else None,
            prefix_attention=None if hyp.prefix_attention is None else hyp.prefix_attention.float().numpy(),
            prefix_pieces=tok.pieces(prefix),
        )
        decision, self.policy_state = self.policy.decide(view, self.policy_state)
        n = len(pieces) if final else whole_words(pieces, len(pieces) if request.flush else decision.tokens)
        if hyp.ended_in_pause and decision.tokens >= len(pieces):
            n = len(pieces)  # the decoder ended in a pause: its last word is whole
        events: list[Event] = []
        compute_ms = (self.compute_s + shared_s + self.clock() - t0) * 1000.0
        starts = word_starts(pieces[:n]) + [n]
        for a, b in zip(starts, starts[1:]):
            text = tok.decode(hyp.tokens[a:b]).strip()  # not the pieces: byte-level ones split a character
            if not text:
                continue
            span = self._span(attention, a, b)
            events.append(Word(text, self.source_ms, compute_ms, *span))
            self.words.append(text)
            if self.history and not pieces[a].startswith(WORD_START):
                # a piece that continues the last word ("," or "'ll" committed after it) joins that word: the
                # history's entries are the forced prefix's words as `word_starts` counts them, which is what a
                # policy's `keep_words` counts
                self.history[-1] = self.history[-1] + list(hyp.tokens[a:b])
            else:
                self.history.append(list(hyp.tokens[a:b]))
            self.tokens_committed += b - a
        gone = 0  # tokens that left the history
        if decision.keep_words is not None and not final:
            kept = self.history[-decision.keep_words:] if decision.keep_words > 0 else []
            gone = sum(len(w) for w in self.history[:len(self.history) - len(kept)])
            self.history = kept
        # the model hears of a shortened history even with no frame dropped: a model that made some of the
        # history its prompt (Whisper, after cutting their audio) must not count words that left it
        if (decision.drop_frames > 0 or gone) and not final:
            drop = min(decision.drop_frames, self.memory.shape[0])
            if self.model.appends_memory:  # a re-encoding model rebuilds its memory from the trimmed window
                self.memory = self.memory[drop:]
            self.frames_dropped += drop
            self.model_state = self.model.drop_frames(self.model_state, drop, gone)
        if hyp.ended_in_pause and n == len(pieces) and not final:
            # every word is committed and the speaker paused: the model may restart its window after them
            self.model_state = self.model.restart_unwritten(self.model_state) or self.model_state
        partial = "" if final else tok.decode(hyp.tokens[n:]).strip()
        if partial != self._last_partial:
            events.append(Partial(partial, self.source_ms))
            self._last_partial = partial
        return events

    # ------------------------------------------------------------------ one chunk, alone

    def _step(self, audio: np.ndarray, final: bool) -> list[Event]:
        t0 = self.clock()
        audio_t = torch.from_numpy(np.require(audio, np.float32, ['C', 'W']))
        frames, model_state = self.model.encode(audio_t, self.model_state, final)
        self.absorb(audio, frames, model_state)
        events: list[Event] = []
        request = self.decode_request(final)
        if request is not None:
            hyp, model_state = self.model.decode(request.memory, request.prefix, request.state, beam=request.beam,
                                                 max_tokens=request.max_tokens, stop=request.stop)
            events = self.commit(request, hyp, model_state, final, t0)
        self.compute_s += self.clock() - t0
        return events

    def _span(self, attention: np.ndarray | None, a: int, b: int) -> tuple[float | None, float | None]:
        """Source span of tokens a..b from the most-attended frames (last layer, heads averaged)."""
        if attention is None or attention.shape[-1] == 0:
            return None, None
        best = attention[-1].mean(0)[a:b].argmax(-1)
        frame_ms = self.model.frame_ms
        # audio a model cut from its own window (Whisper's trims, VAD silence) is not in `frames_dropped`
        offset = self.model.samples_cut(self.model_state) * 1000.0 / SAMPLE_RATE
        start = (float(best.min()) + self.frames_dropped) * frame_ms + offset
        end = (float(best.max()) + 1 + self.frames_dropped) * frame_ms + offset
        # no word ends after the audio heard (a model may pad the end of a stream, as the causal Whisper does)
        return min(start, self.source_ms), min(end, self.source_ms)


def whole_words(pieces: list[str], n: int) -> int:
    """Round a commit of n tokens down to whole words: a word is complete once the next word starts."""
    n = max(0, min(n, len(pieces)))
    if n == len(pieces):
        # the last word may still grow with the next chunk: keep it unless nothing follows it in the commit
        starts = word_starts(pieces)
        return starts[-1] if starts else 0
    bounds = [s for s in word_starts(pieces) if 0 < s <= n]
    return bounds[-1] if bounds else 0
