"""`WhisperStreamingModel`: Whisper behind the `SpeechModel` protocol that `Session` drives.

Whisper's encoder only knows 30 s windows, so every chunk re-encodes the whole window (the audio since the
last trim, zero-padded to 30 s as Whisper expects); `encode` returns the frames of real audio only and
`appends_memory` is False. The decoder cross-attends over the whole padded window, as in training; the
attention handed to policies is that of the alignment heads, with the mass on padding folded into the last
real frame when it is most of a token's weight ("attends past the end" reads as "attends to the newest audio").
"""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import Tensor

from streamst.speech_model import Hypothesis
from streamst.whisper.load import LoadedWhisper
from streamst.whisper.model import (
    N_SAMPLES, SAMPLES_PER_ENCODER_FRAME, Whisper, WhisperConfig, window_features,
)
from streamst.whisper.tokenizer import WhisperTokenizer
from streamst.whisper.vad import SileroVAD, VadState


@dataclass(frozen=True)
class WhisperStreamState:
    """One stream's window: its audio, the encoder output of that audio (None until encoded) and counters."""

    audio: Tensor  # 16 kHz samples of the current window
    encoded: Tensor | None = None  # [1500, D] encoder output of the padded window, None when stale
    trimmed_samples: int = 0  # samples the model itself cut from the front (window overflow, leading silence)
    vad: VadState | None = None
    speech_seen: bool = True  # False while the VAD has heard no speech in the window


class WhisperStreamingModel:
    """Streams a Whisper model; greedy or beam decoding after a forced SOT sequence and committed prefix."""

    frame_ms = SAMPLES_PER_ENCODER_FRAME * 1000 / 16000  # 20 ms per encoder frame
    appends_memory = False
    max_frames = 1500  # the window: 30 s

    def __init__(
        self,
        loaded: LoadedWhisper,
        *,
        language: str | None = None,
        task: str = "transcribe",
        attention: str = "alignment",
        no_speech_threshold: float = 0.6,
        vad: SileroVAD | None = None,
        threads: int | None = None,
    ):
        if task not in ("transcribe", "translate"):
            raise ValueError(f"task must be 'transcribe' or 'translate', not {task!r}")
        self.config: WhisperConfig = loaded.config
        self.net = Whisper(loaded.config)
        missing, unexpected = self.net.load_state_dict(loaded.state_dict, strict=False)
        missing = [m for m in missing if m != "encoder.positional_embedding"]
        if missing or unexpected:
            raise ValueError(f"Whisper weights do not fit the model: missing {missing[:5]}, unexpected {unexpected[:5]}")
        self.net.eval()
        self.tokenizer: WhisperTokenizer = loaded.tokenizer
        self.alignment_heads = [tuple(h) for h in loaded.alignment_heads]
        self.language, self.whisper_task = language, task
        self.task = "st" if task == "translate" else "asr"
        self.sot_sequence = self.tokenizer.sot_sequence(language, task)
        self.attention_mode = attention
        self.no_speech_threshold = no_speech_threshold
        self.vad = vad
        self.threads = threads
        vocab = len(self.tokenizer)
        self.suppress = torch.zeros(max(vocab, self.config.n_vocab), dtype=torch.bool)
        self.suppress[self.tokenizer.eot + 1:] = True  # every special and timestamp token
        self.suppress[[i for i in loaded.suppress_ids if 0 <= i < len(self.suppress)]] = True
        self.suppress_begin = torch.zeros_like(self.suppress)
        self.suppress_begin[[i for i in loaded.suppress_ids_begin if 0 <= i < len(self.suppress)]] = True
        self.loaded = loaded

    # ------------------------------------------------------------------ encoder side

    def init_state(self) -> WhisperStreamState:
        vad_state = self.vad.init_state() if self.vad is not None else None
        return WhisperStreamState(torch.zeros(0), vad=vad_state, speech_seen=self.vad is None)

    @torch.no_grad()
    def encode(self, audio: Tensor, state: WhisperStreamState, final: bool = False) -> tuple[Tensor, WhisperStreamState]:
        """Append audio to the window and re-encode it; returns the frames covering real audio [T, D]."""
        audio = audio.float().reshape(-1)
        window = torch.cat([state.audio, audio]) if audio.numel() else state.audio
        trimmed = state.trimmed_samples
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
        if window.numel() > N_SAMPLES:  # the session did not trim: keep the newest 30 s
            cut = window.numel() - N_SAMPLES
            cut += (-cut) % SAMPLES_PER_ENCODER_FRAME
            window, trimmed = window[cut:], trimmed + cut
        encoded = state.encoded
        if encoded is None or audio.numel():
            encoded = self.encode_window(window)
        state = replace(state, audio=window, encoded=encoded, trimmed_samples=trimmed, vad=vad_state,
                        speech_seen=speech_seen)
        return encoded[: self.real_frames(window.numel())], state

    def encode_window(self, window: Tensor) -> Tensor:
        """Encoder output [1500, D] of one window of audio padded to 30 s."""
        self._set_threads()
        mel = window_features(window, self.config.n_mels)
        return self.net.encoder(mel[None])[0].clone()  # a root tensor: memory views point back to it

    @staticmethod
    def real_frames(n_samples: int) -> int:
        return min(1500, math.ceil(n_samples / SAMPLES_PER_ENCODER_FRAME))

    def drop_frames(self, state: WhisperStreamState, n: int) -> WhisperStreamState:
        """Cut n frames (20 ms each) of audio from the front of the window; the next encode re-encodes it."""
        if n <= 0:
            return state
        return replace(state, audio=state.audio[n * SAMPLES_PER_ENCODER_FRAME:], encoded=None)

    def ctc_words(self, memory: Tensor) -> int | None:
        return None

    # ------------------------------------------------------------------ decoder side

    @torch.no_grad()
    def decode(
        self,
        memory: Tensor,
        prefix: list[int],
        *,
        beam: int = 1,
        max_tokens: int = 64,
        prompt: list[int] | None = None,
    ) -> Hypothesis:
        """Force [<|startofprev|> prompt] SOT-sequence prefix, then continue greedily (beam > 1: beam search).

        `memory` is what `encode` returned; when it is a view of the padded window's encoder output (it is,
        unless the caller copied it) the decoder attends over the whole window as Whisper was trained to.
        """
        n_real = memory.shape[0]
        empty_att = torch.zeros(*self._att_shape(), 0, n_real)
        if n_real == 0:
            return Hypothesis([], empty_att, False, 0.0, torch.zeros(*self._att_shape(), len(prefix), 0))
        self._set_threads()
        features = self._window_of(memory)
        initial: list[int] = []
        if prompt:
            initial = [self.tokenizer.sot_prev] + list(prompt)[-(self.config.n_text_ctx // 2 - 1):]
        sot_index = len(initial)
        initial += self.sot_sequence
        n_forced_before_prefix = len(initial)
        initial += list(prefix)
        room = self.config.n_text_ctx - len(initial)
        max_tokens = max(0, min(max_tokens, room))
        cache = self.net.decoder.start(features[None])
        logits, cross, cache = self.net.decoder(torch.tensor([initial]), cache)
        prefix_att = self._select(cross)[:, :, n_forced_before_prefix:, :]
        if not prefix:
            no_speech = self.tokenizer.no_speech
            if no_speech is not None and self.no_speech_threshold < 1.0:
                p = logits[0, sot_index].softmax(-1)[no_speech].item()
                if p > self.no_speech_threshold:
                    return Hypothesis([], empty_att, True, 0.0, self._fold(prefix_att, n_real))
        if beam > 1:
            tokens, rows, ended, score = self._beam_search(logits[0, -1], cache, beam, max_tokens)
        else:
            tokens, rows, ended, score = self._greedy(logits[0, -1], cross, cache, max_tokens)
        tokens, rows, looped = cut_repetition(tokens, rows)
        attention = torch.cat(rows, dim=2) if rows else torch.zeros(*self._att_shape(), 0, features.shape[0])
        return Hypothesis(
            tokens, self._fold(attention, n_real), ended or looped, score, self._fold(prefix_att, n_real)
        )

    def _greedy(self, last_logits: Tensor, cross: list[Tensor], cache, max_tokens: int):
        tokens: list[int] = []
        rows: list[Tensor] = []
        score = 0.0
        logits = last_logits
        for step in range(max_tokens + 1):
            logprobs = self._masked(logits, first=step == 0).log_softmax(-1)
            token = int(logprobs.argmax())
            if token == self.tokenizer.eot:
                return tokens, rows, True, score
            if step == max_tokens:
                break
            score += float(logprobs[token])
            tokens.append(token)
            out, cross, cache = self.net.decoder(torch.tensor([[token]]), cache)
            rows.append(self._select(cross))
            logits = out[0, -1]
            if len(tokens) >= 6 and cut_repetition(tokens, rows)[2]:
                break
        return tokens, rows, False, score

    def _beam_search(self, last_logits: Tensor, cache, beam: int, max_tokens: int):
        """Plain beam search (no length penalty beyond the mean log-probability); hypotheses carry their caches."""
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
                    finished.append((score, toks, rows))
                elif step < max_tokens and len(beams) < beam:
                    out, cross, nc = self.net.decoder(torch.tensor([[tok]]), c)
                    beams.append((score, toks + [tok], rows + [self._select(cross)], out[0, -1], nc))
                if len(beams) >= beam and len(finished) >= beam:
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

    def _window_of(self, memory: Tensor) -> Tensor:
        """The padded window's encoder output behind `memory`, or `memory` itself if it is not such a view."""
        base = memory._base
        if (
            base is not None and base.dim() == 2 and base.shape[0] == self.config.n_audio_ctx
            and memory.data_ptr() == base.data_ptr() and memory.shape[1] == base.shape[1]
        ):
            return base
        return memory

    def _att_shape(self) -> tuple[int, int]:
        if self.attention_mode == "all":
            return self.config.n_text_layer, self.config.n_text_head
        return 1, len(self.alignment_heads)

    def _select(self, cross: list[Tensor]) -> Tensor:
        """Cross-attention of batch item 0 as [layers, heads, n, frames]: all, or the alignment heads as one layer."""
        if self.attention_mode == "all":
            return torch.stack([c[0] for c in cross])
        return torch.stack([cross[layer][0, head] for layer, head in self.alignment_heads])[None]

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

    def _set_threads(self) -> None:
        if self.threads:
            torch.set_num_threads(self.threads)

    # ------------------------------------------------------------------ whole files

    def transcribe(self, audio: np.ndarray | Tensor, *, beam: int = 1, max_tokens: int = 224) -> str:
        """Offline greedy transcript of up to 30 s of audio (one window, no streaming)."""
        audio = torch.as_tensor(audio, dtype=torch.float32)
        if audio.numel() > N_SAMPLES:
            raise ValueError("transcribe() takes at most 30 s; stream longer audio through a Session")
        memory, _ = self.encode(audio, self.init_state(), final=True)
        return self.tokenizer.decode(self.decode(memory, [], beam=beam, max_tokens=max_tokens).tokens).strip()


def cut_repetition(tokens: list[int], rows: list[Tensor], min_repeats: int = 3, max_unit: int = 16):
    """Detect a loop at the end (a unit of 1..max_unit tokens repeated min_repeats+ times; 5+ for one token)
    and keep only its first occurrence; returns (tokens, rows, looped)."""
    n = len(tokens)
    for unit in range(1, max_unit + 1):
        repeats = 5 if unit == 1 else min_repeats
        if n < unit * repeats:
            break
        tail = tokens[n - unit:]
        if all(tokens[n - unit * (r + 1): n - unit * r] == tail for r in range(repeats)):
            start = n - unit * repeats
            while start - unit >= 0 and tokens[start - unit: start] == tail:
                start -= unit
            return tokens[: start + unit], rows[: start + unit], True
    return tokens, rows, False
