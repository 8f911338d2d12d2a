"""`S2TBundle`: everything a loader reads from a foreign model (architecture, fairseq-named weights, tokenizers,
CMVN, languages), and its streamst checkpoint form (a plain dict that loads with `weights_only=True`)."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from streamst.s2t.config import S2TConfig
from streamst.s2t.features import Cmvn
from streamst.s2t.tokenizer import VocabTokenizer

FORMAT, VERSION, KIND = "streamst-checkpoint", 1, "s2t"


@dataclass
class S2TBundle:
    """A loaded S2T model before it is built: what `streamst convert` writes and `load_s2t` builds from."""

    config: S2TConfig
    state: dict[str, torch.Tensor]  # fairseq parameter names
    tokenizer: VocabTokenizer  # target side
    cmvn: Cmvn
    task: str = "st"
    src_lang: str = "en"
    tgt_lang: str = ""  # forced as <lang:xx> when the vocabulary has that tag
    source: str = ""  # where it was loaded from (for `streamst models`)
    src_tokenizer: VocabTokenizer | None = None  # the CTC head's vocabulary, when known
    meta: dict = field(default_factory=dict)

    def to_checkpoint(self, dtype: torch.dtype = torch.float32) -> dict:
        """The streamst checkpoint dict (floating weights stored as `dtype`)."""
        return {
            "format": FORMAT, "version": VERSION, "kind": KIND,
            "config": self.config.to_dict(),
            "state_dict": {k: (v.to(dtype) if v.is_floating_point() else v).contiguous()
                           for k, v in self.state.items()},
            "tokenizer": self.tokenizer.to_dict(),
            "src_tokenizer": None if self.src_tokenizer is None else self.src_tokenizer.to_dict(),
            "cmvn": self.cmvn.to_dict(),
            "task": self.task, "src_lang": self.src_lang, "tgt_lang": self.tgt_lang,
            "source": self.source, "meta": dict(self.meta),
        }

    @classmethod
    def from_checkpoint(cls, obj: dict) -> "S2TBundle":
        if obj.get("format") != FORMAT or obj.get("kind") != KIND:
            raise ValueError("not a streamst S2T checkpoint (format/kind mismatch)")
        if int(obj.get("version", 0)) > VERSION:
            raise ValueError(f"S2T checkpoint version {obj['version']} is newer than this streamst ({VERSION})")
        src = obj.get("src_tokenizer")
        return cls(S2TConfig.from_dict(obj["config"]), {k: v.float() if v.is_floating_point() else v
                                                          for k, v in obj["state_dict"].items()},
                   VocabTokenizer.from_dict(obj["tokenizer"]), Cmvn.from_dict(obj["cmvn"]), obj.get("task", "st"),
                   obj.get("src_lang", "en"), obj.get("tgt_lang", ""), obj.get("source", ""),
                   None if src is None else VocabTokenizer.from_dict(src), dict(obj.get("meta", {})))


def languages_from_name(name: str) -> tuple[str, str, str] | None:
    """(task, src, tgt) from a model name like 's2t-small-mustc-en-de-st' or 'librispeech-asr'; None if unclear."""
    low = name.lower()
    pair = re.search(r"(?<![a-z])([a-z]{2})-([a-z]{2})(?![a-z])", low)
    task = "asr" if re.search(r"(?<![a-z])asr(?![a-z])", low) else "st"
    if pair:
        return task, pair.group(1), pair.group(2)
    return (task, "en", "en" if task == "asr" else "") if task == "asr" else None
