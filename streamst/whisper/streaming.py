"""`WhisperStreamingModel`: Whisper behind the `SpeechModel` protocol that `Session` drives.

Whisper's encoder only knows 30 s windows, so every chunk re-encodes the whole window (the audio since the
last trim, zero-padded to 30 s as Whisper expects); `encode` returns the frames of real audio only and
`appends_memory` is False. The decoder cross-attends over the whole padded window, as in training; the
attention handed to policies is that of the alignment heads, with the mass on padding folded into the last
real frame when it is most of a token's weight ("attends past the end" reads as "attends to the newest audio").

Long streams: once the window holds more than `trim_after_s` of audio, `encode` cuts it at the end of a
committed word (the quietest frame between that word and the next, as the decoder's alignment places them),
keeping at least `keep_s`; the committed words whose audio is gone stop being forced and become Whisper's
prompt (<|startofprev|> text). So the window stays under 30 s and the decoder input bounded however long the
stream. The per-stream `WindowInfo` (how many prefix tokens are prompt, where the committed words lie, the
detected language) is part of the stream's model state, which `decode` takes and returns.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from streamst.decoding import Family, StopRule, StopTracker, cut_loop, greedy
from streamst.speech_model import Hypothesis
from streamst.whisper.growing import Growing
from streamst.whisper.half import HalfLinear, half_linears
from streamst.whisper.load import LoadedWhisper
from streamst.whisper.model import (
    N_SAMPLES, SAMPLES_PER_ENCODER_FRAME, DecoderCache, RaggedKV, Whisper, WhisperConfig, window_features,
)
from streamst.whisper.tokenizer import WhisperTokenizer
from streamst.whisper.vad import SileroVAD, VadState


SHORT_FEED = 8  # a batch's rows that feed at most this many tokens run their prefix pass apart from the others


@dataclass
class WindowInfo:
    """What `decode` learns about a stream's window and `encode` uses to trim it."""

    prompt_tokens: int = 0  # leading tokens of the committed prefix whose audio was cut: they are the prompt now
    # for each committed word in the window: (forced-prefix tokens through it, its last frame, next word's first)
    boundaries: list[tuple[int, int, int]] = field(default_factory=list)
    language: str | None = None  # detected once per stream (multilingual models without a fixed language)
    session_drops: bool = False  # the session trims the window itself (StreamAtt): no trimming here


@dataclass(frozen=True)
class WhisperStreamState:
    """One stream's window: its audio, the encoder output of that audio (None until encoded) and counters."""

    audio: Tensor  # 16 kHz samples of the current window
    encoded: Tensor | None = None  # [1500, D] encoder output of the padded window, None when stale
    trimmed_samples: int = 0  # samples the model itself cut from the front (window overflow, leading silence)
    vad: VadState | None = None
    speech_seen: bool = True  # False while the VAD has heard no speech in the window
    info: WindowInfo = field(default_factory=WindowInfo)


@dataclass(frozen=True)
class _Plan:
    """One stream's decoder call, prepared (`WhisperStreamingModel._plan`)."""

    tokens: list[int]  # [<|startofprev|> prompt] SOT sequence, forced prefix
    sot_index: int  # where <|startoftranscript|> is
    prefix_start: int  # where the forced prefix begins
    history: int  # how many leading tokens of the session's prefix are the prompt now
    forced: list[int]
    cache: DecoderCache  # the memory's cross-attention keys/values
    state: object  # the stream's model state after the preparation
    n_real: int  # real frames of the memory
    frames: int  # frames the decoder attends over (the padded window, for the re-encoding model)
    max_tokens: int
    past: DecodedPrefix | None = None  # an earlier decode's self-attention keys/values of `tokens[:reuse]`
    reuse: int = 0


@dataclass(frozen=True)
class DecodedPrefix:
    """What a decode leaves for the next one of the same window (`prefix_cache`): the tokens it fed (start
    tokens, forced prefix, continuation), their self-attention keys/values per decoder layer [1, H, n, Dh], and
    their policy attention rows [A, heads, n, frames] over the memory of that decode."""

    tokens: tuple[int, ...]
    kv: tuple[tuple[Tensor, Tensor], ...]
    rows: Tensor
    oldest: int  # memory frames when the oldest of these keys/values was computed (how stale they may be)


class WhisperStreamingModel:
    """Streams a Whisper model; greedy or beam decoding after a forced SOT sequence and committed prefix."""

    frame_ms = SAMPLES_PER_ENCODER_FRAME * 1000 / 16000  # 20 ms per encoder frame
    appends_memory = False
    batches = True  # decoding runs as one batch (`decode_batch`); encoding as the family can (`encode_batch`)
    max_target_tokens = None  # the decoder's 448 positions are budgeted here, prompt and start tokens included
    max_frames = 1500  # the window: 30 s
    # the decoder's attention rows are over the padded window, not what the policy sees, so only the stop rule's
    # word bound applies here (a model whose memory is the real frames sets this)
    attention_stop = False

    def __init__(
        self,
        loaded: LoadedWhisper,
        *,
        language: str | None = None,
        task: str = "transcribe",
        attention: str = "alignment",
        no_speech_threshold: float = 0.6,
        vad: SileroVAD | None = None,
        trim_after_s: float = 20.0,
        keep_s: float = 10.0,
        commit_after_s: float = 26.0,
        half_logits: bool = False,
        max_prompt_tokens: int | None = None,
        half_weights: bool = False,
    ):
        if task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', not {task!r}")
        if not 0 < keep_s < trim_after_s <= commit_after_s < N_SAMPLES / 16000:
            raise ValueError(f"need 0 < keep_s < trim_after_s <= commit_after_s < 30, got keep_s={keep_s}, "
                             f"trim_after_s={trim_after_s}, commit_after_s={commit_after_s}")
        self.config: WhisperConfig = loaded.config
        self.net = Whisper(loaded.config)
        missing, unexpected = self.net.load_state_dict(loaded.state_dict, strict=False)
        missing = [m for m in missing if m != "encoder.positional_embedding"]
        if missing or unexpected:
            raise ValueError(f"Whisper weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.net.eval()
        if half_weights:  # the linear layers' weights in fp16 (`half.py`); `loaded` keeps the fp32 ones
            half_linears(self.net)
        self.tokenizer: WhisperTokenizer = loaded.tokenizer
        self.alignment_heads = [tuple(h) for h in loaded.alignment_heads]
        self.language, self.whisper_task = language, task
        self.task = "st" if task == "translate" else "asr"
        self.multilingual = bool(self.tokenizer.language_ids) and len(self.tokenizer) >= 51865
        self.sot_sequence = self.tokenizer.sot_sequence(language, task)  # English for a multilingual model until detected
        self.attention_mode = attention
        self.no_speech_threshold = no_speech_threshold
        self.vad = vad
        self.trim_after_samples, self.keep_samples = int(trim_after_s * 16000), int(keep_s * 16000)
        # past this much audio in the window the session commits what it holds (`needs_commit`), so that the
        # window can be cut at a committed word before it reaches 30 s
        self.commit_after_samples = int(commit_after_s * 16000)
        vocab = len(self.tokenizer)
        self.suppress = torch.zeros(max(vocab, self.config.n_vocab), dtype=torch.bool)
        self.suppress[self.tokenizer.eot + 1:] = True  # every special and timestamp token
        self.suppress[[i for i in loaded.suppress_ids if 0 <= i < len(self.suppress)]] = True
        self.suppress_begin = torch.zeros_like(self.suppress)
        self.suppress_begin[[i for i in loaded.suppress_ids_begin if 0 <= i < len(self.suppress)]] = True
        self.loaded = loaded
        self.half_logits = HalfLinear(self.net.decoder.token_embedding.weight) if half_logits else None
        # the prompt's last tokens that the decoder reads (Whisper's own limit: half its positions); each one costs
        # a position of the prefix pass on every chunk
        self.max_prompt_tokens = self.config.n_text_ctx // 2 - 1 if max_prompt_tokens is None else max_prompt_tokens
        if not 0 <= self.max_prompt_tokens < self.config.n_text_ctx // 2:
            raise ValueError(f"max_prompt_tokens must be in 0..{self.config.n_text_ctx // 2 - 1}, got {max_prompt_tokens}")

    # ------------------------------------------------------------------ encoder side

    def init_state(self) -> WhisperStreamState:
        vad_state = self.vad.init_state() if self.vad is not None else None
        return WhisperStreamState(torch.zeros(0), vad=vad_state, speech_seen=self.vad is None)

    @torch.no_grad()
    def encode(self, audio: Tensor, state: WhisperStreamState, final: bool = False) -> tuple[Tensor, WhisperStreamState]:
        """Append audio to the window (trimming it when long) and re-encode it; returns the real frames [T, D]."""
        audio = audio.float().reshape(-1)
        window = torch.cat([state.audio, audio]) if audio.numel() else state.audio
        trimmed, info = state.trimmed_samples, state.info
        speech_seen, vad_state = state.speech_seen, state.vad
        if self.vad is not None and audio.numel():
            heard, vad_state = self.vad.detect(audio, vad_state)
            speech_seen = speech_seen or heard
        if not speech_seen:  # nothing said yet: keep a short tail of the silence, skip the encoder
            keep = int(self.vad.keep_ms * 16)
            cut = max(0, window.numel() - keep)
            cut -= cut % SAMPLES_PER_ENCODER_FRAME
            state = replace(state, audio=window[cut:], encoded=None, trimmed_samples=trimmed + cut,
                            vad=vad_state, speech_seen=False)
            return torch.zeros(0, self.config.n_audio_state), state
        cut, info = self.trim_point(window, info)
        if window.numel() - cut > N_SAMPLES:  # no committed word to cut at: keep the newest 30 s
            hard = window.numel() - N_SAMPLES
            hard += (-hard) % SAMPLES_PER_ENCODER_FRAME
            cut, info = hard, self._cut_info(info, hard // SAMPLES_PER_ENCODER_FRAME)
        if cut:
            window, trimmed = window[cut:], trimmed + cut
        encoded = state.encoded
        if encoded is None or audio.numel() or cut:
            encoded = self.encode_window(window)
        state = replace(state, audio=window, encoded=encoded, trimmed_samples=trimmed, vad=vad_state,
                        speech_seen=speech_seen, info=info)
        return encoded[: self.real_frames(window.numel())], state

    def encode_batch(self, audios: list[Tensor], states: list, finals: list[bool]) -> list[tuple[Tensor, object]]:
        """Each stream's `encode` in turn: windows of different lengths, trims and restarts do not stack."""
        return [self.encode(audio, state, final) for audio, state, final in zip(audios, states, finals)]

    def trim_point(self, window: Tensor, info: WindowInfo) -> tuple[int, WindowInfo]:
        """Samples to cut from the front of a window longer than `trim_after_s` (0: none), and the info after it.

        The cut goes after the latest committed word that leaves at least `keep_s` of audio, at the quietest
        20 ms frame between that word's last aligned frame and the next word's first one.
        """
        if info.session_drops or window.numel() <= self.trim_after_samples or not info.boundaries:
            return 0, info
        latest_end = (window.numel() - self.keep_samples) // SAMPLES_PER_ENCODER_FRAME
        usable = [b for b in info.boundaries if b[2] <= latest_end]
        if not usable:
            return 0, info
        tokens, lo, hi = usable[-1]
        energy = frame_energy(window[: (hi + 1) * SAMPLES_PER_ENCODER_FRAME])[lo: hi + 1]
        frame = lo + int(energy.argmin())
        return frame * SAMPLES_PER_ENCODER_FRAME, replace(info, prompt_tokens=info.prompt_tokens + tokens, boundaries=[])

    @staticmethod
    def _cut_info(info: WindowInfo, frame: int) -> WindowInfo:
        """The info after a hard cut of `frame` frames: committed words that ended before it become prompt."""
        gone = [b for b in info.boundaries if b[2] <= frame]  # gaps never go backwards
        tokens = gone[-1][0] if gone else 0
        return replace(info, prompt_tokens=info.prompt_tokens + tokens, boundaries=[])

    def encode_window(self, window: Tensor) -> Tensor:
        """Encoder output [1500, D] of one window of audio padded to 30 s."""
        mel = window_features(window, self.config.n_mels)
        return self.net.encoder(mel[None])[0]

    @staticmethod
    def real_frames(n_samples: int) -> int:
        return min(1500, math.ceil(n_samples / SAMPLES_PER_ENCODER_FRAME))

    def drop_frames(self, state: WhisperStreamState, n: int, tokens: int = 0) -> WhisperStreamState:
        """Cut n frames (20 ms each) of audio from the front of the window, and `tokens` from the front of the
        forced prefix; the next encode re-encodes the window.

        The session does this for a policy that manages the window itself (StreamAtt, which also shortens the
        forced prefix): from then on the model neither trims nor moves words to the prompt. n = 0: the session
        shortened its history only: of the words the model made its prompt, those left in it stay the prompt.
        """
        if n < 0:
            return state
        prompt = max(0, state.info.prompt_tokens - tokens)
        if n == 0:  # the model still trims its window (the session has dropped no audio)
            return replace(state, info=replace(state.info, prompt_tokens=prompt, boundaries=[]))
        info = replace(state.info, prompt_tokens=prompt, boundaries=[], session_drops=True)
        return replace(state, audio=state.audio[n * SAMPLES_PER_ENCODER_FRAME:], encoded=None, info=info)

    def ctc_words(self, memory: Tensor) -> int | None:
        return None

    def samples_cut(self, state: WhisperStreamState) -> int:
        return state.trimmed_samples

    def restart_unwritten(self, state: WhisperStreamState) -> None:
        return None  # no restart after the final pass

    def needs_commit(self, state: WhisperStreamState) -> bool:
        return state.audio.numel() > self.commit_after_samples

    # ------------------------------------------------------------------ decoder side

    @torch.no_grad()
    def decode(
        self,
        memory: Tensor,
        prefix: list[int],
        state: WhisperStreamState,
        *,
        beam: int = 1,
        max_tokens: int = 64,
        stop: StopRule | None = None,
        prompt: list[int] | None = None,
    ) -> tuple[Hypothesis, WhisperStreamState]:
        """Force [<|startofprev|> prompt] SOT-sequence prefix, then continue greedily (beam > 1: beam search).

        `memory` is what `encode` returned (the real frames); the decoder attends over the stream's whole padded
        window, as Whisper was trained to. The state comes back with the window's word boundaries (where a trim
        may cut) and the detected language. Greedy decoding is a batch of one of `decode_batch`.
        """
        if beam <= 1:
            return self.decode_batch([memory], [prefix], [state], [max_tokens], [stop], [prompt])[0]
        plan, state = self._plan(memory, prefix, state, max_tokens, prompt)
        if plan is None:
            return self._after_decode(self._empty(memory, prefix), prefix, state)
        run = _BatchStep(self, [replace(plan, past=None, reuse=0)])  # beam search decodes its prefix afresh
        logits, sot_logits = run.start()
        prefix_att = run.prefix_attention[0]
        if self._no_speech(sot_logits[0]):
            return self._after_decode(self._silent(plan, prefix_att), prefix, state)
        tokens, rows, ended, score = self._beam_search(logits[0], run.cache, beam, plan.max_tokens)
        tokens, rows, looped = cut_loop(tokens, rows)
        attention = torch.cat(rows, dim=2) if rows else torch.zeros(*self._att_shape(), 0, plan.frames)
        hyp, state = self._finish(plan, prefix_att, tokens, attention, ended or looped, score)
        return self._after_decode(hyp, prefix, state)

    @torch.no_grad()
    def decode_batch(self, memories: list[Tensor], prefixes: list[list[int]], states: list, max_tokens: list[int],
                     stops: list[StopRule | None], prompts: list[list[int] | None] | None = None,
                     ) -> list[tuple[Hypothesis, WhisperStreamState]]:
        """Greedy `decode` of many streams at once: one prefix pass and one call per token for all of them (the
        tokens each row feeds, after any keys/values it reuses, left-padded to the longest, the padding hidden from
        attention; each row cross-attends over its own memory), streams that feed a few tokens apart from those
        that feed many (`feed_groups`). Each row's words are those it writes alone (up to float rounding: padding
        changes the order of a few sums)."""
        prompts = prompts or [None] * len(memories)
        out: list = [None] * len(memories)
        plans: list[tuple[int, _Plan]] = []
        for i, (memory, prefix, state, budget, prompt) in enumerate(zip(memories, prefixes, states, max_tokens,
                                                                        prompts)):
            plan, state = self._plan(memory, prefix, state, budget, prompt)
            if plan is None:
                out[i] = (self._empty(memory, prefix), state)
            else:
                plans.append((i, plan))
        for group in feed_groups(plans):
            self._decode_group(group, stops, out)
        return [self._after_decode(hyp, prefix, state) for (hyp, state), prefix in zip(out, prefixes)]

    def _decode_group(self, plans: list[tuple[int, _Plan]], stops: list[StopRule | None], out: list) -> None:
        """One prefix pass and one greedy loop over prepared streams (`out[i]`: stream i's hypothesis and state)."""
        run = _BatchStep(self, [plan for _, plan in plans])
        logits, sot_logits = run.start()
        going: list[tuple[int, _Plan, int]] = []  # (output index, plan, row of the batch)
        for row, (i, plan) in enumerate(plans):
            if self._no_speech(sot_logits[row]):
                out[i] = (self._silent(plan, run.prefix_attention[row]), plan.state)
            else:
                going.append((i, plan, row))
        if not going:
            return
        family = Family(self.tokenizer.eot, suppress=lambda x, index: self._masked(x, first=index == 0),
                        input_rows=True, attention_stop=self.attention_stop, peek_end=True, project=run.project)
        rows = [row for _, _, row in going]

        def step(alive: list[int], tokens: list[int]) -> tuple[Tensor, list[Tensor]]:
            return run.step([rows[a] for a in alive], tokens)

        first_rows = [torch.zeros(*self._att_shape(), 1, plan.frames) for _, plan, _ in going]
        trackers = [StopTracker(stops[i], self.tokenizer.word_start_ids) for i, _, _ in going]
        hyps = greedy(logits[rows], first_rows, step, [p.max_tokens for _, p, _ in going], trackers, family)
        for (i, plan, row), hyp in zip(going, hyps):
            state = self._remember(plan, run, row, hyp.tokens, hyp.attention)
            out[i] = self._finish(replace(plan, state=state), run.prefix_attention[row], hyp.tokens,
                                  hyp.attention, hyp.ended, hyp.score)

    def _after_decode(self, hyp: Hypothesis, prefix: list[int], state):
        """What a family adds after each decode (the causal model's test for an early end-of-text)."""
        return hyp, state

    def _plan(self, memory: Tensor, prefix: list[int], state, max_tokens: int,
              prompt: list[int] | None) -> tuple[_Plan | None, object]:
        """One stream's decoder input: prompt, SOT sequence and forced prefix, the memory's cross-attention keys and
        values, and the budget; None when the memory is empty."""
        n_real = memory.shape[0]
        if n_real == 0:
            return None, state
        features = state.encoded if state.encoded is not None and state.encoded.shape[0] >= n_real else memory
        info = state.info
        n_prompt = min(info.prompt_tokens, len(prefix))
        history, forced = list(prefix[:n_prompt]), list(prefix[n_prompt:])
        context = list(prompt or []) + history
        context = context[max(0, len(context) - self.max_prompt_tokens):]
        initial: list[int] = []
        if context:
            initial = [self.tokenizer.sot_prev] + context
        cache, state = self.cross_cache(features, state)
        sot_sequence, info = self._sot_sequence(initial, bool(prefix), info, cache)
        state = replace(state, info=info)
        sot_index = len(initial)
        initial += sot_sequence
        prefix_start = len(initial)
        initial += forced
        room = self.config.n_text_ctx - len(initial)
        past, reuse = self._reusable(state, initial) if forced else (None, 0)
        return _Plan(initial, sot_index, prefix_start, len(history), forced, cache, state, n_real,
                     features.shape[0], max(0, min(max_tokens, room)), past, reuse), state

    def _reusable(self, state, tokens: list[int]) -> tuple[DecodedPrefix | None, int]:
        """An earlier decode's keys/values that this one may start from, and how many of `tokens` they cover (the
        re-encoding model has none: its whole memory changes every chunk)."""
        return None, 0

    def _remember(self, plan: _Plan, run: _BatchStep, row: int, tokens: list[int], rows: Tensor):
        """The stream's state after a greedy decode of batch row `row` (its continuation `tokens` and their
        attention `rows`), keeping what the next decode may reuse (nothing here)."""
        return plan.state

    def _empty(self, memory: Tensor, prefix: list[int]) -> Hypothesis:
        n_real = memory.shape[0]
        return Hypothesis([], torch.zeros(*self._att_shape(), 0, n_real), False, 0.0,
                          torch.zeros(*self._att_shape(), len(prefix), n_real))

    def _reads_no_speech(self, plan: _Plan) -> bool:
        """Whether this decode runs Whisper's no-speech test (only with nothing forced)."""
        return not plan.forced and self.tokenizer.no_speech is not None and self.no_speech_threshold < 1.0

    def _no_speech(self, sot_logits: Tensor | None) -> bool:
        """Whisper's no-speech test on the logits after <|startoftranscript|> (None where `_reads_no_speech` is
        False: not computed, not read)."""
        if sot_logits is None:
            return False
        return sot_logits.softmax(-1)[self.tokenizer.no_speech].item() > self.no_speech_threshold

    def _silent(self, plan: _Plan, prefix_att: Tensor) -> Hypothesis:
        return Hypothesis([], torch.zeros(*self._att_shape(), 0, plan.n_real), True, 0.0,
                          self._prefix_rows(plan, prefix_att))

    def _prefix_rows(self, plan: _Plan, prefix_att: Tensor) -> Tensor:
        """Attention rows [L, H, len(session prefix), n_real] of the session's whole prefix: the forced tokens' own
        and, for those that are the prompt now (their audio was cut from the window), all weight on the memory's
        first frame: the earliest audio there is, so StreamAtt drops no frame for words it still keeps."""
        rows = self._fold(prefix_att, plan.n_real)
        if not plan.history:
            return rows
        prompt = rows.new_zeros(*rows.shape[:2], plan.history, rows.shape[-1])
        prompt[..., 0] = 1.0
        return torch.cat([prompt, rows], dim=2)

    def _finish(self, plan: _Plan, prefix_att: Tensor, tokens: list[int], attention: Tensor, ended: bool,
                score: float) -> tuple[Hypothesis, object]:
        """The continuation over the real frames, and the state with the window's word boundaries."""
        n_real, state, info = plan.n_real, plan.state, plan.state.info
        prefix_out = self._prefix_rows(plan, prefix_att)  # the session's prefix pieces cover the whole history
        attention = self._fold(attention, n_real)
        if not info.session_drops:
            boundaries = self._word_boundaries(plan.forced, self._fold(prefix_att, n_real), attention)
            state = replace(state, info=replace(info, boundaries=boundaries))
        return Hypothesis(tokens, attention, ended, score, prefix_out), state

    def _logits(self, hidden: Tensor) -> Tensor:
        """Float logits of final decoder states [..., D]; with `half_logits` from an fp16 copy of the embedding
        (`HalfLinear`: half the memory traffic of the step that dominates a token's cost on a CPU)."""
        if self.half_logits is None:
            return self.net.decoder.logits(hidden)
        return self.half_logits(hidden)

    def cross_cache(self, features: Tensor, state):
        """The decoder's cross-attention keys/values over `features` [T, D], and the state (which a model that
        appends to its memory uses to keep them between calls)."""
        return self.net.decoder.start(features[None]), state

    def _sot_sequence(self, initial: list[int], committed: bool, info: WindowInfo, cache) -> tuple[list[int], WindowInfo]:
        """The SOT sequence and the info after it; a multilingual model without a fixed language detects it once per
        stream: on each decode until the first word is committed, then it keeps the language that word was decoded
        in."""
        if not self.multilingual or self.language is not None:
            return self.sot_sequence, info
        language = info.language
        if language is None or not committed:
            language = self.detect_language(initial, cache)
            info = replace(info, language=language)
        return self.tokenizer.sot_sequence(language, self.whisper_task), info

    def detect_language(self, initial: list[int], cache) -> str:
        """The language whose token the decoder likes best right after <|startoftranscript|> (as Whisper does)."""
        logits, _, _ = self.net.decoder(torch.tensor([initial + [self.tokenizer.sot]]), cache)
        return language_from_logits(logits[0, -1], self.tokenizer.language_ids)

    def _word_boundaries(self, forced: list[int], prefix_att: Tensor, cand_att: Tensor) -> list[tuple[int, int, int]]:
        """For each committed word k: (forced tokens through it, first and last frame where a cut after it may go).

        The gap after word k ends where the next word starts: the earliest first-aligned frame of any later word
        (a late outlier cannot push it back), and begins after word k's last aligned frame, capped there. Only
        tokens with a letter or digit count (a sentence's final "." tends to attend past the audio).
        """
        if not forced:
            return []
        aligned = prefix_att.mean(dim=(0, 1)).argmax(-1).tolist()
        pieces = self.tokenizer.pieces(forced)
        spoken = [any(c.isalnum() for c in piece) for piece in pieces]
        starts = [i for i, piece in enumerate(pieces) if i == 0 or piece.startswith("\u2581")] + [len(forced)]
        words = list(zip(starts, starts[1:]))
        n_frames = prefix_att.shape[-1]
        firsts = [min((aligned[i] for i in range(a, b) if spoken[i]), default=n_frames) for a, b in words]
        firsts.append(int(cand_att.mean(dim=(0, 1))[0].argmax()) if cand_att.shape[2] else n_frames)
        out, following = [], n_frames
        for k in range(len(words) - 1, -1, -1):
            a, b = words[k]
            following = min(following, firsts[k + 1])
            last = max((aligned[i] for i in range(a, b) if spoken[i]), default=0)
            out.append((b, min(last + 1, following), following))
        return out[::-1]

    def _beam_search(self, last_logits: Tensor, cache, beam: int, max_tokens: int):
        """Beam search as OpenAI's decoder does it: of the expansions ranked by summed log-probability, an EOT
        counts as a finished hypothesis only when it ranks before the `beam` live ones are filled; the search
        stops once `beam` hypotheses have finished; the best finished one by mean log-probability wins."""
        beams = [(0.0, [], [], last_logits, cache)]
        finished: list[tuple[float, list[int], list[Tensor]]] = []
        for step in range(max_tokens + 1):
            expanded = []
            for score, toks, rows, logits, c in beams:
                logprobs = self._masked(logits, first=step == 0).log_softmax(-1)
                top = logprobs.topk(beam + 1)
                for lp, tok in zip(top.values.tolist(), top.indices.tolist()):
                    expanded.append((score + lp, toks, rows, c, tok))
            expanded.sort(key=lambda e: -e[0])
            beams = []
            for score, toks, rows, c, tok in expanded:
                if tok == self.tokenizer.eot:
                    if len(finished) < beam:
                        finished.append((score, toks, rows))
                    continue
                if step < max_tokens:
                    out, cross, nc = self.net.decoder(torch.tensor([[tok]]), c, project=False)
                    beams.append((score, toks + [tok], rows + [self._select(cross)], self._logits(out[0, -1]), nc))
                if len(beams) >= beam:
                    break
            if not beams or len(finished) >= beam:
                break
        if finished:
            score, toks, rows = max(finished, key=lambda f: f[0] / max(1, len(f[1])))
            return toks, rows, True, score
        score, toks, rows, _, _ = beams[0]
        return toks, rows, False, score

    def _masked(self, logits: Tensor, first: bool) -> Tensor:
        logits = logits.masked_fill(self.suppress[: logits.shape[-1]], float("-inf"))
        if first:
            logits = logits.masked_fill(self.suppress_begin[: logits.shape[-1]], float("-inf"))
        return logits

    def _att_shape(self) -> tuple[int, int]:
        if self.attention_mode == "all":
            return self.config.n_text_layer, self.config.n_text_head
        return 1, len(self.alignment_heads)

    def _select(self, cross: list[Tensor] | list[list[Tensor]], row: int = 0) -> Tensor:
        """Cross-attention of one batch row as [layers, heads, n, frames]: all, or the alignment heads as one layer
        (`cross` per layer: [B, H, n, T], or each row's [H, n, T_row] over ragged memories)."""
        if self.attention_mode == "all":
            return torch.stack([c[row] for c in cross])
        return torch.stack([cross[layer][row][head] for layer, head in self.alignment_heads])[None]

    @staticmethod
    def _fold(attention: Tensor, n_real: int) -> Tensor:
        """Attention over the real frames only. A token whose heads put, on average, most of their weight on the
        padding reads past the audio: that weight goes to its last real frame. Other tokens are renormalised
        over the real frames (some weight on padding is normal for tokens well inside the audio)."""
        if attention.shape[-1] <= n_real:
            return attention
        real = attention[..., :n_real]
        past_end = attention[..., n_real:].sum(-1, keepdim=True)
        renormalised = real / real.sum(-1, keepdim=True).clamp_min(1e-9)
        folded = real.clone()
        folded[..., -1:] += past_end
        token_past_end = past_end.mean(dim=(0, 1), keepdim=True)  # over layers and heads
        return torch.where(token_past_end > 0.5, folded, renormalised)

    # ------------------------------------------------------------------ whole files

    def transcribe(self, audio: np.ndarray | Tensor, *, beam: int = 1, max_tokens: int = 224) -> str:
        """Offline greedy transcript of up to 30 s of audio (one window, no streaming)."""
        audio = torch.as_tensor(audio, dtype=torch.float32)
        if audio.numel() > N_SAMPLES:
            raise ValueError("transcribe() takes at most 30 s; stream longer audio through a Session")
        memory, state = self.encode(audio, self.init_state(), final=True)
        hyp, _ = self.decode(memory, [], state, beam=beam, max_tokens=max_tokens)
        return self.tokenizer.decode(hyp.tokens).strip()


def frame_energy(audio: Tensor) -> Tensor:
    """Mean square of each whole 20 ms encoder frame of `audio` (where a window may be cut: the quietest)."""
    n = audio.numel() // SAMPLES_PER_ENCODER_FRAME
    return audio[: n * SAMPLES_PER_ENCODER_FRAME].reshape(n, SAMPLES_PER_ENCODER_FRAME).pow(2).mean(-1)


def language_from_logits(logits: Tensor, language_ids: dict[str, int]) -> str:
    """The language code whose token has the highest logit among the language tokens."""
    if not language_ids:
        raise ValueError("this Whisper vocabulary has no language tokens")
    codes = list(language_ids)
    scores = logits[[language_ids[c] for c in codes]]
    return codes[int(scores.argmax())]


def feed_groups(plans: list[tuple[int, _Plan]], short: int = SHORT_FEED) -> list[list[tuple[int, _Plan]]]:
    """Streams that feed at most `short` tokens (they reuse their last decode's keys/values) apart from those that
    feed more (a fresh decode, a long prompt): in one prefix pass every row is padded to the longest, so a fresh
    decode beside reusing rows would make each of them pay for its whole prefix."""
    few = [p for p in plans if len(p[1].tokens) - p[1].reuse <= short]
    many = [p for p in plans if len(p[1].tokens) - p[1].reuse > short]
    return [g for g in (few, many) if g]


class _BatchStep:
    """Whisper's decoder over prepared streams (`_Plan`s): the prefix pass (`start`), then the one greedy loop's
    `Step`. A row's slots are [reused keys/values][tokens fed now][continuation]: the reused part is
    left-padded to the longest, the fed part too, so every row's next token goes in the same slot, at its own
    position; padding is hidden from attention. Each row cross-attends over its own memory (`RaggedKV`)."""

    def __init__(self, model: WhisperStreamingModel, plans: list[_Plan]):
        self.model, self.plans = model, plans
        lengths = [len(p.tokens) for p in plans]
        # each row reuses what it would alone (so its words are those it writes alone) and feeds the rest
        self.reused = [p.reuse for p in plans]
        self.width = max(n - e for n, e in zip(lengths, self.reused))
        self.past = max(self.reused)
        self.lengths = torch.tensor(lengths)
        self.past_pads = self.past - torch.tensor(self.reused)
        self.fed_pads = self.width - (self.lengths - torch.tensor(self.reused))
        self.padded = bool(self.past_pads.any() or self.fed_pads.any())
        if len(plans) == 1:
            cross = list(plans[0].cache.cross)
        else:  # each row attends over its own memory: nothing stacked, nothing padded
            cross = [RaggedKV([p.cache.cross[layer][0] for p in plans], [p.cache.cross[layer][1] for p in plans])
                     for layer in range(len(plans[0].cache.cross))]
        self_kv = None
        if self.past:
            self_kv = [tuple(Growing.of(torch.cat([self._past(plan, e, layer, i)
                                                   for plan, e in zip(plans, self.reused)]), 2)
                             for i in range(2)) for layer in range(len(cross))]
        self.cache = DecoderCache(cross=cross, self_kv=self_kv)
        self.fed = 0
        self.token_rows: list[Tensor] = []  # per row: the policy attention rows of all its tokens
        self.prefix_attention: list[Tensor] = []  # ... of its forced prefix

    def _past(self, plan: _Plan, reused: int, layer: int, i: int) -> Tensor:
        """One row's reused keys (i = 0) or values (1) of one layer, left-padded to the longest reuse."""
        like = next(p.past for p, e in zip(self.plans, self.reused) if e).kv[layer][i]
        if not reused:
            return like.new_zeros(1, like.shape[1], self.past, like.shape[3])
        return F.pad(plan.past.kv[layer][i][:, :, :reused], (0, 0, self.past - reused, 0))

    def _padding(self, keys: int) -> Tensor:
        """[B, keys] True at each row's padding slots."""
        cols = torch.arange(keys)[None, :]
        past = cols < self.past_pads[:, None]
        fed = (cols >= self.past) & (cols < self.past + self.fed_pads[:, None])
        return past | fed

    def start(self) -> tuple[Tensor, list[Tensor | None]]:
        """The prefix pass: logits [B, V] after the last forced token, and per row those after
        <|startoftranscript|> where the no-speech test reads them (else None): logits only where they are read;
        fills each row's `prefix_attention`."""
        eot = self.model.tokenizer.eot
        tokens = torch.full((len(self.plans), self.width), eot)
        for row, (plan, e) in enumerate(zip(self.plans, self.reused)):
            tokens[row, self.width - (len(plan.tokens) - e):] = torch.tensor(plan.tokens[e:])
        positions = blocked = None
        if self.padded:
            cols = torch.arange(self.width)
            positions = (cols[None, :] - self.fed_pads[:, None] + torch.tensor(self.reused)[:, None]).clamp_min(0)
            keys = self.past + self.width
            # a padding slot still sees itself (a row with every key hidden would be NaN)
            itself = torch.arange(keys)[None, :] == (self.past + cols)[:, None]
            blocked = (self._padding(keys)[:, None, :] & ~itself[None])[:, None]
        hidden, cross, self.cache = self.model.net.decoder(tokens, self.cache, project=False, positions=positions,
                                                           self_blocked=blocked)
        # (a reused <|startoftranscript|> has no logits here: only a decode with nothing forced reads them, and
        # such a decode reuses nothing)
        sot_rows = [row for row, plan in enumerate(self.plans) if self.model._reads_no_speech(plan)]
        picks = [hidden[:, -1]] + [hidden[row, max(0, int(self.fed_pads[row]) + self.plans[row].sot_index
                                                   - self.reused[row])][None] for row in sot_rows]
        logits = self.project(torch.cat(picks))
        sot_logits: list[Tensor | None] = [None] * len(self.plans)
        for k, row in enumerate(sot_rows):
            sot_logits[row] = logits[len(self.plans) + k]
        for row, (plan, e) in enumerate(zip(self.plans, self.reused)):
            rows = self.model._select(cross, row)[:, :, int(self.fed_pads[row]):]
            if e:  # the reused tokens' rows, from the decode that fed them (over the fewer frames it had)
                old = plan.past.rows[:, :, :e]
                rows = torch.cat([F.pad(old, (0, plan.frames - old.shape[-1])), rows], dim=2)
            self.token_rows.append(rows)
            self.prefix_attention.append(rows[:, :, plan.prefix_start:])
        return logits[: len(self.plans)], sot_logits

    def step(self, rows: list[int], tokens: list[int]) -> tuple[Tensor, list[Tensor]]:
        """Feed `tokens` to batch rows `rows` (the others have finished: they get a token nobody reads); their final
        states [len(rows), D] (`project` makes logits of those that go on) and attention rows."""
        feed = torch.full((len(self.plans), 1), self.model.tokenizer.eot)
        feed[rows, 0] = torch.tensor(tokens)
        positions = blocked = None
        if self.padded:
            positions = (self.lengths + self.fed).clamp_max(self.model.config.n_text_ctx - 1)[:, None]
            blocked = self._padding(self.past + self.width + self.fed + 1)[:, None, None, :]
        out, cross, self.cache = self.model.net.decoder(feed, self.cache, project=False, positions=positions,
                                                        self_blocked=blocked)
        self.fed += 1
        return out[rows, -1], [self.model._select(cross, r) for r in rows]

    def row_kv(self, row: int, n_tokens: int) -> tuple[tuple[Tensor, Tensor], ...]:
        """Row `row`'s self-attention keys/values [1, H, n, Dh] of its tokens and its first `n_tokens` continuation
        tokens, without padding (a copy: the batch is not kept alive)."""
        e, past_pad, fed_pad = self.reused[row], int(self.past_pads[row]), int(self.fed_pads[row])
        start = self.past + self.width
        parts = []
        for k, v in self.cache.self_kv:
            pieces = [(t[row: row + 1, :, past_pad: self.past], t[row: row + 1, :, self.past + fed_pad: start],
                       t[row: row + 1, :, start: start + n_tokens]) for t in (k.tensor, v.tensor)]
            parts.append(tuple(torch.cat(p, dim=2) for p in pieces) if e else
                         tuple(torch.cat(p[1:], dim=2) for p in pieces))
        return tuple(parts)

    def project(self, hidden: Tensor) -> Tensor:
        """Logits [n, V] of final states [n, D]."""
        return self.model._logits(hidden)
