"""Every policy through the real `Session` loop, on a scripted model whose timing and attention are known.

The scripted model "hears" piece i of a script at a known encoder frame and attends exactly there, and like a
real decoder it guesses one piece beyond what it has heard. Its frames carry their absolute index, so it keeps
working after StreamAtt trims the memory. This pins what the session and the policies must do together:
every word written exactly once and in order, never before it is heard, promptly under the attention
policies, and a memory that stays flat under StreamAtt on a long stream.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from streamst.decoding import StopRule, StopTracker
from streamst.events import Word
from streamst.policies import parse_policy
from streamst.session import Session
from streamst.speech_model import Hypothesis

W = "\u2581"
FRAME_MS = 40.0
SAMPLES_PER_FRAME = 640  # 40 ms at 16 kHz
CHUNK_MS = 320.0

VOCAB = ["the", "stream", "ing", "model", "writes", "every", "word", "on", "time", "and", "never",
         "re", "peats", "it", "self", "again"]


def make_script(n_words: int, seed: int = 0) -> tuple[list[str], list[int], list[str]]:
    """Pieces, the frame each is heard at, and the words they make (a sentence ends every 7 words)."""
    rng = np.random.default_rng(seed)
    pieces, frames, words = [], [], []
    t = 3
    for w in range(n_words):
        n_pieces = int(rng.integers(1, 3))
        parts = [str(rng.choice(VOCAB)) for _ in range(n_pieces)]
        if w % 7 == 6:
            parts.append(".")
        for j, part in enumerate(parts):
            pieces.append((W if j == 0 else "") + part)
            frames.append(t)
            t += int(rng.integers(2, 5))
        words.append("".join(parts))
        t += int(rng.integers(0, 4))  # pauses between words
    return pieces, frames, words


class ScriptTokenizer:
    """Token id i is piece i of the script."""

    bos, eos = -1, -2

    def __init__(self, pieces: list[str]):
        self._pieces = pieces

    def pieces(self, ids) -> list[str]:
        return [self._pieces[int(i)] for i in ids]

    def decode(self, ids) -> str:
        return "".join(self.pieces(ids)).replace(W, " ").strip()


class ScriptedModel:
    """A `SpeechModel` that transcribes a script as its audio arrives, attending to where each piece was said."""

    frame_ms = FRAME_MS
    appends_memory = True
    batches = False
    max_target_tokens = None
    task = "asr"

    def __init__(self, pieces: list[str], frames: list[int]):
        self.script_frames = frames
        self.tokenizer = ScriptTokenizer(pieces)

    def init_state(self) -> int:
        return 0  # samples consumed

    def encode(self, audio: torch.Tensor, state: int, final: bool = False) -> tuple[torch.Tensor, int]:
        before, after = state // SAMPLES_PER_FRAME, (state + audio.numel()) // SAMPLES_PER_FRAME
        return torch.arange(before, after, dtype=torch.float32)[:, None], state + audio.numel()

    def drop_frames(self, state: int, n: int, tokens: int = 0) -> int:
        return state

    def _rows(self, ids: list[int], first: int, n_frames: int) -> torch.Tensor:
        rows = torch.full((len(ids), n_frames), 0.4 / max(1, n_frames - 1))
        for r, i in enumerate(ids):
            rows[r, min(max(self.script_frames[i] - first, 0), n_frames - 1)] = 0.6
        return rows[None, None]  # [layers, heads, tokens, frames]

    def decode(self, memory: torch.Tensor, prefix: list[int], state: int, *, beam: int = 1, max_tokens: int = 64,
               stop: StopRule | None = None) -> tuple[Hypothesis, int]:
        first, last = int(memory[0, 0]), int(memory[-1, 0])
        if prefix:
            nxt = prefix[-1] + 1
        else:  # no history: start at the first piece still in the memory
            nxt = next((i for i, f in enumerate(self.script_frames) if f >= first), len(self.script_frames))
        heard = [i for i in range(nxt, len(self.script_frames)) if self.script_frames[i] <= last]
        tokens = heard + ([nxt + len(heard)] if nxt + len(heard) < len(self.script_frames) else [])  # one guess
        tokens = tokens[:max_tokens]
        # where greedy decoding under the session's stop rule would end
        tracker = StopTracker(stop, frozenset(i for i, p in enumerate(self.tokenizer._pieces) if p.startswith(W)))
        rows = self._rows(tokens, first, memory.shape[0])
        tokens = next((tokens[:n + 1] for n, t in enumerate(tokens) if tracker.add(t, rows[:, :, n:n + 1])), tokens)
        return Hypothesis(
            tokens=tokens,
            attention=self._rows(tokens, first, memory.shape[0]),
            ended=bool(tokens) and tokens[-1] == len(self.script_frames) - 1,
            prefix_attention=self._rows(prefix, first, memory.shape[0]) if prefix else None,
        ), state

    def samples_cut(self, state: int) -> int:
        return 0

    def restart_unwritten(self, state: int) -> None:
        return None  # no restart after the final pass

    def needs_commit(self, state: int) -> bool:
        return False

    def ctc_words(self, memory: torch.Tensor) -> int | None:
        last = int(memory[-1, 0])
        return sum(1 for i, f in enumerate(self.script_frames) if f <= last and self.tokenizer._pieces[i][0] == W)


def run_stream(spec: str, n_words: int, seed: int = 0) -> tuple[list[Word], list[int], ScriptedModel, Session]:
    """Push a scripted stream chunk by chunk; the words written and the memory size after each chunk."""
    pieces, frames, _ = make_script(n_words, seed)
    model = ScriptedModel(pieces, frames)
    session = Session(model, parse_policy(spec), chunk_ms=CHUNK_MS)
    samples = (frames[-1] + 10) * SAMPLES_PER_FRAME
    chunk = int(CHUNK_MS * 16)
    audio = np.zeros(chunk, dtype=np.float32)
    events, memory = [], []
    for _ in range(0, samples, chunk):
        events += session.push(audio)
        memory.append(session.memory.shape[0])
    events += session.finish()
    return [e for e in events if isinstance(e, Word)], memory, model, session


def word_end_ms(n_words: int, seed: int = 0) -> list[float]:
    """When the last piece of each script word has been heard (the frame after it)."""
    pieces, frames, _ = make_script(n_words, seed)
    ends: list[float] = []
    for p, f in zip(pieces, frames):
        if p.startswith(W):
            ends.append(0.0)
        ends[-1] = (f + 1) * FRAME_MS
    return ends


SPECS = [
    "waitk:k=2", "waitk:k=1,unit=word", "la:n=2", "la:n=3", "edatt:alpha=0.2,lambda=2", "edatt:alpha=0.1,norm=none",
    "alignatt:frames=4", "alignatt:frames=2,zscore=1", "streamatt:frames=4,history_words=5",
    "streamatt:frames=4,history=punct", "offline",
]


@pytest.mark.parametrize("spec", SPECS)
def test_every_word_is_written_once_in_order_and_never_before_it_is_heard(spec):
    n_words = 40
    words, _, _, _ = run_stream(spec, n_words)
    assert [w.text for w in words] == make_script(n_words)[2]
    for w, heard in zip(words, word_end_ms(n_words)):
        assert w.emitted_ms >= heard, (w, heard)


@pytest.mark.parametrize("spec,max_lag_ms", [
    ("alignatt:frames=4", CHUNK_MS + 6 * FRAME_MS),
    ("streamatt:frames=4,history_words=5", CHUNK_MS + 6 * FRAME_MS),
    ("edatt:alpha=0.2,lambda=2", CHUNK_MS + 6 * FRAME_MS),
])
def test_attention_policies_write_each_word_soon_after_it_is_heard(spec, max_lag_ms):
    # a word is complete once the next one starts, so the lag is measured from the next word's first piece
    n_words = 40
    pieces, frames, _ = make_script(n_words)
    next_start = [(f + 1) * FRAME_MS for p, f in zip(pieces, frames) if p.startswith(W)][1:]
    words, _, _, _ = run_stream(spec, n_words)
    lags = [w.emitted_ms - t for w, t in zip(words, next_start)]
    assert max(lags) <= max_lag_ms, lags


def test_offline_writes_everything_at_the_end():
    words, _, _, session = run_stream("offline", 20)
    assert {w.emitted_ms for w in words} == {session.source_ms}


def test_streamatt_memory_stays_flat_and_word_times_stay_true_on_a_long_stream():
    n_words = 1500  # about 6.5 minutes of speech
    words, memory, model, session = run_stream("streamatt:frames=4,history_words=5", n_words)
    assert [w.text for w in words] == make_script(n_words)[2]
    assert max(memory) < 120  # a few seconds of frames, whatever the length of the stream
    assert max(memory[len(memory) // 2:]) <= max(memory[: len(memory) // 2]) + 10
    assert session.frames_dropped > 10 * max(memory)
    # spans come from attention over the trimmed memory plus the dropped frames: still absolute times
    pieces, frames, _ = make_script(n_words)
    starts = [f * FRAME_MS for p, f in zip(pieces, frames) if p.startswith(W)]
    assert [w.start_ms for w in words[-50:]] == starts[-50:]


def test_alignatt_alone_keeps_the_whole_memory():
    _, memory, _, _ = run_stream("alignatt:frames=4", 200)
    assert memory == sorted(memory) and memory[-1] > 1000
