"""The interface between `Session` and a model (the torch streaming model, its ONNX twin, Whisper).

A model is stateless between calls: every stream's state is a value passed in and returned.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

import torch

from streamst.tokenizer import Tokenizer

if TYPE_CHECKING:
    from streamst.decoding import StopRule


@dataclass
class Hypothesis:
    """A decoder continuation after a forced prefix.

    `tokens` exclude the prefix and EOS; `attention` is [layers, heads, len(tokens), frames] cross-attention
    over the memory that was decoded from (None if the model does not expose it); `ended` is True when the
    decoder produced EOS after `tokens`; `ended_in_pause` is True when it produced EOS at a sentence's end with a
    pause after it (800 ms of quiet, then speech or the end of what was heard): every token has been heard whole,
    and the session commits them all without waiting for a next word.
    """

    tokens: list[int]
    attention: torch.Tensor | None
    ended: bool
    score: float = 0.0
    prefix_attention: torch.Tensor | None = None  # [layers, heads, len(prefix), frames]
    ended_in_pause: bool = False


class SpeechModel(Protocol):
    """What `Session` needs from a model. The model holds no per-stream state: each stream's model state (encoder
    caches, Whisper's window and prompt, decoder caches) is a value that `encode` and `decode` take and return.

    Declared capabilities: `frame_ms`, source ms per encoder frame; `appends_memory`, True when `encode`
    returns only the frames of new audio (causal cached encoder), False when it returns the whole current memory
    (a model that re-encodes its window every chunk); `max_target_tokens`, the decoder's positions (start
    tokens + forced prefix + continuation; None: unbounded), which the session never asks to exceed;
    `batches`, True when `encode_batch` and `decode_batch` run many streams' calls together (a scheduler then
    groups streams; each row computes what its stream's own call would, up to float rounding).
    """

    frame_ms: float
    appends_memory: bool
    max_target_tokens: int | None
    batches: bool
    tokenizer: Tokenizer  # target-side tokenizer (what the decoder writes)
    task: str  # "asr" or "st"

    def init_state(self) -> Any: ...

    def encode(self, audio: torch.Tensor, state: Any, final: bool = False) -> tuple[torch.Tensor, Any]:
        """Consume 16 kHz mono float audio [samples]; return encoder frames [T, D] and the new state."""
        ...

    def drop_frames(self, state: Any, n: int, tokens: int = 0) -> Any:
        """Forget the first n frames of the memory and the first `tokens` tokens of the forced prefix (StreamAtt
        shortened the session's history; n may be 0); a no-op for appending encoders."""
        ...

    def decode(self, memory: torch.Tensor, prefix: list[int], state: Any, *, beam: int = 1, max_tokens: int = 64,
               stop: StopRule | None = None) -> tuple[Hypothesis, Any]:
        """Force `prefix` (target token ids of the kept history), then continue greedily or with beam search;
        greedy decoding may end early where `stop` (`streamst.decoding.StopRule`) says. Returns the continuation
        and the stream's new model state."""
        ...

    def encode_batch(self, audios: list[torch.Tensor], states: list[Any], finals: list[bool]
                     ) -> list[tuple[torch.Tensor, Any]]:
        """`encode` of many streams (only where `batches`)."""
        ...

    def decode_batch(self, memories: list[torch.Tensor], prefixes: list[list[int]], states: list[Any],
                     max_tokens: list[int], stops: list[StopRule | None]) -> list[tuple[Hypothesis, Any]]:
        """Greedy `decode` of many streams (only where `batches`)."""
        ...

    def ctc_words(self, memory: torch.Tensor) -> int | None:
        """Words in the source so far, from the CTC head (None if the model has none)."""
        ...

    def needs_commit(self, state: Any) -> bool:
        """The model's window is nearly full: the session commits every whole word the decoder holds now, whatever
        the policy, so that no audio is dropped unheard (a policy that writes only at the end would lose it)."""
        ...

    def restart_unwritten(self, state: Any) -> Any | None:
        """After a decode whose words the session committed all (mid-stream when it ended in a pause, or the final
        pass): a state whose next `encode` restarts the window after them, when the decoder ended its text early
        with speech left unwritten or in a pause; None when there is no such restart (every model but the causal
        Whisper: `streamst.whisper.causal_streaming`)."""
        ...

    def samples_cut(self, state: Any) -> int:
        """16 kHz samples the model itself cut from the front of its window (0 for most models), so word
        spans stay on the stream's clock."""
        ...
