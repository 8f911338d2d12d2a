"""Bring your own model: fairseq S2T checkpoints, Hugging Face Speech2Text folders and FBK's Conformer
checkpoints, streamed by re-encoding (see `streaming.py`)."""
from __future__ import annotations

from pathlib import Path

from streamst.s2t.bundle import S2TBundle
from streamst.s2t.streaming import S2TStreamingModel


def detect(path: str | Path) -> str | None:
    """'huggingface' or 'fairseq' when `path` holds such a model, else None (cheap: no weights read)."""
    from streamst.s2t.fairseq import find_fairseq_checkpoint
    from streamst.s2t.hf import is_hf_speech2text

    path = Path(path)
    if path.is_dir() and is_hf_speech2text(path):
        return "huggingface"
    if find_fairseq_checkpoint(path) is not None:
        return "fairseq"
    return None


def load_bundle(path: str | Path, *, tgt_lang: str | None = None) -> S2TBundle:
    """Read a foreign model (HF folder, fairseq checkpoint or its folder) into an S2TBundle."""
    kind = detect(path)
    if kind == "huggingface":
        from streamst.s2t.hf import load_hf_speech2text

        return load_hf_speech2text(path, tgt_lang)
    if kind == "fairseq":
        from streamst.s2t.fairseq import load_fairseq

        return load_fairseq(path, tgt_lang=tgt_lang)
    raise ValueError(f"{path}: neither a Hugging Face Speech2Text folder (config.json with model_type "
                     "'speech_to_text') nor a fairseq S2T checkpoint")


def load_s2t(path: str | Path, *, tgt_lang: str | None = None, name: str = "") -> S2TStreamingModel:
    """The streaming model of a foreign model folder or file."""
    return S2TStreamingModel(load_bundle(path, tgt_lang=tgt_lang), name=name or Path(path).name)


def load_s2t_checkpoint(obj: dict, name: str = "") -> S2TStreamingModel:
    """The streaming model of a converted (streamst) S2T checkpoint dict."""
    return S2TStreamingModel(S2TBundle.from_checkpoint(obj), name=name)
