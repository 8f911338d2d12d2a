"""`StreamingSpeechModel`: the project's own model behind the `SpeechModel` interface the session uses."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch
from torch import Tensor

from streamst.decoding import StopRule, decode
from streamst.memory_cache import MemoryKV, drop, memory_kv
from streamst.features import FeatureState, init_feature_state, normalize, stream_features
from streamst.model import EncoderState, SpeechTranslator
from streamst.speech_model import Hypothesis
from streamst.tokenizer import Tokenizer, words_from_pieces


@dataclass
class StreamState:
    """One stream: the feature tail, the encoder's caches and the decoder's keys/values of the memory so far."""

    features: FeatureState
    encoder: EncoderState
    memory: MemoryKV | None = None


class StreamingSpeechModel:
    """Features -> cached causal encoder -> decoder, one stream state at a time (the state is a value)."""

    appends_memory = True
    batches = True  # the fixed-size encoder caches stack; the decoder runs a slot buffer (`streamst.batching.steps`)

    def __init__(
        self,
        net: SpeechTranslator,
        src_tokenizer: Tokenizer,
        tgt_tokenizer: Tokenizer,
        cmvn_mean: Tensor,
        cmvn_std: Tensor,
        *,
        task: str,
        src_lang: str,
        tgt_lang: str,
        name: str = "",
        meta: dict | None = None,
    ):
        self.net = net.eval()
        self.src_tokenizer, self.tokenizer = src_tokenizer, tgt_tokenizer
        self.mean, self.std = cmvn_mean, cmvn_std
        self.task, self.src_lang, self.tgt_lang, self.name = task, src_lang, tgt_lang, name
        self.meta = meta or {}
        self.chunk_frames = net.cfg.chunk_frames
        self.left_frames = net.cfg.left_frames
        self.frame_ms = 40.0
        self.max_target_tokens = net.cfg.max_target_len  # the decoder's position table: prefix + continuation

    def init_state(self) -> StreamState:
        return StreamState(init_feature_state(), self.net.encoder.init_state(1))

    @torch.inference_mode()
    def encode(self, audio: Tensor, state: StreamState, final: bool = False) -> tuple[Tensor, StreamState]:
        feats, fstate = stream_features(audio, state.features)
        feats = normalize(feats, self.mean, self.std).unsqueeze(0)
        frames, estate = self.net.encoder.step(feats, state.encoder, self.chunk_frames, self.left_frames, final)
        return frames[0], StreamState(fstate, estate, state.memory)

    def drop_frames(self, state: StreamState, n: int, tokens: int = 0) -> StreamState:
        """The session trims its memory (the encoder's caches are bounded already): the memory's keys/values too."""
        return replace(state, memory=drop(state.memory, n))

    def decode(self, memory: Tensor, prefix: list[int], state: StreamState, *, beam: int = 1, max_tokens: int = 64,
               stop: StopRule | None = None) -> tuple[Hypothesis, StreamState]:
        tok = self.tokenizer
        if memory.shape[0] == 0 or state is None:  # nothing to cache (or a caller without a stream)
            return decode(self.net.decoder, memory, prefix, tok.bos, tok.eos, beam=beam, max_tokens=max_tokens,
                          stop=stop, word_start_ids=tok.word_start_ids), state
        cache = memory_kv(self.net.decoder, memory, state.memory)
        hyp = decode(self.net.decoder, memory, prefix, tok.bos, tok.eos, beam=beam, max_tokens=max_tokens,
                     stop=stop, word_start_ids=tok.word_start_ids, mem_kv=list(cache.kv))
        return hyp, replace(state, memory=cache)

    def encode_batch(self, audios: list[Tensor], states: list[StreamState], finals: list[bool]
                     ) -> list[tuple[Tensor, StreamState]]:
        from streamst.batching.steps import encode_many

        return encode_many(self, audios, states, finals)

    def decode_batch(self, memories: list[Tensor], prefixes: list[list[int]], states: list[StreamState],
                     max_tokens: list[int], stops: list[StopRule | None]) -> list[tuple[Hypothesis, StreamState]]:
        from streamst.batching.steps import greedy_many

        tok = self.tokenizer
        hyps, caches = greedy_many(self.net.decoder, memories, prefixes, tok.bos, tok.eos, max_tokens, stops,
                                   tok.word_start_ids, [s.memory for s in states])
        return [(hyp, replace(state, memory=cache)) for hyp, state, cache in zip(hyps, states, caches)]

    def samples_cut(self, state: StreamState) -> int:
        return 0

    def restart_unwritten(self, state: StreamState) -> None:
        return None  # no restart after the final pass

    def needs_commit(self, state: StreamState) -> bool:
        return False  # the memory has no end: StreamAtt bounds it

    @torch.inference_mode()
    def ctc_tokens(self, memory: Tensor) -> list[int]:
        """Greedy CTC: best piece per frame, repeats merged, blanks removed."""
        if memory.shape[0] == 0:
            return []
        best = self.net.ctc(memory).argmax(-1).tolist()
        out, prev = [], None
        for t in best:
            if t != prev and t != self.net.ctc_blank:
                out.append(t)
            prev = t
        return out

    def ctc_words(self, memory: Tensor) -> int | None:
        return len(words_from_pieces(self.src_tokenizer.pieces(self.ctc_tokens(memory))))
