"""`S2TStreamingModel`: a fairseq S2T / HF Speech2Text / FBK Conformer model behind the `SpeechModel` protocol.

These encoders attend to the whole input, so each `encode` re-encodes all the audio the stream holds (as FBK's
agents and simulstream do) and returns the whole memory (`appends_memory` is False). Fbank frames are computed
once per piece of audio (they are frame-local) and normalised over everything held (utterance CMVN) or frame by
frame (global CMVN). StreamAtt's `drop_frames` cuts audio from the front, which is what bounds the cost on long
streams; other policies keep the whole stream.

Memory frames are always 40 ms of audio (`frame_ms`): with CTC compression the decoder attends to the
compressed frames, and `encode` returns one row per audio frame (its group's vector) while the state keeps
the compressed memory and the weights that map attention back to audio frames.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from streamst.decoding import StopRule, decode
from streamst.s2t.bundle import S2TBundle
from streamst.s2t.features import SHIFT, fbank_from
from streamst.s2t.net import EncoderOutput, S2TNet, encode_features
from streamst.speech_model import Hypothesis
from streamst.tokenizer import words_from_pieces


@dataclass(frozen=True)
class S2TState:
    """One stream: the audio held, its fbank frames, and the encoder output of it (None until encoded)."""

    audio: Tensor
    fbank: Tensor
    encoded: EncoderOutput | None = None
    memory: Tensor | None = None  # what `encode` returned for `encoded` (how `decode` recognises it)
    cut: int = 0  # samples the model cut from the front itself (the window cap), for `samples_cut`


class S2TStreamingModel:
    """Re-encoding streaming model; greedy or beam decoding after a forced target-language tag and prefix."""

    appends_memory = False
    batches = False  # re-encodes each stream's window: nothing stacks

    def __init__(self, bundle: S2TBundle, *, tgt_lang: str | None = None, name: str = "",
                 max_window_s: float | None = None):
        self.bundle, self.cfg = bundle, bundle.config
        self.net = S2TNet(self.cfg)
        self.net.load_fairseq_state(bundle.state)
        self.net.eval().requires_grad_(False)
        self.tokenizer = bundle.tokenizer
        self.src_tokenizer = bundle.src_tokenizer
        self.cmvn = bundle.cmvn
        self.task, self.src_lang = bundle.task, bundle.src_lang
        self.tgt_lang = tgt_lang or bundle.tgt_lang
        self.name = name or bundle.source
        self.lang_prefix = self._lang_prefix(self.tgt_lang)
        self.fbank_per_frame = 2 ** len(self.cfg.conv_kernel_sizes)  # 10 ms fbank frames per encoder frame
        self.frame_ms = 10.0 * self.fbank_per_frame
        self.max_target_tokens = self.cfg.max_target_positions - len(self.lang_prefix)
        # the longest input the model trained on (fairseq filters on max_source_positions fbank frames): a
        # stream whose policy never drops audio keeps at most this window, cutting whole frames from the front
        window_s = max_window_s if max_window_s is not None else self.cfg.max_source_positions / 100.0
        if window_s * 1000 < 2 * self.frame_ms:
            raise ValueError(f"max_window_s must hold at least two encoder frames, got {window_s}")
        self.max_frames = int(window_s * 1000 // self.frame_ms)
        self.commit_frames = self.max_frames - max(1, min(int(4000 // self.frame_ms), self.max_frames // 5))

    def _lang_prefix(self, lang: str | None) -> list[int]:
        """[<lang:xx>] for a multilingual vocabulary (which then needs a target language), else []."""
        tags = self.tokenizer.languages
        if not tags:
            return []
        if not lang:
            raise ValueError(f"this model is multilingual (targets: {', '.join(sorted(tags))}): give a target "
                             "language (`streamst convert SRC --out M.pt --tgt-lang de`)")
        if lang not in tags:
            raise ValueError(f"this model has no target language {lang!r} (targets: {', '.join(sorted(tags))})")
        return [tags[lang]]

    # ------------------------------------------------------------------ encoder side

    def init_state(self) -> S2TState:
        return S2TState(torch.zeros(0), torch.zeros(0, self.cfg.n_mels))

    def encode(self, audio: Tensor, state: S2TState, final: bool = False) -> tuple[Tensor, S2TState]:
        """Append audio, compute its new fbank frames, re-encode everything held; returns the memory [T, D]."""
        audio = audio.float().reshape(-1)
        if audio.numel() == 0 and state.memory is not None:
            return state.memory, state
        window = torch.cat([state.audio, audio])
        feats = torch.cat([state.fbank, fbank_from(window, state.fbank.shape[0], self.cfg.n_mels)])
        cut = state.cut
        excess = self.net.encoder.body.subsample.out_frames(feats.shape[0]) - self.max_frames
        if excess > 0:  # past the window cap: forget whole encoder frames from the front
            window, feats = window[excess * self.fbank_per_frame * SHIFT:], feats[excess * self.fbank_per_frame:]
            cut += excess * self.fbank_per_frame * SHIFT
        out = encode_features(self.net, self.cmvn(feats))
        if out is None:
            memory = torch.zeros(0, self.cfg.d_model)
        elif out.weights is None:
            memory = out.memory
        else:  # one row per audio frame: the compressed frame it belongs to
            memory = out.memory[out.weights.argmax(1)]
        if out is not None and out.ctc_logits is not None and self.src_tokenizer is not None:
            memory._streamst_ctc = out.ctc_logits  # for ctc_words, which the session calls with the memory only
        return memory, S2TState(window, feats, out, memory, cut)

    def drop_frames(self, state: S2TState, n: int, tokens: int = 0) -> S2TState:
        """Forget the first n 40 ms frames of audio (StreamAtt); the next `encode` re-encodes the rest."""
        if n <= 0:
            return state
        k = n * self.fbank_per_frame
        return S2TState(state.audio[k * SHIFT:], state.fbank[k:], cut=state.cut)

    def restart_unwritten(self, state: S2TState) -> None:
        return None  # no restart after the final pass

    def needs_commit(self, state: S2TState) -> bool:
        """The window is within 4 s (or a fifth of it) of its cap: what it holds must be committed before the
        cap cuts it."""
        return self.net.encoder.body.subsample.out_frames(state.fbank.shape[0]) >= self.commit_frames

    def samples_cut(self, state: S2TState) -> int:
        """Samples the window cap cut (what the session's drop_frames removed it counts itself)."""
        return state.cut

    def ctc_words(self, memory: Tensor) -> int | None:
        """Source words from the CTC head, when the checkpoint names its vocabulary (else None)."""
        logits = getattr(memory, "_streamst_ctc", None)
        if logits is None or self.src_tokenizer is None:
            return None
        tok = self.src_tokenizer
        blank = tok.index.get("<ctc_blank>", tok.unk)  # FBK's CTC blank symbol
        best = logits.argmax(-1).tolist()
        ids = [t for i, t in enumerate(best) if t != blank and (i == 0 or t != best[i - 1])]
        return len(words_from_pieces(tok.pieces(i for i in ids if i not in tok.special_ids)))

    # ------------------------------------------------------------------ decoder side

    def decode(self, memory: Tensor, prefix: list[int], state: S2TState, *, beam: int = 1, max_tokens: int = 64,
               stop: StopRule | None = None) -> tuple[Hypothesis, S2TState]:
        """Force [<lang:xx>] + prefix after </s>, continue greedily (beam > 1: beam search); attention over the
        memory's audio frames."""
        enc = state.encoded if state.memory is memory else None
        if enc is not None and enc.weights is not None:
            target, back = enc.memory, enc.weights.T  # [S, T]: compressed frame -> audio frames
        elif self.cfg.ctc_compress != "none":
            raise ValueError("a CTC-compressed model decodes only the memory its own encode() returned")
        else:
            target, back = memory, None
        if stop is not None and stop.late is not None and back is not None:
            late, w = stop.late, back.numpy()
            stop = StopRule(stop.max_words, lambda att: late(att @ w), stop.slack_words)
        forced = self.lang_prefix + list(prefix)
        tok = self.tokenizer
        hyp = decode(self.net.decoder, target, forced, tok.bos, tok.eos, beam=beam, max_tokens=max_tokens, stop=stop,
                     word_start_ids=tok.word_start_ids)
        pre = hyp.prefix_attention
        pre = pre[:, :, len(self.lang_prefix):] if prefix and pre is not None else None  # rows of the prefix only
        if back is not None:
            hyp.attention = hyp.attention @ back
            pre = None if pre is None else pre @ back
        hyp.prefix_attention = pre
        return hyp, state

    # ------------------------------------------------------------------ whole files

    def translate(self, audio: Tensor, *, beam: int = 1, max_tokens: int = 200) -> str:
        """Offline output for a whole utterance (one encode, one decode)."""
        memory, state = self.encode(torch.as_tensor(audio, dtype=torch.float32), self.init_state(), final=True)
        if memory.shape[0] == 0:
            return ""
        hyp, _ = self.decode(memory, [], state, beam=beam, max_tokens=max_tokens)
        return self.tokenizer.decode(hyp.tokens).strip()
